"""Running the corpus stage in asset tests: the run config for the `small_web` fixture's sites, and materializing
corpus assets against a home."""

import dagster as dg

from webdancer_dagster.assets import corpus
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment


def run_config(data, docs):
    return {
        "ops": {
            "web_sites": {"config": {"data_dir": str(data), "python_doc_dir": str(docs)}},
            "crawl_pages": {"config": {"max_pages": 50, "max_depth": 3, "max_pages_by_site": {}}},
        }
    }


def materialize(selection, config, home, partition_key=None, instance=None):
    """`instance`: a run history to record the run in (default: a throwaway one)."""
    warehouse = Warehouse(home=str(home))
    result = dg.materialize(
        [
            corpus.web_sites,
            corpus.crawl_pages,
            corpus.search_index,
            corpus.crawl_pages_are_consistent,
            corpus.search_index_finds_pages,
        ],
        selection=selection,
        partition_key=partition_key,
        run_config={"ops": {k: v for k, v in config["ops"].items() if k in selection}},
        resources={"warehouse": warehouse, "web": WebEnvironment(warehouse=warehouse)},
        instance=instance or dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return result
