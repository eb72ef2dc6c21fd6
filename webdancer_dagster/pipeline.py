"""Materialize the whole asset graph in dependency order, one run per partition, recorded in a Dagster instance.

This is what `webdancer materialize` (and the README's main command) runs; the runs show in the UI with
their metadata and lineage because they go to the same DAGSTER_HOME the UI reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

log = logging.getLogger(__name__)

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


def load_profile(name_or_path: str) -> dict[str, Any]:
    """Run config of a profile: `smoke`, `full`, or a path to a YAML file of the same shape."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"profile {name_or_path!r} not found; known profiles: {known}")
    return yaml.safe_load(path.read_text()) or {}


def ensure_dagster_home(dagster_home: Path) -> Path:
    """A DAGSTER_HOME with telemetry off, so the CLI's runs and `dagster dev` share one run history."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dagster_home


def _config_for(run_config: Mapping[str, Any], op_names: set[str]) -> dict[str, Any]:
    """The profile's config for the ops in one run (a multi-asset's op is named after its function)."""
    ops = {name: cfg for name, cfg in (run_config.get("ops") or {}).items() if name in op_names}
    return {"ops": ops} if ops else {}


def partition_keys(partitions_def: dg.PartitionsDefinition, wanted: Any = None) -> list[str]:
    """Every key, or the profile's choice: a list of keys, or for a multi-partitioned asset one list per
    dimension (`{model: [base, sft], benchmark: [musique]}`, a missing dimension meaning all of its keys)."""
    keys = list(partitions_def.get_partition_keys())
    if wanted is None:
        return keys
    if isinstance(partitions_def, dg.MultiPartitionsDefinition) and isinstance(wanted, Mapping):
        unknown = set(wanted) - {dimension.name for dimension in partitions_def.partitions_defs}
        if unknown:
            raise ValueError(f"unknown partition dimensions {sorted(unknown)} in the profile's partitions")
        return [
            key
            for key in keys
            if all(value in wanted[dim] for dim, value in key.keys_by_dimension.items() if dim in wanted)  # type: ignore[attr-defined]
        ]
    missing = [key for key in wanted if key not in keys]
    if missing:
        raise ValueError(f"partitions {missing} do not exist; known: {keys}")
    return [key for key in keys if key in wanted]


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_config: Mapping[str, Any] | None = None,
    selection: list[str] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Run every asset (or `selection`) level by level: partitioned assets once per partition key, or per key of
    the run config's `partitions:` section (not Dagster run config: it picks which partitions a profile runs).

    Raises on the first failed run, so a broken stage never feeds the next one.
    """
    run_config = run_config or {}
    graph = defs.resolve_asset_graph()
    all_assets = [a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition)]
    checks = list(defs.asset_checks or [])
    resources = defs.resources or {}
    wanted = {dg.AssetKey.from_user_string(s) for s in selection} if selection else None
    results = []
    for level in graph.toposorted_asset_keys_by_level:
        keys = [key for key in level if (wanted is None or key in wanted) and graph.get(key).is_materializable]
        if not keys:
            continue
        partitioned = [key for key in keys if graph.get(key).partitions_def is not None]
        plain = [key for key in keys if key not in partitioned]
        batches: list[tuple[list[dg.AssetKey], str | None]] = [(plain, None)] if plain else []
        for key in partitioned:
            wanted_partitions = (run_config.get("partitions") or {}).get(key.to_user_string())
            batches += [([key], pk) for pk in partition_keys(graph.get(key).partitions_def, wanted_partitions)]
        for keys_in_run, partition_key in batches:
            names = {key.to_user_string() for key in keys_in_run}
            op_names = {defs.get_assets_def(key).node_def.name for key in keys_in_run}
            log.info("materializing %s%s", sorted(names), f" [{partition_key}]" if partition_key else "")
            result = dg.materialize(
                assets=all_assets + checks,
                selection=keys_in_run,
                instance=instance,
                resources=resources,
                partition_key=partition_key,
                run_config=_config_for(run_config, op_names),
                raise_on_error=True,
            )
            results.append(result)
    return results
