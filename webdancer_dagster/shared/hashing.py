"""Content hashes: ids that stay the same across reruns, and file and folder identities for data versions."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 22
# The description `training.base_model` writes into a model folder; it describes the content, so it is not hashed.
MANIFEST_NAME = "webdancer_base_model.json"


def stable_id(*parts: str, prefix: str = "") -> str:
    """A short content hash: the same inputs give the same id in every run, so reruns upsert, not duplicate."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{digest}"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """Memoized on the file's inode, size and modification time: a model file is hashed once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


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
