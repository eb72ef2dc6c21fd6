"""A live site declared in the site registry, end to end through Dagster: it is a crawl_pages partition with its own
schedule, crawled from a plain HTTP server on 127.0.0.1 without `web_sites`, re-crawled through 304s with the same
data version, searchable, and listed by `webdancer sites`."""

import datetime
import importlib
import io
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from rich.console import Console
from typer.testing import CliRunner

from webdancer_dagster import cli
from webdancer_dagster.assets import corpus, evaluation, qa, registries, training, trajectories
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment, site_roots
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.errors import FetchError
from webdancer_dagster.web.scope import LocalSites, WebScope
from webdancer_dagster.web.search import LocalSearch
from webdancer_dagster.web.site_registry import SITES_ENV
from webdancer_dagster.web.sites_table import site_overview
from webdancer_dagster.web.visit import fetch_page

PAGES = {
    "index.html": ("Glimmerfold Conference", ["program.html", "venue.html"]),
    "program.html": ("Glimmerfold Program", ["index.html"]),
    "venue.html": ("Glimmerfold Venue in Tromso", []),
}


class LoggingHandler(SimpleHTTPRequestHandler):
    """Python's static file server (Last-Modified, If-Modified-Since -> 304), remembering each request."""

    log: list[tuple[str, int]]

    def log_request(self, code="-", size="-"):  # noqa: ANN001
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))


@pytest.fixture
def declared_site(tmp_path, monkeypatch, request):
    """The site's entry has `benchmark: true` when the test is parametrized indirectly with True."""
    benchmark = bool(getattr(request, "param", False))
    root = tmp_path / "www"
    root.mkdir()
    for name, (title, links) in PAGES.items():
        anchors = " ".join(f'<a href="{href}">{href}</a>' for href in links)
        (root / name).write_text(
            f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{title} is described here at length "
            f"so that the page has a main text worth indexing.</p>{anchors}</body></html>"
        )
    log: list[tuple[str, int]] = []
    handler = type("Handler", (LoggingHandler,), {"log": log})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    registry = tmp_path / "sites.yaml"
    registry.write_text(
        "contact_url: https://example.org/crawler\n"
        "sites:\n"
        "  - name: glimmerfold\n"
        f"    root_urls: ['http://127.0.0.1:{port}/']\n"
        "    schedule: '30 5 * * 2'\n"
        "    allow_private_network: true\n"
        f"    benchmark: {str(benchmark).lower()}\n"
        "    politeness: {delay_s: 0, start_delay_s: 0, concurrency_per_domain: 4}\n"
    )
    monkeypatch.setenv(SITES_ENV, str(registry))
    reload_asset_modules()
    try:
        yield f"http://127.0.0.1:{port}/", log, root
    finally:
        server.shutdown()
        server.server_close()
        monkeypatch.delenv(SITES_ENV)
        reload_asset_modules()


def reload_asset_modules() -> None:
    for module in (registries, corpus, qa, trajectories, training, evaluation):
        importlib.reload(module)


def resources(home):
    warehouse = Warehouse(home=str(home))
    return {"warehouse": warehouse, "web": WebEnvironment(warehouse=warehouse)}


def materialize(home, selection, partition_key=None):
    result = dg.materialize(
        [corpus.web_sites, corpus.crawl_pages, corpus.search_index, corpus.crawl_pages_are_consistent],
        selection=selection,
        partition_key=partition_key,
        resources=resources(home),
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return result


def metadata(result, asset):
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}, event.tags["dagster/data_version"]


def test_a_declared_live_site_recrawls_through_304s_and_is_searchable(declared_site, isolated_home, monkeypatch):
    root_url, log, root = declared_site
    assert registries.SITE_NAMES[-1] == "glimmerfold" and "glimmerfold" not in registries.LOCAL_SITE_NAMES
    [schedule] = corpus.site_schedules
    assert (schedule.name, schedule.cron_schedule) == ("recrawl_glimmerfold", "30 5 * * 2")
    repository = dg.Definitions(
        assets=[corpus.web_sites, corpus.crawl_pages],
        jobs=[corpus.recrawl_job],
        schedules=[corpus.daily_recrawl, *corpus.site_schedules],
        resources=resources(isolated_home),
    ).get_repository_def()
    tick = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 1, 6, 5, 30), repository_def=repository
    )
    [request] = schedule.evaluate_tick(tick).run_requests
    assert request.partition_key == "glimmerfold"
    daily = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 1, 2, 3), repository_def=repository
    )
    assert "glimmerfold" not in {r.partition_key for r in corpus.daily_recrawl.evaluate_tick(daily).run_requests}

    first = materialize(isolated_home, ["crawl_pages"], "glimmerfold")  # no web_sites run needed
    meta, version = metadata(first, "crawl_pages")
    assert (meta["pages"], meta["new"], meta["not_modified"]) == (3, 3, 0)
    assert all(check.passed for check in first.get_asset_check_evaluations())
    store = WarehouseStore(isolated_home)
    row = store.read_table("sites", "name = ?", ["glimmerfold"]).iloc[0]
    assert (row["kind"], row["root_url"], row["host"]) == ("live", root_url, "127.0.0.1")

    log.clear()
    again = materialize(isolated_home, ["crawl_pages"], "glimmerfold")
    meta2, version2 = metadata(again, "crawl_pages")
    assert (meta2["unchanged"], meta2["not_modified"], meta2["new"] + meta2["changed"]) == (3, 3, 0)
    assert version2 == version
    assert sorted(code for path, code in log if path != "/robots.txt") == [304, 304, 304]

    index = materialize(isolated_home, ["search_index"])
    assert metadata(index, "search_index")[0]["docs"] == 3
    hits = LocalSearch(isolated_home / "search_index").search("Glimmerfold Venue")
    assert hits and hits[0].url == f"{root_url}venue.html"
    assert site_roots(store) == {}  # a live site has no folder for the proxy to serve

    printed = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=printed, width=250))
    listing = CliRunner().invoke(cli.app, ["sites", "--home", str(isolated_home)])
    assert listing.exit_code == 0, listing.output
    line = next(text for text in printed.getvalue().splitlines() if "glimmerfold" in text)
    assert "live" in line and "30 5 * * 2" in line and root_url in line and "never" not in line
    overview = site_overview(
        store, registries.LOCAL_SITE_SPECS, list(registries.SITE_REGISTRY.sites.values()), "0 3 * * *"
    ).set_index("site")
    assert overview.loc["glimmerfold", "pages"] == 3 and overview.loc["glimmerfold", "not_modified"] == 3
    assert overview.loc["wiki", "kind"] == "local" and bool(overview.loc["musique", "benchmark"])

    # The agent visits it straight from the site: a dead site proxy does not matter for a declared site's host.
    scope = WebScope.synthesis(LocalSites.of_home(store), proxy_url=f"http://127.0.0.1:{_closed_port()}")
    page = fetch_page(f"{root_url}venue.html", scope.fetch)
    assert page.title == "Glimmerfold Venue in Tromso"


@pytest.mark.parametrize("declared_site", [True], indirect=True)
def test_a_benchmark_flagged_live_site_is_blocked_from_synthesis_and_guarded_by_the_leakage_check(
    declared_site, isolated_home
):
    root_url, _, _ = declared_site
    materialize(isolated_home, ["crawl_pages"], "glimmerfold")
    store = WarehouseStore(isolated_home)
    sites = LocalSites.of_home(store)
    assert "127.0.0.1" in sites.benchmark_hosts

    synthesis = WebScope.synthesis(sites, proxy_url=None)
    with pytest.raises(FetchError, match="not one of the sites"):
        fetch_page(f"{root_url}venue.html", synthesis.fetch)
    assert "127.0.0.1" in synthesis.blocked_hosts, "search results from it are removed for synthesis"
    assert fetch_page(f"{root_url}venue.html", WebScope.every_local_site(sites, None).fetch).title.startswith("Glim")

    pair = QAPair(
        id="qa-leak",
        question="Which town hosts the Glimmerfold Conference, according to its venue page?",
        answer="Tromso",
        kind="multi_hop",
        source="crawlqa",
        source_urls=[f"{root_url}venue.html"],
    )
    store.replace_table("crawlqa_pairs", qa_pairs_frame([pair]))
    evaluation = qa.crawlqa_leakage(warehouse=Warehouse(home=str(isolated_home)))
    assert not evaluation.passed
    leaks = {key: value.value for key, value in evaluation.metadata.items()}
    assert leaks["actual_leaks"] == 1 and "127.0.0.1" in leaks["benchmark_hosts"]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
