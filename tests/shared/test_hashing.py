"""Content hashes: stable ids, memoized file hashes that still see a rewrite, folder hashes without the manifest."""

from __future__ import annotations

import os
from pathlib import Path

from webdancer_dagster.shared.hashing import MANIFEST_NAME, file_sha256, folder_sha256, stable_id


def test_stable_id_depends_on_every_part_and_its_boundaries():
    assert stable_id("a", "b", prefix="qa-") == stable_id("a", "b", prefix="qa-")
    assert stable_id("a", "b", prefix="qa-").startswith("qa-") and len(stable_id("a", "b")) == 16
    assert stable_id("ab", "c") != stable_id("a", "bc")


def test_file_hash_follows_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"one")
    first = file_sha256(path)
    assert file_sha256(path) == first
    path.write_bytes(b"two")
    os.utime(path, ns=(1, 1))  # a new modification time whatever the clock resolution: the memo key changes
    assert file_sha256(path) != first


def test_folder_hash_covers_contents_and_names_but_not_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one")
    original = folder_sha256(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")
    assert folder_sha256(tmp_path) == original
    (tmp_path / "a.txt").write_text("two")
    changed = folder_sha256(tmp_path)
    assert changed != original
    (tmp_path / "a.txt").rename(tmp_path / "b.txt")
    assert folder_sha256(tmp_path) not in {original, changed}
