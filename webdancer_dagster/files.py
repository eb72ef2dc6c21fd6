"""Atomic file and folder replacement: readers of an artefact see the old version or the new, never half."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def swap_in_dir(tmp_dir: Path, target: Path) -> None:
    """Replace ``target`` with the finished ``tmp_dir``; readers see the old folder or the new, never a half.

    The old folder is renamed aside first and deleted after the swap, so a crash in between leaves a complete one.
    """
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp_dir, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, target)


def folder_bytes(folder: Path) -> int:
    """The bytes of every file below ``folder``."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
