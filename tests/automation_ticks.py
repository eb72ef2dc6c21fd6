"""Automation ticks without a daemon, over materializations reported with the data version a run would record."""

import dagster as dg

DATA_VERSION_TAG = "dagster/data_version"  # where a run records the data version an asset returned


def record(instance: dg.DagsterInstance, asset: str | dg.AssetKey, version: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key=asset, partition=partition, tags={DATA_VERSION_TAG: version})
    )


def record_everything(instance: dg.DagsterInstance, defs: dg.Definitions, version: str = "v1") -> None:
    """Every asset and every partition materialized once, at `version`."""
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        partitions_def = graph.get(key).partitions_def
        for partition in partitions_def.get_partition_keys() if partitions_def else [None]:
            record(instance, key, version, partition)


class Ticks:
    """Successive evaluations of every automation condition, as the sensor's ticks."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def tick(self) -> dict[str, set[str]]:
        """What this tick requests: asset -> partition keys ("None" for an unpartitioned asset)."""
        result = dg.evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        return {
            key.to_user_string(): {str(partition) for partition in result.get_requested_partitions(key)}
            for key in self.defs.resolve_asset_graph().get_all_asset_keys()
            if result.get_num_requested(key)
        }
