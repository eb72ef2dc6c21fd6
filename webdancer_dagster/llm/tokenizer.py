"""The model's own tokenizer, for counting context tokens and for training, loaded offline."""

from __future__ import annotations

import fcntl
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers loads in seconds: only when a tokenizer is needed
    from transformers import PreTrainedTokenizerBase


@lru_cache(maxsize=8)
def load_tokenizer(source: str, cache_dir: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a Hugging Face folder or a GGUF file (never from a hub).

    A GGUF is parsed once and its tokenizer saved as a plain folder under `cache_dir`, because reading the
    tokenizer out of the GGUF takes seconds and every agent, trainer and test needs it.
    """
    from transformers import AutoTokenizer

    path = Path(source)
    if path.is_dir():
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    if path.suffix != ".gguf" or not path.is_file():
        raise FileNotFoundError(f"tokenizer source must be a model folder or a .gguf file: {source}")
    if cache_dir is None:
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    target = Path(cache_dir) / f"tokenizer-{path.stem}-{path.stat().st_size}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "tokenizer_config.json").exists():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            staging = target.with_name(target.name + ".tmp")
            tokenizer.save_pretrained(staging)
            staging.rename(target)
    return AutoTokenizer.from_pretrained(target, local_files_only=True)
