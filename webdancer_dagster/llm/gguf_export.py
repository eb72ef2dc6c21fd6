"""Write a trained Llama-architecture transformers folder as a GGUF that llama.cpp serves like the base model.

SFT and RL save plain transformers folders (safetensors, tokenizer.json, chat template); the project's CPU
server is llama.cpp, which reads GGUF. llama.cpp's own `convert_hf_to_gguf.py` is not installed with any package
here, but the `gguf` package (its writer) is, and a Llama folder needs little: hyperparameters, the byte-level BPE
vocabulary, and the tensors renamed, with the Q and K projections permuted from Hugging Face's half-split rotary
layout to llama.cpp's interleaved one.

Two checks make the export trustworthy: llama.cpp must tokenize a probe text exactly as the folder's tokenizer
does (or the GGUF is not written), and the tests compare llama.cpp's logits with transformers' on the same tokens.
Exports are cached by the folder's sha256 and the output type, written to a temporary file and renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

logger = logging.getLogger(__name__)

OutType = Literal["f32", "f16", "q8_0"]
# Bump when the exported bytes change, so cached exports are rebuilt.
EXPORT_VERSION = 1
_FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
# Digits, punctuation, whitespace runs, accents and the chat markers: where pre-tokenizers disagree.
TOKENIZER_PROBE = "In 2023, 12345 people   said: <|im_start|>user\nHéllo wörld! \t\n  x's <|im_end|> 3.14 ÷ Ω 東京"


class GGUFExportError(ValueError):
    """The folder cannot be exported faithfully; the message says what is unsupported and what to do instead."""


@dataclass(frozen=True)
class GGUFExport:
    path: Path
    source: Path
    source_sha256: str
    outtype: str
    reused: bool


def export_gguf(folder: Path, sha256: str, cache_root: Path, outtype: OutType = "f16") -> GGUFExport:
    """The GGUF of `folder` (whose content hash is `sha256`) under `cache_root`, exported once per hash and type."""
    folder, cache_root = Path(folder), Path(cache_root)
    if outtype not in _FILE_TYPES:
        raise GGUFExportError(f"outtype must be one of {sorted(_FILE_TYPES)}, got {outtype!r}")
    target = cache_root / f"{sha256[:16]}-v{EXPORT_VERSION}" / f"model-{outtype}.gguf"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return GGUFExport(target, folder, sha256, outtype, reused=True)
        handle, staging = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        os.close(handle)
        try:
            write_llama_gguf(folder, Path(staging), outtype)
            check_tokenizer_matches(folder, Path(staging))
            os.replace(staging, target)
        finally:
            Path(staging).unlink(missing_ok=True)
    logger.info("exported %s as %s (%s)", folder, target, outtype)
    return GGUFExport(target, folder, sha256, outtype, reused=False)


def write_llama_gguf(
    folder: Path, out_path: Path, outtype: OutType = "f16", tensors: Iterable[tuple[str, np.ndarray]] | None = None
) -> None:
    """Write `folder` (a LlamaForCausalLM with a byte-level BPE tokenizer) as one GGUF file; `tensors` (Hugging Face
    names, float32 arrays) replace the folder's weights, so weights in memory need not be saved first."""
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama" or architectures not in ([], ["LlamaForCausalLM"]):
        raise GGUFExportError(
            f"{folder}: only Llama-architecture folders can be exported to GGUF here (found model_type "
            f"{config.get('model_type')!r}, architectures {architectures}); serve it with llm_server.mode='vllm'"
        )
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise GGUFExportError(f"{folder}: rope scaling {rope!r} is not supported by this exporter; use vllm mode")
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    hidden = int(config["hidden_size"])
    head_dim = int(config.get("head_dim") or hidden // n_head)
    n_layers = int(config["num_hidden_layers"])
    rope_theta = float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))

    writer = gguf.GGUFWriter(str(out_path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name if folder.name != "final" else folder.parent.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 8192)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(rope_theta)
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(_FILE_TYPES[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab_size = _add_vocabulary(writer, folder, int(config["vocab_size"]))
    writer.add_vocab_size(vocab_size)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, tensor in _tensors(folder) if tensors is None else tensors:
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFExportError(f"{folder}: tensor {hf_name!r} has no llama.cpp name; not a plain Llama checkpoint")
        if hf_name.endswith("q_proj.weight"):
            tensor = _permute(tensor, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            tensor = _permute(tensor, n_head, n_head_kv)
        data, qtype = _encode(tensor, outtype)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def check_tokenizer_matches(folder: Path, gguf_path: Path, text: str = TOKENIZER_PROBE) -> None:
    """llama.cpp must split `text` into the same ids as the folder's tokenizer, special tokens included."""
    import llama_cpp
    from transformers import AutoTokenizer

    expected = AutoTokenizer.from_pretrained(folder, local_files_only=True)(text, add_special_tokens=False)["input_ids"]
    vocab = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        actual = vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    finally:
        vocab.close()
    if list(actual) != list(expected):
        raise GGUFExportError(
            f"{folder}: llama.cpp tokenizes the probe text differently from the folder's tokenizer "
            f"(transformers {expected[:24]}..., llama.cpp {list(actual)[:24]}...); the GGUF would not be faithful"
        )


def _add_vocabulary(writer: gguf.GGUFWriter, folder: Path, n_vocab: int) -> int:
    tokenizer_json = _read_json(folder / "tokenizer.json")
    model = tokenizer_json.get("model", {})
    decoder = tokenizer_json.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or decoder.get("type") != "ByteLevel":
        raise GGUFExportError(f"{folder}: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are supported")
    by_id: dict[int, str] = {index: token for token, index in model["vocab"].items()}
    added = {item["id"]: item for item in tokenizer_json.get("added_tokens", [])}
    for index, item in added.items():
        by_id[index] = item["content"]
    size = max(n_vocab, max(by_id) + 1)
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.CONTROL if added[index].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(folder, tokenizer_json.get("pre_tokenizer") or {}))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=size)
    if special.chat_template is None and (folder / "chat_template.jinja").is_file():
        special.chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    special.add_to_gguf(writer, quiet=True)
    return size


def _pre_tokenizer_name(folder: Path, pre: dict) -> str:
    """llama.cpp's name for the split before BPE: GPT-2's regex, with or without one token per digit (SmolLM)."""
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    byte_level = [step for step in steps if step.get("type") == "ByteLevel"]
    if len(byte_level) == 1 and byte_level[0].get("use_regex", True) and not byte_level[0].get("add_prefix_space"):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
    raise GGUFExportError(f"{folder}: pre-tokenizer {pre!r} has no known llama.cpp equivalent; use vllm mode")


def _tensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the safetensors file(s) as float32 numpy (bf16 cannot go to numpy directly)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise GGUFExportError(f"{folder}: no .safetensors weights (save the model with safe_serialization=True)")
    for file in files:
        with safe_open(file, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                yield name, handle.get_tensor(name).float().numpy()


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """Hugging Face stores each head's rotary pairs as two halves; llama.cpp wants them interleaved."""
    heads = n_head_kv if n_head != n_head_kv else n_head
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(tensor: np.ndarray, outtype: OutType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    # Norms and other vectors stay f32, as llama.cpp's converter keeps them: they are tiny and precision-critical.
    if tensor.ndim < 2 or outtype == "f32":
        return tensor.astype(np.float32), gguf.GGMLQuantizationType.F32
    if outtype == "f16":
        return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16
    if tensor.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return tensor.astype(np.float16), gguf.GGMLQuantizationType.F16
    quantized = gguf.quants.quantize(tensor.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    return quantized, gguf.GGMLQuantizationType.Q8_0


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise GGUFExportError(f"{path.parent}: no {path.name}; not a transformers model folder")
    return json.loads(path.read_text(encoding="utf-8"))
