"""The corpus stage end to end through Dagster: sites -> crawl (every partition) -> search index, and re-crawls."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
from corpus_helpers import materialize, run_config

from webdancer_dagster.assets import registries
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment, site_roots
from webdancer_dagster.warehouse import WarehouseStore

RACER = Path(__file__).with_name("crawl_racer.py")


def get_through(proxy_url, url):
    with httpx.Client(proxy=proxy_url, trust_env=False, timeout=10) as client:
        return client.get(url)


def metadata(result, asset):
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}


def test_sites_crawl_and_index_materialize(small_web, isolated_home):
    data, docs = small_web
    config = run_config(data, docs)
    sites = materialize(["web_sites"], config, isolated_home)
    assert metadata(sites, "web_sites")["pages_total"] >= 7

    for site in registries.SITE_NAMES:
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
    assert set(pages["site"]) == set(registries.SITE_NAMES)
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


def test_two_crawls_at_once_record_each_change_once_and_print_their_own_summary(small_web, isolated_home, tmp_path):
    data, docs = small_web
    config = run_config(data, docs)
    materialize(["web_sites"], config, isolated_home)
    materialize(["crawl_pages"], config, isolated_home, partition_key="python-docs")
    (docs / "library" / "json.html").write_text(
        "<html><head><title>json module</title></head><body><h1>json</h1>"
        "<p>A completely rewritten page about encoding and decoding JSON documents.</p></body></html>"
    )
    # Two processes, as two `webdancer crawl` commands or two Dagster runs; each waits (bounded) after reading the
    # previous snapshot until the other has read it too, so unserialized crawls both diff against crawl 1.
    meet_dir = tmp_path / "meet"
    meet_dir.mkdir()
    crawl_config = json.dumps({"ops": {"crawl_pages": config["ops"]["crawl_pages"]}})
    racers = [
        subprocess.Popen(
            [sys.executable, str(RACER), str(isolated_home), "python-docs", crawl_config, str(meet_dir)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=300) for racer in racers]
    for racer, (_, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stderr[-3000:]
    summaries = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    store = WarehouseStore(isolated_home)
    history = store.read_table("page_history")
    shown = history.sort_values(["url", "version"])[["url", "version", "change", "crawl_id"]].to_string()
    assert not history.duplicated(["site", "url", "version"]).any(), shown
    assert sorted(history["change"].value_counts().to_dict().items()) == [("changed", 1), ("new", 3)]
    for url, versions in history.groupby("url")["version"]:
        assert sorted(versions) == list(range(1, len(versions) + 1)), url
    pages = store.read_table("pages")
    assert dict(zip(pages["url"], pages["version"], strict=True)) == {
        "http://python-docs.webdancer.test/": 1,
        "http://python-docs.webdancer.test/library/os.html": 1,
        "http://python-docs.webdancer.test/library/json.html": 2,
    }

    # Each process printed its own crawl: the one that wrote first saw the change, the other found it done.
    crawls = store.read_table("crawls").set_index("crawl_id")
    assert len({summary["crawl_id"] for summary in summaries}) == 2
    for summary in summaries:
        stored = crawls.loc[summary["crawl_id"]]
        for key in ("pages", "new", "changed", "removed", "unchanged", "data_version"):
            assert summary[key] == stored[key], key
    assert sorted((s["changed"], s["unchanged"]) for s in summaries) == [(0, 3), (1, 2)]


def test_a_moved_home_serves_and_crawls_its_own_sites(small_web, tmp_path):
    data, docs = small_web
    config = run_config(data, docs)
    original = tmp_path / "original-home"
    materialize(["web_sites"], config, original)
    moved = tmp_path / "moved-home"
    shutil.copytree(original, moved, symlinks=True)
    # The copy's page differs from the original's, so the answer shows which home's folder was served.
    article = moved / "sites" / "wiki" / "html" / "wiki" / "Teutberga.html"
    article.write_text(article.read_text().replace("was a queen", "was a moved-home queen"))

    warehouse = Warehouse(home=str(moved))
    roots = site_roots(warehouse.store())
    assert roots["wiki.webdancer.test"] == moved / "sites" / "wiki" / "html"
    assert all(root.is_relative_to(moved) for root in roots.values())
    with WebEnvironment(warehouse=warehouse).serve() as proxy_url:
        page = get_through(proxy_url, "http://wiki.webdancer.test/wiki/Teutberga.html")
    assert page.status_code == 200 and "moved-home queen" in page.text

    shutil.rmtree(original)
    crawl = materialize(["crawl_pages"], config, moved, partition_key="wiki")
    assert metadata(crawl, "crawl_pages")["pages"] >= 4
    pages = WarehouseStore(moved).read_table("pages").set_index("title")
    assert "moved-home queen" in pages.loc["Teutberga", "text"]


def test_a_sites_table_with_absolute_folders_still_serves(tmp_path, isolated_home):
    root = tmp_path / "elsewhere" / "html"
    root.mkdir(parents=True)
    (root / "index.html").write_text("<html><body>written by an older home</body></html>")
    store = WarehouseStore(isolated_home)
    store.replace_table(
        "sites", pd.DataFrame({"name": ["old"], "host": ["old.webdancer.test"], "directory": [str(root)]})
    )
    warehouse = Warehouse(home=str(isolated_home))
    assert site_roots(store) == {"old.webdancer.test": root}
    with WebEnvironment(warehouse=warehouse).serve() as proxy_url:
        page = get_through(proxy_url, "http://old.webdancer.test/")
    assert "written by an older home" in page.text
