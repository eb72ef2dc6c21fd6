"""The corpus stage end to end through Dagster: sites -> crawl (every partition) -> search index, and re-crawls."""

import json

import dagster as dg
import pytest

from webdancer_dagster.assets import corpus
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.warehouse import WarehouseStore

WIKI = [
    {"title": "Teutberga", "text": "Teutberga was a queen of Lotharingia, wife of Lothair II."},
    {"title": "Lothair II", "text": "Lothair II was king of Lotharingia and husband of Teutberga."},
    {"title": "Lotharingia", "text": "Lotharingia was a kingdom ruled by Lothair II."},
]
MUSIQUE = [
    {
        "title": "Journal of Mathematical Physics",
        "text": "The Journal of Mathematical Physics is a peer-reviewed journal.",
    },
    {"title": "G. Stanley Hall", "text": "Granville Stanley Hall was a pioneering American psychologist."},
]


@pytest.fixture
def small_web(tmp_path):
    data = tmp_path / "data"
    (data / "wiki2").mkdir(parents=True)
    (data / "musique").mkdir(parents=True)
    (data / "wiki2" / "2wikimultihopqa_corpus.json").write_text(json.dumps(WIKI))
    (data / "musique" / "musique_corpus.json").write_text(json.dumps(MUSIQUE))
    docs = tmp_path / "pydoc"
    (docs / "library").mkdir(parents=True)
    (docs / "index.html").write_text(
        "<html><head><title>Python docs</title></head><body><h1>Python</h1>"
        "<p>Welcome to the Python documentation index page.</p>"
        '<a href="library/os.html">os</a> <a href="library/json.html">json</a></body></html>'
    )
    for name, body in {"os": "Miscellaneous operating system interfaces.", "json": "JSON encoder and decoder."}.items():
        (docs / "library" / f"{name}.html").write_text(
            f"<html><head><title>{name} module</title></head><body><h1>{name}</h1><p>{body} "
            f"This page documents the {name} module of the standard library in detail.</p>"
            '<a href="../index.html">back</a></body></html>'
        )
    return data, docs


def run_config(data, docs):
    return {
        "ops": {
            "web_sites": {"config": {"data_dir": str(data), "python_doc_dir": str(docs)}},
            "crawl_pages": {"config": {"max_pages": 50, "max_depth": 3, "max_pages_by_site": {}}},
        }
    }


def materialize(selection, config, home, partition_key=None):
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
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return result


def metadata(result, asset):
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def test_sites_crawl_and_index_materialize(small_web, isolated_home):
    data, docs = small_web
    config = run_config(data, docs)
    sites = materialize(["web_sites"], config, isolated_home)
    assert metadata(sites, "web_sites")["pages_total"] >= 7

    for site in corpus.SITE_NAMES:
        crawl = materialize(["crawl_pages"], config, isolated_home, partition_key=site)
        meta = metadata(crawl, "crawl_pages")
        assert meta["pages"] >= 2 and meta["new"] == meta["pages"] and meta["removed"] == 0
        checks = crawl.get_asset_check_evaluations()
        assert checks and all(check.passed for check in checks)

    index = materialize(["search_index"], config, isolated_home)
    assert metadata(index, "search_index")["docs"] >= 7
    assert all(check.passed for check in index.get_asset_check_evaluations())

    store = WarehouseStore(isolated_home)
    pages = store.read_table("pages")
    assert set(pages["site"]) == set(corpus.SITE_NAMES)
    assert pages["url"].str.startswith("http://").all() and not pages["url"].str.contains("127.0.0.1").any()
    teutberga = pages[pages["title"] == "Teutberga"]
    assert "queen of Lotharingia" in teutberga["text"].iloc[0]
    links = store.read_table("links")
    assert {"src_url", "dst_url"} <= set(links.columns) and len(links) > 0


def test_recrawl_versions_changes_and_keeps_data_version_when_nothing_changed(small_web, isolated_home):
    data, docs = small_web
    config = run_config(data, docs)
    materialize(["web_sites"], config, isolated_home)
    first = materialize(["crawl_pages"], config, isolated_home, partition_key="python-docs")
    again = materialize(["crawl_pages"], config, isolated_home, partition_key="python-docs")
    meta = metadata(again, "crawl_pages")
    assert meta["unchanged"] == meta["pages"] and meta["new"] == meta["changed"] == meta["removed"] == 0
    version = lambda result: result.asset_materializations_for_node("crawl_pages")[0].tags["dagster/data_version"]  # noqa: E731
    assert version(first) == version(again)

    (docs / "library" / "json.html").write_text(
        "<html><head><title>json module</title></head><body><h1>json</h1>"
        "<p>A completely rewritten page about encoding and decoding JSON documents.</p></body></html>"
    )
    (docs / "library" / "os.html").unlink()
    changed = materialize(["crawl_pages"], config, isolated_home, partition_key="python-docs")
    meta = metadata(changed, "crawl_pages")
    assert meta["changed"] == 1 and meta["removed"] == 1
    assert version(changed) != version(first)
    history = WarehouseStore(isolated_home).read_table("page_history")
    assert sorted(history["change"].value_counts().to_dict().items()) == [("changed", 1), ("new", 3), ("removed", 1)]
