"""Stage 1, the crawl corpus: build the local sites, crawl each one (and each live site declared in `sites.yaml`) with
Scrapy, index the pages for search."""

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.assets.automation import when_inputs_change
from webdancer_dagster.assets.registries import (
    LOCAL_SITE_NAMES,
    REGISTRY,
    SITE_REGISTRY,
    site_partitions,
    site_specs,
)
from webdancer_dagster.paths import DATA_DIR, PYTHON_DOC_DIR
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import SEARCH_INDEX_DIR, WebEnvironment
from webdancer_dagster.warehouse import TableWrite, WarehouseStore, frame_version, markdown_preview
from webdancer_dagster.web.crawl import CrawlLimits, CrawlResult, crawl_site
from webdancer_dagster.web.crawl_store import crawl_declared_site, store_crawl
from webdancer_dagster.web.search import LocalSearch, build_search_index, search_tool
from webdancer_dagster.web.site_registry import DeclaredSite, SiteRegistryError, entry_location
from webdancer_dagster.web.sites import LISTING_PAGE_SIZE, build_site
from webdancer_dagster.web.sites_table import sites_table
from webdancer_dagster.web.versioning import SnapshotDiff

# Keyed on upstream *data versions*: a daily re-crawl that changed no page leaves the index alone.
REBUILD_WHEN_CONTENT_CHANGES = when_inputs_change("rebuild_when_content_changes")
SITE_PREVIEW_COLUMNS = ["name", "kind", "benchmark", "pages", "root_url"]
SITEMAP_COUNTS = ("sitemaps", "sitemap_pages", "sitemap_out_of_scope")  # what a live crawl's sitemap seeds gave


class WebSitesConfig(dg.Config):
    data_dir: str = Field(default=str(DATA_DIR), description="Folder with the shipped corpora (data/).")
    python_doc_dir: str = Field(default=str(PYTHON_DOC_DIR), description="Debian python3.11-doc HTML tree.")


@dg.asset(group_name="corpus", kinds={"python", "duckdb"})
def web_sites(context: dg.AssetExecutionContext, config: WebSitesConfig, warehouse: Warehouse) -> dg.MaterializeResult:
    """The local web: real Debian documentation, Wikipedia-like sites rendered from the shipped corpora, and the
    corpus of every benchmark declared in the evaluation registry (flagged as benchmark sites); plus one row per
    live site declared in the site registry (nothing to build: `crawl_pages` fetches it from the web)."""
    store = warehouse.store()
    specs = site_specs(Path(config.data_dir), Path(config.python_doc_dir), REGISTRY)
    built = [build_site(spec, store.artifact_dir("sites") / spec.name) for spec in specs]
    frame = sites_table(built, list(SITE_REGISTRY.sites.values()), SITE_REGISTRY.source, store)
    write = store.replace_table("sites", frame)
    context.log.info("built %d sites: %s", len(built), ", ".join(f"{s.name}={s.pages}" for s in built))
    return dg.MaterializeResult(
        metadata={
            # Few, short columns: Dagster lays all metadata out as one table, which a wide entry stretches.
            "sites": dg.MetadataValue.md(markdown_preview(frame[SITE_PREVIEW_COLUMNS], rows=20, max_chars=40)),
            "pages_total": int(frame["pages"].sum()),
            "live_sites": len(SITE_REGISTRY.sites),
            "root_urls": dg.MetadataValue.json(dict(zip(frame["name"], frame["root_url"], strict=True))),
            "dagster/row_count": write.rows,
            "parquet": dg.MetadataValue.path(str(write.parquet_path)),
        },
        data_version=dg.DataVersion(frame_version(frame.drop(columns=["directory"]))),
    )


class CrawlConfig(dg.Config):
    max_pages: int = Field(default=200, description="Stop after this many pages (smoke default).")
    max_depth: int = Field(default=3, description="Follow links at most this many clicks from the root.")
    max_pages_by_site: dict[str, int] = Field(
        default={"musique": 5000},
        description="Per-site page limits; the benchmark site is crawled whole so every gold page is searchable.",
    )
    concurrency: int = Field(default=16, description="Concurrent requests.")
    timeout_s: float = Field(default=10.0, description="Per-request timeout.")
    max_bytes: int = Field(default=5_000_000, description="Responses larger than this are skipped as too_large.")

    def live_limits_for(self, site: DeclaredSite) -> CrawlLimits:
        """A declared site's own page and depth budget (`max_pages_by_site` still overrides its pages)."""
        return CrawlLimits(
            max_pages=self.max_pages_by_site.get(site.name, site.max_pages),
            max_depth=site.max_depth,
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_bytes=self.max_bytes,
        )

    def limits_for(self, site: str, benchmark_pages: int | None = None) -> CrawlLimits:
        """`benchmark_pages`: the article count of a benchmark site, crawled whole (articles, listings, root)
        unless `max_pages_by_site` names it, so every gold page is searchable."""
        max_pages = self.max_pages
        if benchmark_pages is not None:
            max_pages = max(max_pages, benchmark_pages + benchmark_pages // LISTING_PAGE_SIZE + 2)
        return CrawlLimits(
            max_pages=self.max_pages_by_site.get(site, max_pages),
            max_depth=self.max_depth,
            concurrency=self.concurrency,
            timeout_s=self.timeout_s,
            max_bytes=self.max_bytes,
        )


@dg.asset(
    partitions_def=site_partitions,
    deps=[web_sites],
    group_name="corpus",
    kinds={"scrapy", "duckdb"},
)
def crawl_pages(
    context: dg.AssetExecutionContext, config: CrawlConfig, warehouse: Warehouse, web: WebEnvironment
) -> dg.MaterializeResult:
    """One site crawled from its root URL by clicking through sub-links, versioned against the last crawl.

    A local site is crawled through the site proxy; a live site declared in the site registry straight from the
    web, politely, asking for each stored page only if it changed (a 304 keeps it without downloading it)."""
    site = context.partition_key
    store = warehouse.store()
    started = datetime.now(UTC)
    crawl_id = f"{site}-{started:%Y%m%dT%H%M%S}-{context.run_id[:8]}"
    declared = SITE_REGISTRY.sites.get(site)
    if declared is not None:
        root_url = declared.root_url
        limits = config.live_limits_for(declared)
        result = crawl_declared_site(store, declared, SITE_REGISTRY.source, limits, crawl_id)
    else:
        root_url, result = _crawl_local_site(store, web, site, config, crawl_id)
    diff, summary, writes = store_crawl(store, site, crawl_id, root_url, started, result)
    context.log.info("crawl %s: %d pages, %s, %d skipped", crawl_id, len(diff.pages), diff.counts, len(result.skipped))
    return dg.MaterializeResult(
        metadata={
            **_crawl_metadata(diff, result, writes["pages"]),
            "crawl_id": crawl_id,
            "crawl": dg.MetadataValue.json(summary),
            "root_url": dg.MetadataValue.url(root_url),
        },
        data_version=dg.DataVersion(diff.data_version),
    )


def _crawl_local_site(
    store: WarehouseStore, web: WebEnvironment, site: str, config: CrawlConfig, crawl_id: str
) -> tuple[str, CrawlResult]:
    """A built local site crawled through the site proxy from its root URL; a benchmark site whole."""
    site_row = store.read_table("sites", "name = ?", [site])
    if site_row.empty:
        raise LookupError(f"site {site!r} is not in the sites table; materialize web_sites first")
    root_url = site_row.iloc[0]["root_url"]
    benchmark_pages = int(site_row.iloc[0]["pages"]) if bool(site_row.iloc[0]["benchmark"]) else None
    with web.serve() as proxy_url:
        result = crawl_site(
            root_url,
            proxy_url=proxy_url,
            limits=config.limits_for(site, benchmark_pages),
            work_dir=store.artifact_dir("crawls", crawl_id),
        )
    return root_url, result


def _crawl_metadata(diff: SnapshotDiff, result: CrawlResult, pages_write: TableWrite) -> dict[str, object]:
    """What the crawl found against the last one (new, changed, removed, 304s), what it skipped and why, how fast."""
    counts = diff.counts
    return {
        "pages": len(diff.pages),
        "new": counts["new"],
        "changed": counts["changed"],
        "removed": counts["removed"],
        "unchanged": counts["unchanged"],
        "not_modified": int(result.stats.get("not_modified", 0)),
        "links": len(result.links),
        "skipped": len(result.skipped),
        "skipped_by_reason": dg.MetadataValue.json(result.stats.get("skipped_by_reason", {})),
        "pages_per_s": round(float(result.stats["pages_per_s"]), 1),
        "sitemaps": dg.MetadataValue.json({key: int(result.stats.get(key, 0)) for key in SITEMAP_COUNTS}),
        "preview": dg.MetadataValue.md(
            markdown_preview(diff.pages[["url", "title", "depth", "version", "text"]], max_chars=40)
        ),
        "pages_parquet": dg.MetadataValue.path(str(pages_write.parquet_path)),
    }


def crawl_summary(result: dg.ExecuteInProcessResult) -> dict:
    """The `crawls` row of the crawl that `result` (a `crawl_pages` run) made, not of whichever crawl wrote last."""
    [event] = result.asset_materializations_for_node("crawl_pages")
    return dict(event.metadata["crawl"].value)


@dg.asset_check(asset=crawl_pages, blocking=True, description="Every stored page is unique and on its own site.")
def crawl_pages_are_consistent(warehouse: Warehouse) -> dg.AssetCheckResult:
    store = warehouse.store()
    live = list(SITE_REGISTRY.sites)
    problems = store.query(
        """
        SELECT p.site, p.url, count(*) OVER (PARTITION BY p.url) AS copies, s.host
        FROM pages p JOIN sites s ON s.name = p.site
        QUALIFY copies > 1 OR (NOT list_contains(?, p.site) AND NOT starts_with(p.url, 'http://' || s.host || '/'))
        """,
        [live],
    )
    # A live site's pages are on its allowed hosts and under its path prefixes.
    live_pages = store.query("SELECT site, url FROM pages WHERE list_contains(?, site)", [live])
    scopes = {name: site.live_crawl() for name, site in SITE_REGISTRY.sites.items()}
    outside = [row for row in live_pages.itertuples() if not scopes[row.site].in_scope(row.url)]
    if outside:
        extra = pd.DataFrame({"site": [r.site for r in outside], "url": [r.url for r in outside], "copies": 1})
        problems = pd.concat([problems, extra], ignore_index=True)
    total = int(store.query("SELECT count(*) AS n FROM pages")["n"].iloc[0])
    return dg.AssetCheckResult(
        passed=problems.empty,
        metadata={
            "pages": total,
            "expected_bad_rows": 0,
            "actual_bad_rows": len(problems),
            "examples": dg.MetadataValue.md(markdown_preview(problems) if len(problems) else "none"),
        },
    )


@dg.asset(
    deps=[crawl_pages],
    group_name="corpus",
    kinds={"tantivy"},
    automation_condition=REBUILD_WHEN_CONTENT_CHANGES,
)
def search_index(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """BM25 over every crawled page: what the agent's `search` tool sees."""
    store = warehouse.store()
    docs = store.query("SELECT url, title, text, site FROM pages ORDER BY url")
    if docs.empty:
        raise LookupError("no crawled pages; materialize crawl_pages first")
    index_dir = store.home / SEARCH_INDEX_DIR
    stats = build_search_index(docs, index_dir)
    sample_query = str(docs["title"].iloc[len(docs) // 2])
    started = time.perf_counter()
    sample = search_tool(LocalSearch(index_dir), [sample_query])
    query_ms = (time.perf_counter() - started) * 1000
    docs_by_site = docs.groupby("site").size().to_dict()
    return dg.MaterializeResult(
        metadata={
            "docs": int(stats["docs"]),
            "docs_by_site": dg.MetadataValue.json({k: int(v) for k, v in docs_by_site.items()}),
            "build_seconds": round(float(stats["seconds"]), 3),
            "index_bytes": int(stats["size_bytes"]),
            "index_path": dg.MetadataValue.path(str(index_dir)),
            "sample_query": sample_query,
            "sample_query_ms": round(query_ms, 2),
            "sample_results": dg.MetadataValue.md(f"```\n{sample[:1500]}\n```"),
        },
        data_version=dg.DataVersion(stats["content_version"]),  # what it holds, whatever its files' names
    )


@dg.asset_check(asset=search_index, blocking=True, description="A page is found by its own title.")
def search_index_finds_pages(warehouse: Warehouse, web: WebEnvironment) -> dg.AssetCheckResult:
    store = warehouse.store()
    probes = store.query("SELECT url, title FROM pages WHERE length(title) > 8 ORDER BY hash(url) LIMIT 20")
    backend = web.search()
    found = sum(any(hit.url == row.url for hit in backend.search(row.title)) for row in probes.itertuples())
    recall = found / len(probes) if len(probes) else 0.0
    threshold = 0.8
    return dg.AssetCheckResult(
        passed=recall >= threshold,
        metadata={"probes": len(probes), "found_in_top_10": found, "recall": recall, "threshold": threshold},
    )


recrawl_job = dg.define_asset_job(
    "recrawl_sites", selection=dg.AssetSelection.assets(crawl_pages), partitions_def=site_partitions
)


# Running by default, as are the live sites' schedules and the automation sensor: the README's "re-crawled daily,
# search_index follows" holds once the daemon runs (`webdancer ui`); turn any of them off on the Automation page.
@dg.schedule(
    job=recrawl_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_recrawl(context: dg.ScheduleEvaluationContext):
    """Re-crawl every local site daily (each declared live site has its own schedule); search_index follows only
    when some page's content changed."""
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    for site in LOCAL_SITE_NAMES:
        yield dg.RunRequest(run_key=f"{site}-{day}", partition_key=site)


def site_schedule_name(site: str) -> str:
    return "recrawl_" + re.sub(r"[^A-Za-z0-9_]", "_", site)


def _site_schedule(site: DeclaredSite) -> dg.ScheduleDefinition:
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(site.schedule):
        raise SiteRegistryError(
            f"{entry_location(SITE_REGISTRY, site.name)}: schedule {site.schedule!r} is not a cron Dagster accepts"
        )

    @dg.schedule(
        name=site_schedule_name(site.name),
        job=recrawl_job,
        cron_schedule=site.schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,  # declaring a site with a schedule asks for it
        description=f"Re-crawl the live site {site.name} ({site.root_url}); search_index follows only on change.",
    )
    def recrawl_site(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        stamp = context.scheduled_execution_time.strftime("%Y-%m-%dT%H%M")
        return dg.RunRequest(run_key=f"{site.name}-{stamp}", partition_key=site.name)

    return recrawl_site


def _site_schedules() -> list[dg.ScheduleDefinition]:
    schedules: dict[str, dg.ScheduleDefinition] = {}
    for site in SITE_REGISTRY.sites.values():
        name = site_schedule_name(site.name)
        if name in schedules or name == daily_recrawl.name:
            raise SiteRegistryError(
                f"{entry_location(SITE_REGISTRY, site.name)}: its schedule would be named {name}, like another "
                "site's; rename it ('-' and '_' are the same in schedule names)"
            )
        schedules[name] = _site_schedule(site)
    return list(schedules.values())


# One schedule per declared live site, at its own cron (default daily): `definitions.py` registers them.
site_schedules = _site_schedules()
