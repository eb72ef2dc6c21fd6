"""The model SFT starts from: a plain transformers folder, converted once from the shipped GGUF.

Training needs full-precision weights that `from_pretrained(folder)` loads in a second; the offline default
ships as a quantized GGUF that transformers dequantizes on every load. The conversion is cached by the GGUF's
sha256 (a manifest in the folder), written into a temporary folder and renamed into place, so a killed
conversion never leaves a half-written model behind and a second call is free.
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.shared.hashing import MANIFEST_NAME, file_sha256, folder_sha256

logger = logging.getLogger(__name__)


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
    import torch  # torch and transformers load in seconds: not when the definitions load
    from transformers import AutoConfig, AutoModelForCausalLM

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


def _convert_into(gguf_path: Path, digest: str, staging: Path, final_path: Path) -> BaseModel:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

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
