"""Serving a trained checkpoint for evaluation and `webdancer ask`: the recorded folder behind a model server.

SFT and RL record their final folder (path and sha256) in a one-row warehouse table. On a CPU machine the folder
is exported to GGUF once (cached by its sha256) and served by llama.cpp, the same server as the base model; on a
GPU machine vLLM serves the folder itself. The served model id carries the checkpoint's hash, so scores of a
retrained checkpoint never mix with the old one's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from webdancer_dagster.llm.gguf_export import OutType, export_gguf
from webdancer_dagster.llm.server import ModelServerConfig
from webdancer_dagster.training.base_model import folder_sha256
from webdancer_dagster.warehouse import WarehouseStore

GGUF_CACHE_DIR = "gguf"


class CheckpointMissingError(LookupError):
    """A model whose checkpoint was never trained (or was deleted); the message names the asset to materialize."""


@dataclasses.dataclass(frozen=True)
class RecordedCheckpoint:
    path: Path
    sha256: str
    table: str

    @property
    def served_name(self) -> str:
        return f"{self.table.removesuffix('_checkpoint')}-{self.sha256[:12]}"


def recorded_checkpoint(store: WarehouseStore, table: str, verify: bool = False) -> RecordedCheckpoint:
    """The checkpoint in the one-row table `table` (path, sha256), which the asset of the same name writes."""
    if not store.table_exists(table):
        raise CheckpointMissingError(f"no {table} has been trained yet: materialize the {table} asset first")
    rows = store.read_table(table)
    if rows.empty:
        raise CheckpointMissingError(f"the {table} table is empty: materialize the {table} asset first")
    row = rows.iloc[0]
    path = Path(str(row["path"]))
    if not (path / "config.json").is_file():
        raise CheckpointMissingError(
            f"the recorded {table} folder {path} is gone or incomplete: materialize the {table} asset again"
        )
    if verify and folder_sha256(path) != row["sha256"]:
        raise CheckpointMissingError(
            f"{path} no longer has the recorded sha256 {row['sha256'][:12]}: materialize the {table} asset again"
        )
    return RecordedCheckpoint(path, str(row["sha256"]), table)


def checkpoint_server_config(
    checkpoint: RecordedCheckpoint,
    cache_root: Path,
    template: ModelServerConfig,
    outtype: OutType = "f16",
) -> ModelServerConfig:
    """A server config for `checkpoint` with `template`'s resources: vLLM serves the folder, any other mode the
    cached GGUF export through llama.cpp (an external template has no local server to reuse)."""
    common = {
        "served_model_name": checkpoint.served_name,
        "base_url": None,
        "port": 0,
        "log_path": None,
    }
    if template.mode == "vllm":
        return template.model_copy(update={**common, "model_path": str(checkpoint.path)})
    gguf = export_gguf(checkpoint.path, checkpoint.sha256, Path(cache_root), outtype)
    fields = template.model_dump()
    if template.mode == "external":
        fields["extra_args"] = ()
    return ModelServerConfig(**{**fields, **common, "mode": "llama_cpp", "model_path": str(gguf.path)})
