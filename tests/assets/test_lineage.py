"""`webdancer lineage`: the chain behind a materialization, read from the run history Dagster keeps in a home."""

import json

import dagster as dg
import pytest
from corpus_helpers import materialize, run_config
from typer.testing import CliRunner

from webdancer_dagster.cli import app
from webdancer_dagster.lineage import describe, lineage
from webdancer_dagster.pipeline import ensure_dagster_home


def latest(instance, asset, partition=None):
    records_filter = dg.AssetRecordsFilter(dg.AssetKey(asset), asset_partitions=[partition] if partition else None)
    [record] = instance.fetch_materializations(records_filter, limit=1).records
    return record


def version(record):
    return record.asset_materialization.tags["dagster/data_version"]


def run_lineage(home, *args):
    return CliRunner().invoke(app, ["lineage", *args, "--home", str(home)], env={"COLUMNS": "100"})


def chain_json(home, *args):
    result = run_lineage(home, *args, "--json")
    assert result.exit_code == 0, result.output
    chain = json.loads(result.stdout)
    return {(a["asset"], p["partition"]): p for a in chain["assets"] for p in a["partitions"]}, result


def test_lineage_of_the_search_index_prints_the_recorded_versions(small_web, isolated_home):
    data, docs = small_web
    config = run_config(data, docs)
    with dg.DagsterInstance.from_config(str(ensure_dagster_home(isolated_home / "dagster"))) as instance:
        materialize(["web_sites"], config, isolated_home, instance=instance)
        for site in ("python-docs", "wiki"):  # musique is never crawled
            materialize(["crawl_pages"], config, isolated_home, partition_key=site, instance=instance)
        materialize(["search_index"], config, isolated_home, instance=instance)

        # Dagster records what each materialization read: the data version of every dependency (for a partitioned
        # one, a hash over its partitions' versions) and the storage id of its latest materialization then.
        sites, crawl = latest(instance, "web_sites"), latest(instance, "crawl_pages", "wiki")
        index = latest(instance, "search_index")
        assert crawl.asset_materialization.tags["dagster/input_data_version/web_sites"] == version(sites)
        assert crawl.asset_materialization.tags["dagster/input_event_pointer/web_sites"] == str(sites.storage_id)
        assert "dagster/input_data_version/crawl_pages" in index.asset_materialization.tags
        assert not any(tag.startswith("dagster/input_") for tag in sites.asset_materialization.tags)

        records, result = chain_json(isolated_home, "search_index")
        assert list(records) == [
            ("search_index", None),
            ("crawl_pages", "python-docs"),
            ("crawl_pages", "wiki"),
            ("crawl_pages", "musique"),
            ("web_sites", None),
        ]
        for (asset, partition), row in records.items():
            if partition == "musique":
                continue
            record = latest(instance, asset, partition)
            assert (row["data_version"], row["run_id"]) == (version(record), record.run_id)
            assert row["timestamp"] == record.timestamp
        assert records[("crawl_pages", "musique")]["materialized"] is False
        assert records[("crawl_pages", "wiki")]["metadata"]["pages"] >= 2
        [used] = records[("search_index", None)]["inputs"]
        assert used["status"] == "current" and used["current"] is True
        assert used["recorded_version"] == index.asset_materialization.tags["dagster/input_data_version/crawl_pages"]
        by_site = {part["partition"]: part for part in used["partitions"]}
        assert by_site["wiki"]["used_version"] == version(crawl)
        assert by_site["musique"]["used_version"] is None and by_site["musique"]["current"] is True

        text = run_lineage(isolated_home, "search_index")
        assert text.exit_code == 0, text.output
        assert "crawl_pages [musique]: never materialized" in text.output
        for asset, partition in [("search_index", None), ("crawl_pages", "wiki"), ("web_sites", None)]:
            record = latest(instance, asset, partition)
            assert version(record) in text.output and record.run_id in text.output

        # A re-crawl that changes a page: the index read an older python-docs crawl than the latest.
        before = version(latest(instance, "crawl_pages", "python-docs"))
        (docs / "library" / "json.html").write_text(
            "<html><head><title>json module</title></head><body><h1>json</h1>"
            "<p>A completely rewritten page about encoding and decoding JSON documents.</p></body></html>"
        )
        materialize(["crawl_pages"], config, isolated_home, partition_key="python-docs", instance=instance)
        after = version(latest(instance, "crawl_pages", "python-docs"))
        assert after != before

    records, _ = chain_json(isolated_home, "search_index")
    [used] = records[("search_index", None)]["inputs"]
    assert used["status"] == "changed since" and used["current"] is False
    by_site = {part["partition"]: part for part in used["partitions"]}
    assert (by_site["python-docs"]["used_version"], by_site["python-docs"]["current_version"]) == (before, after)
    assert by_site["wiki"]["current"] is True
    assert records[("crawl_pages", "python-docs")]["data_version"] == after
    text = run_lineage(isolated_home, "search_index")
    assert f"[python-docs] changed since: read {before}, now {after}" in text.output


def test_lineage_rejects_unknown_assets_and_missing_partitions(isolated_home):
    unknown = run_lineage(isolated_home, "nope")
    assert unknown.exit_code == 2 and "no asset 'nope'" in unknown.output
    missing = run_lineage(isolated_home, "crawl_pages")
    assert missing.exit_code == 2 and "name a partition" in missing.output
    wrong = run_lineage(isolated_home, "benchmark_scores", "--partition", "sft|musique")
    assert wrong.exit_code == 2 and "no partition 'sft|musique'" in wrong.output
    nothing = run_lineage(isolated_home, "benchmark_scores", "--partition", "musique|sft")
    assert nothing.exit_code == 0, nothing.output
    assert "benchmark_scores [musique|sft]: never materialized" in nothing.output
    assert "sft_checkpoint: never materialized" in nothing.output


BENCHMARKS = dg.StaticPartitionsDefinition(["x", "y"])
GRID = dg.MultiPartitionsDefinition({"benchmark": BENCHMARKS, "model": dg.StaticPartitionsDefinition(["a", "b"])})


class Version(dg.Config):
    version: str = "1"


@dg.asset
def settings(config: Version) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 3}, data_version=dg.DataVersion(f"s{config.version}"))


@dg.asset(partitions_def=BENCHMARKS, deps=[settings])
def questions(context: dg.AssetExecutionContext, config: Version) -> dg.MaterializeResult:
    return dg.MaterializeResult(data_version=dg.DataVersion(f"{context.partition_key}{config.version}"))


@dg.asset(partitions_def=GRID, deps=[questions, settings])
def scores() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"questions": 2})  # no data version of its own: Dagster derives one


def test_lineage_of_a_partition_follows_the_partition_mapping():
    defs = dg.Definitions(assets=[settings, questions, scores])
    graph = defs.resolve_asset_graph()

    def run(asset, partition=None, version="1"):
        config = {"ops": {asset: {"config": {"version": version}}}} if asset != "scores" else None
        dg.materialize(defs.assets, selection=[asset], partition_key=partition, instance=instance, run_config=config)

    with dg.DagsterInstance.ephemeral() as instance:
        run("settings")
        run("questions", "x")
        run("questions", "y")
        run("scores", "x|a")
        run("questions", "y", version="2")  # x|a reads questions x only: still current
        run("settings", version="2")

        chain = lineage(instance, graph, "scores", "x|a")
        assert [(a.asset, [p.partition for p in a.partitions]) for a in chain.assets] == [
            ("scores", ["x|a"]),
            ("questions", ["x"]),
            ("settings", [None]),
        ]
        record = chain.assets[0].partitions[0]
        assert record.data_version == version(latest(instance, "scores", "x|a"))  # Dagster's derived version
        assert record.metadata == {"questions": 2}
        uses = {use.asset: use for use in record.inputs}
        assert uses["questions"].status == "current" and [p.used_version for p in uses["questions"].partitions] == [
            "x1"
        ]
        assert (uses["settings"].recorded_version, uses["settings"].current_version) == ("s1", "s2")
        assert uses["settings"].status == "changed since" and uses["settings"].current is False
        assert chain.assets[2].partitions[0].data_version == "s2"
        lines = describe(chain)
        assert "    input settings  changed since: read s1, now s2" in lines

        never = lineage(instance, graph, "scores", "y|b")
        assert not never.assets[0].partitions[0].materialized
        assert [p.data_version for p in never.assets[1].partitions] == ["y2"]


def test_lineage_says_which_inputs_did_not_exist_when_it_ran():
    defs = dg.Definitions(assets=[settings, questions, scores])
    with dg.DagsterInstance.ephemeral() as instance:
        dg.materialize(defs.assets, selection=["scores"], partition_key="y|b", instance=instance)
        chain = lineage(instance, defs.resolve_asset_graph(), "scores", "y|b")
        uses = {use.asset: use for use in chain.assets[0].partitions[0].inputs}
        assert uses["settings"].status == uses["questions"].status == "never materialized"
        dg.materialize(defs.assets, selection=["settings"], instance=instance)
        chain = lineage(instance, defs.resolve_asset_graph(), "scores", "y|b")
        uses = {use.asset: use for use in chain.assets[0].partitions[0].inputs}
        assert uses["settings"].status == "materialized since" and uses["settings"].current is False


@pytest.mark.parametrize("partition", [None, "x"])
def test_lineage_checks_the_partition_against_the_asset(partition):
    defs = dg.Definitions(assets=[settings, questions, scores])
    asset = "settings" if partition else "questions"
    with dg.DagsterInstance.ephemeral() as instance, pytest.raises(ValueError):
        lineage(instance, defs.resolve_asset_graph(), asset, partition)
