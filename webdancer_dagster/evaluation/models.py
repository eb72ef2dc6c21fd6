"""Serving a trained checkpoint for evaluation and `webdancer ask`: the recorded folder behind a model server.

SFT and RL record their final folder (path and sha256) in a one-row warehouse table. On a CPU machine the folder
is exported to GGUF once (cached by its sha256) and served by llama.cpp, the same server as the base model; on a
GPU machine vLLM serves the folder itself. The served model id carries the checkpoint's hash, so scores of a
retrained checkpoint never mix with the old one's.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from webdancer_dagster.llm.gguf_export import OutType, export_gguf
from webdancer_dagster.llm.server import ModelServerConfig
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.warehouse import WarehouseStore

GGUF_CACHE_DIR = "gguf"
TRAINED_TURN_COLUMN = "assistant_turn_tokens_p95"
# Headroom over the p95 trained turn: a budget at p95 would still cut one turn in twenty mid-thought.
TURN_BUDGET_MARGIN = 1.25


class CheckpointMissingError(LookupError):
    """A model whose checkpoint was never trained (or was deleted); the message names the asset to materialize."""


@dataclasses.dataclass(frozen=True)
class RecordedCheckpoint:
    path: Path
    sha256: str
    table: str
    trained_turn_tokens_p95: int | None = None

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
    return RecordedCheckpoint(path, str(row["sha256"]), table, trained_turn_tokens_p95(row))


def trained_turn_tokens_p95(row: pd.Series) -> int | None:
    """The p95 assistant turn of the SFT set behind a recorded checkpoint; None for a model no SFT set is behind
    (the base model) or a row written before the column existed."""
    value = row.get(TRAINED_TURN_COLUMN)
    return None if value is None or pd.isna(value) else int(value)


def turn_budget(configured: int | None, default: int, trained_turn_tokens_p95: int | None) -> int:
    """Tokens the policy may write in one turn: `configured` when set; else `default` (the policy role's), raised
    for a trained checkpoint to its SFT set's p95 assistant turn plus `TURN_BUDGET_MARGIN`, so evaluation does
    not cut the turns the model learned to write."""
    if configured is not None:
        return configured
    if trained_turn_tokens_p95 is None:
        return default
    return max(default, math.ceil(trained_turn_tokens_p95 * TURN_BUDGET_MARGIN))


def checkpoint_server_config(
    checkpoint: RecordedCheckpoint,
    cache_root: Path,
    template: ModelServerConfig,
    outtype: OutType = "f16",
) -> ModelServerConfig:
    """A server config for `checkpoint` with `template`'s resources: vLLM serves the folder, any other mode the
    cached GGUF export through llama.cpp: llama-server for a llama_server template, llama-cpp-python otherwise (an
    external template has no local server to reuse)."""
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
    mode = "llama_server" if template.mode == "llama_server" else "llama_cpp"
    return ModelServerConfig(**{**fields, **common, "mode": mode, "model_path": str(gguf.path)})
