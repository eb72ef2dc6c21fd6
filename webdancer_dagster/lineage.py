"""Lineage of one materialization, read from the run history: every upstream asset (and partition) of an asset in
the asset graph, with what Dagster recorded about its latest materialization (data version, when, in which run, the
metadata that identifies its content), and whether the materialization downstream of it used that version.

Nothing here recomputes a version. A materialization's own version is its `dagster/data_version` tag; what it read
is in the provenance tags Dagster records on every materialization of an asset with dependencies:
`dagster/input_data_version/<dep>` (the dependency's data version when the step started; for a partitioned
dependency, Dagster's hash over the data versions of the partitions read) and `dagster/input_event_pointer/<dep>`
(the storage id of the dependency's latest materialization then). For a partitioned dependency, the version each
partition had then is the one recorded at or before that pointer, as Dagster's own staleness check reads it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"
INPUT_VERSION_TAG = "dagster/input_data_version/"
INPUT_POINTER_TAG = "dagster/input_event_pointer/"
# What Dagster records for a dependency that had never been materialized when the step started.
NEVER_MATERIALIZED_VERSION = "INITIAL"
NULL_POINTER = "NULL"

# The metadata entries that say what a materialization holds (besides its data version), in display order.
IDENTIFYING_METADATA = (
    "checkpoint_path",
    "checkpoint_sha256",
    "run_key",
    "path",
    "sha256",
    "source",
    "crawl_id",
    "pages",
    "new",
    "changed",
    "removed",
    "pages_total",
    "docs",
    "index_path",
    "dagster/row_count",
    "questions",
    "pass_at_1",
    "policy",
    "setting",
    "reused",
    "upstream_content_hashes",
)


class LineageError(ValueError):
    """An asset or partition the asset graph does not have."""


@dataclass(frozen=True)
class PartitionUse:
    """One partition of a partitioned dependency: the version a downstream materialization read and the current."""

    partition: str
    used_version: str | None  # None: that partition had not been materialized when the downstream step started
    current_version: str | None
    current: bool  # used_version == current_version (both None: never materialized)


@dataclass(frozen=True)
class InputUse:
    """What a materialization recorded about one dependency, against that dependency's latest materialization."""

    asset: str
    recorded_version: str | None  # dagster/input_data_version/<asset>; None: no provenance recorded
    pointer: int | None  # the dependency's latest storage id when the step started; None: none then, or unrecorded
    current_version: str | None  # an unpartitioned dependency's latest data version (None: never materialized)
    # current | changed since | materialized since (not when the step ran) | never materialized | not recorded
    status: str
    partitions: list[PartitionUse] = field(default_factory=list)  # a partitioned dependency, partition by partition

    @property
    def current(self) -> bool | None:
        """True: it read the current version; False: it did not; None: nothing to compare."""
        return {"current": True, "changed since": False, "materialized since": False}.get(self.status)


@dataclass(frozen=True)
class Materialization:
    """The latest materialization of one asset partition (or of an unpartitioned asset), as recorded."""

    partition: str | None
    materialized: bool
    data_version: str | None = None
    timestamp: float | None = None
    run_id: str | None = None
    storage_id: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: list[InputUse] = field(default_factory=list)

    @property
    def materialized_at(self) -> str | None:
        if self.timestamp is None:
            return None
        return datetime.fromtimestamp(self.timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class AssetLineage:
    """One upstream asset: the partitions the chain reads, each one's latest materialization."""

    asset: str
    depth: int  # the longest path from the asset asked about (0)
    partitioned: bool
    parents: list[str]
    partitions: list[Materialization]


@dataclass(frozen=True)
class Lineage:
    asset: str
    partition: str | None
    assets: list[AssetLineage]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, plus each materialization's UTC time and each input's `current`."""
        out = asdict(self)
        for asset, entry in zip(self.assets, out["assets"], strict=True):
            for record, row in zip(asset.partitions, entry["partitions"], strict=True):
                row["materialized_at"] = record.materialized_at
                for use, input_row in zip(record.inputs, row["inputs"], strict=True):
                    input_row["current"] = use.current
        return out


def lineage(instance: dg.DagsterInstance, asset_graph: Any, asset: str, partition: str | None = None) -> Lineage:
    """The upstream chain of `asset` (its `partition`) in `asset_graph` (`defs.resolve_asset_graph()`), each asset
    with the partitions the chain reads through the graph's partition mappings, read from `instance`."""
    root = dg.AssetKey.from_user_string(asset)
    if not asset_graph.has(root):
        known = ", ".join(sorted(key.to_user_string() for key in asset_graph.get_all_asset_keys()))
        raise LineageError(f"no asset {asset!r} in the asset graph; assets: {known}")
    _check_partition(asset_graph, root, partition)
    depths = _depths(asset_graph, root)
    wanted: dict[dg.AssetKey, set[str | None]] = {root: {partition}}
    nodes = []
    for key in sorted(depths, key=lambda k: (depths[k], k.to_user_string())):
        node = asset_graph.get(key)
        parents = sorted(node.parent_keys, key=lambda k: k.to_user_string())
        for parent in parents:
            wanted.setdefault(parent, set()).update(_parent_partitions(asset_graph, key, parent, wanted[key]))
        partitions = _ordered(node.partitions_def, wanted[key])
        nodes.append(
            AssetLineage(
                asset=key.to_user_string(),
                depth=depths[key],
                partitioned=node.is_partitioned,
                parents=[parent.to_user_string() for parent in parents],
                partitions=[_materialization(instance, asset_graph, key, p, parents) for p in partitions],
            )
        )
    return Lineage(asset=root.to_user_string(), partition=partition, assets=nodes)


def _check_partition(asset_graph: Any, key: dg.AssetKey, partition: str | None) -> None:
    partitions_def = asset_graph.get(key).partitions_def
    name = key.to_user_string()
    if partitions_def is None:
        if partition is not None:
            raise LineageError(f"{name} is not partitioned; leave out the partition")
        return
    keys = [str(k) for k in partitions_def.get_partition_keys()]
    if partition is None:
        raise LineageError(f"{name} is partitioned: name a partition ({', '.join(keys[:12])})")
    if partition not in keys:
        raise LineageError(f"{name} has no partition {partition!r}; partitions: {', '.join(keys[:12])}")


def _depths(asset_graph: Any, root: dg.AssetKey) -> dict[dg.AssetKey, int]:
    """Every ancestor of `root` (and root) with its longest path from root, so each asset comes after every
    asset downstream of it in the chain."""
    depths: dict[dg.AssetKey, int] = {root: 0}
    frontier = [root]
    while frontier:
        following = []
        for key in frontier:
            for parent in asset_graph.get(key).parent_keys:
                if depths.get(parent, -1) < depths[key] + 1:
                    depths[parent] = depths[key] + 1
                    following.append(parent)
        frontier = following
    return depths


def _parent_partitions(
    asset_graph: Any, child: dg.AssetKey, parent: dg.AssetKey, child_partitions: set[str | None]
) -> set[str | None]:
    if not asset_graph.get(parent).is_partitioned:
        return {None}
    keys: set[str | None] = set()
    for partition in child_partitions:
        result = asset_graph.get_parent_partition_keys_for_child(partition, parent, child)
        keys.update(str(key) for key in result.partitions_subset.get_partition_keys())
    return keys


def _ordered(partitions_def: dg.PartitionsDefinition | None, partitions: set[str | None]) -> list[str | None]:
    if partitions_def is None:
        return [None]
    order = {str(key): index for index, key in enumerate(partitions_def.get_partition_keys())}
    return sorted((p for p in partitions if p is not None), key=lambda p: (order.get(p, len(order)), p))


def _latest(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, before_storage_id: int | None = None
) -> dg.EventLogRecord | None:
    """The latest materialization record of `key` (`partition`), or the latest one at or before a storage id."""
    records_filter = dg.AssetRecordsFilter(
        asset_key=key,
        asset_partitions=[partition] if partition is not None else None,
        before_storage_id=before_storage_id + 1 if before_storage_id is not None else None,
    )
    records = instance.fetch_materializations(records_filter, limit=1).records
    return records[0] if records else None


def _version(record: dg.EventLogRecord | None) -> str | None:
    if record is None:
        return None
    return _tags(record).get(DATA_VERSION_TAG)


def _tags(record: dg.EventLogRecord) -> Mapping[str, str]:
    materialization = record.asset_materialization
    return (materialization.tags if materialization is not None else None) or {}


def _materialization(
    instance: dg.DagsterInstance,
    asset_graph: Any,
    key: dg.AssetKey,
    partition: str | None,
    parents: list[dg.AssetKey],
) -> Materialization:
    record = _latest(instance, key, partition)
    if record is None:
        return Materialization(partition=partition, materialized=False)
    materialization = record.asset_materialization
    metadata = materialization.metadata if materialization is not None else {}
    tags = _tags(record)
    return Materialization(
        partition=partition,
        materialized=True,
        data_version=tags.get(DATA_VERSION_TAG),
        timestamp=record.timestamp,
        run_id=record.run_id,
        storage_id=record.storage_id,
        metadata={name: _plain(metadata[name]) for name in IDENTIFYING_METADATA if name in metadata},
        inputs=[_input_use(instance, asset_graph, key, partition, parent, tags) for parent in parents],
    )


def _plain(value: Any) -> Any:
    """A metadata value as JSON-ready data (a path as its string, JSON as its data)."""
    plain = getattr(value, "value", value)
    return str(plain) if not isinstance(plain, str | int | float | bool | dict | list | type(None)) else plain


def _input_use(
    instance: dg.DagsterInstance,
    asset_graph: Any,
    child: dg.AssetKey,
    child_partition: str | None,
    parent: dg.AssetKey,
    tags: Mapping[str, str],
) -> InputUse:
    name = parent.to_user_string()
    # Dagster names a dependency in its tags by the key's user string.
    recorded = tags.get(INPUT_VERSION_TAG + name)
    raw_pointer = tags.get(INPUT_POINTER_TAG + name)
    pointer = int(raw_pointer) if raw_pointer and raw_pointer != NULL_POINTER else None
    if not asset_graph.get(parent).is_partitioned:
        current_version = _version(_latest(instance, parent, None))
        used = None if recorded == NEVER_MATERIALIZED_VERSION or pointer is None else recorded
        status = _status(recorded, used is not None, current_version is not None, used == current_version)
        return InputUse(name, recorded, pointer, current_version, status)
    partitions = _ordered(
        asset_graph.get(parent).partitions_def,
        _parent_partitions(asset_graph, child, parent, {child_partition}),
    )
    uses = []
    for partition in partitions:
        then = _latest(instance, parent, partition, before_storage_id=pointer) if pointer is not None else None
        used, now = _version(then), _version(_latest(instance, parent, partition))
        uses.append(PartitionUse(str(partition), used, now, used == now))
    existed_then = any(use.used_version is not None for use in uses)
    exists_now = any(use.current_version is not None for use in uses)
    status = _status(recorded, existed_then, exists_now, all(use.current for use in uses))
    return InputUse(name, recorded, pointer, None, status, uses)


def _status(recorded: str | None, existed_then: bool, exists_now: bool, same: bool) -> str:
    """Whether a materialization read its dependency's current version, from what it recorded reading."""
    if recorded is None:
        return "not recorded"
    if not existed_then:
        return "materialized since" if exists_now else "never materialized"
    return "current" if same else "changed since"


def describe(chain: Lineage) -> list[str]:
    """The chain as indented plain-text lines: each asset partition's version, time, run, identifying metadata,
    and for each dependency the version it read and whether that is still the dependency's latest."""
    asked = chain.asset + (f" [{chain.partition}]" if chain.partition is not None else "")
    lines = [f"lineage of {asked}, latest materializations from the run history (downstream first)"]
    for asset in chain.assets:
        for record in asset.partitions:
            lines.append("")
            lines += _describe_materialization(asset.asset, record)
    return lines


def _describe_materialization(asset: str, record: Materialization) -> list[str]:
    title = asset + (f" [{record.partition}]" if record.partition is not None else "")
    if not record.materialized:
        return [f"{title}: never materialized"]
    rows = [
        ("data version", str(record.data_version)),
        ("materialized", f"{record.materialized_at}  run {record.run_id}"),
        *((name.removeprefix("dagster/"), _shown(value)) for name, value in record.metadata.items()),
    ]
    for use in record.inputs:
        rows.append((f"input {use.asset}", _describe_input(use)))
        rows += [("", f"  [{part.partition}] " + _describe_partition(part)) for part in use.partitions]
    width = max(len(label) for label, _ in rows)
    return [title, *(f"    {label:<{width}}  {text}".rstrip() for label, text in rows)]


def _describe_input(use: InputUse) -> str:
    if use.status in ("not recorded", "never materialized"):
        return use.status
    if use.status == "materialized since":
        return "materialized since: it had none when this ran"
    if use.partitions:
        read = sum(part.used_version is not None for part in use.partitions)
        return f"{use.status}: read {read} of {len(use.partitions)} partitions (recorded {use.recorded_version})"
    if use.status == "current":
        return f"current: read {use.recorded_version}"
    return f"changed since: read {use.recorded_version}, now {use.current_version}"


def _describe_partition(part: PartitionUse) -> str:
    if part.used_version is None:
        return "not materialized then" + ("" if part.current_version is None else f", now {part.current_version}")
    if part.current:
        return f"current: read {part.used_version}"
    return f"changed since: read {part.used_version}, now {part.current_version or 'none'}"


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
