"""The model SFT starts from: a plain transformers folder, converted once from the shipped GGUF.

Training needs full-precision weights that `from_pretrained(folder)` loads in a second; the offline default
ships as a quantized GGUF that transformers dequantizes on every load. The conversion is cached by the GGUF's
sha256 (a manifest in the folder), written into a temporary folder and renamed into place, so a killed
conversion never leaves a half-written model behind and a second call is free.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from webdancer_dagster.files import HASH_CHUNK_BYTES, file_sha256
from webdancer_dagster.llm.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

MANIFEST_NAME = "webdancer_base_model.json"


@dataclass(frozen=True)
class BaseModel:
    """A loadable model folder and what a user wants to know about it."""

    path: Path
    parameters: int
    vocab_size: int
    source: str
    sha256: str

    def to_manifest(self) -> dict[str, object]:
        manifest = asdict(self)
        manifest["path"] = str(self.path)
        return manifest


def prepare_base_model(source: Path, cache_root: Path) -> BaseModel:
    """Return a plain transformers folder for `source`: a GGUF file (converted and cached) or a HF folder."""
    source = Path(source)
    if source.is_dir():
        return describe_model_folder(source)
    if source.is_file() and source.suffix == ".gguf":
        return convert_gguf(source, Path(cache_root))
    raise FileNotFoundError(f"base model source must be a model folder or a .gguf file: {source}")


def describe_model_folder(folder: Path) -> BaseModel:
    """Describe an existing HF folder; its sha256 covers every file, so any change gives a new identity."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a transformers model folder (no config.json)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    # Counting on the meta device allocates nothing, so describing a 7B folder does not load 28 GB of weights.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return BaseModel(
        path=folder,
        parameters=model.num_parameters(),
        vocab_size=config.vocab_size,
        source=str(folder),
        sha256=folder_sha256(folder),
    )


def convert_gguf(gguf_path: Path, cache_root: Path) -> BaseModel:
    """Dequantize a GGUF into an fp32 safetensors folder under `cache_root`, reusing an earlier conversion."""
    digest = file_sha256(gguf_path)
    target = cache_root / f"{gguf_path.stem}-{digest[:16]}"
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        existing = _read_manifest(target, digest)
        if existing is not None:
            logger.info("reusing converted base model %s", target)
            return existing
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
        try:
            described = _convert_into(gguf_path, digest, staging, final_path=target)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    logger.info("converted %s into %s (%s parameters)", gguf_path, target, described.parameters)
    return described


def create_tiny_llama(output_dir: Path, tokenizer_source: Path, seed: int = 0) -> BaseModel:
    """Save a 2-layer, 64-wide random Llama with the real SmolLM2 tokenizer, for tests and smoke runs.

    It shares the real tokenizer and chat template, so masking and data handling are exercised exactly,
    while a training step takes a fraction of a second on a CPU.
    """
    tokenizer = load_tokenizer(str(tokenizer_source), str(Path(output_dir).parent / ".tokenizer-cache"))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # A private generator state: the same seed gives the same weights without reseeding the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    return BaseModel(
        path=output_dir,
        parameters=model.num_parameters(),
        vocab_size=config.vocab_size,
        source=f"random tiny llama (seed {seed}) + tokenizer of {tokenizer_source}",
        sha256=folder_sha256(output_dir),
    )


def fit_assistant_turns(
    folder: Path, chats: Sequence[Sequence[Mapping[str, str]]], steps: int = 100, learning_rate: float = 3e-3
) -> float:
    """Teach the model in `folder` (in place) to produce the assistant turns of `chats`; returns the final loss.

    For test and benchmark models that must act in the agent's format (a random one never calls a tool or
    answers). The LM head runs on the learned positions only, so a step costs a fraction of a full forward; a
    GPU is used when there is one, so full-size benchmark models can be taught too.
    """
    from transformers import AutoTokenizer

    from webdancer_dagster.training.masking import IGNORE_INDEX, tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32).to(device)
    examples = [tokenize_chat(tokenizer, chat) for chat in chats]
    width = max(len(example.input_ids) for example in examples)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in examples], device=device)
    targets = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e.labels)) for e in examples], device=device)
    targets = targets[:, 1:]
    learned = targets != IGNORE_INDEX
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    loss = torch.tensor(float("nan"))
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device == "cuda" else []):
        torch.manual_seed(0)
        for _ in range(steps):
            hidden = model.model(input_ids=input_ids).last_hidden_state[:, :-1]
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[learned]), targets[learned])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(folder)
    return float(loss.item())


def folder_sha256(folder: Path) -> str:
    """Hash of every file's relative path and bytes, in sorted order (the manifest itself excluded)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def _convert_into(gguf_path: Path, digest: str, staging: Path, final_path: Path) -> BaseModel:
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, local_files_only=True, dtype=torch.float32
    )
    # The GGUF load marks the config as quantized; a plain fp32 folder must not claim that, so rebuild the
    # model from a clean config and copy the dequantized weights in.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(staging, safe_serialization=True)
    load_tokenizer(str(gguf_path), str(staging.parent / ".tokenizer-cache")).save_pretrained(staging)
    described = BaseModel(
        path=final_path,
        parameters=model.num_parameters(),
        vocab_size=config.vocab_size,
        source=str(gguf_path),
        sha256=digest,
    )
    (staging / MANIFEST_NAME).write_text(json.dumps(described.to_manifest(), indent=2))
    return described


def _read_manifest(folder: Path, digest: str) -> BaseModel | None:
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("sha256") != digest:
        return None
    manifest["path"] = folder
    return BaseModel(**manifest)
