"""Folder swaps for artefacts built beside their final place (site builds, search indexes)."""

from __future__ import annotations

import os
import shutil
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
