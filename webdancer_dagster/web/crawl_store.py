"""A finished crawl, versioned against the site's stored snapshot and written to the warehouse in one step."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from webdancer_dagster.warehouse import TableWrite, WarehouseStore
from webdancer_dagster.web.crawl import CrawlLimits, CrawlResult, crawl_site, previous_validators
from webdancer_dagster.web.site_registry import DeclaredSite
from webdancer_dagster.web.sites_table import declared_site_row
from webdancer_dagster.web.versioning import SnapshotDiff, diff_snapshot

# How long a crawl waits for another crawl of the same site to finish writing before it gives up.
CRAWL_LOCK_TIMEOUT_S = 600.0
PAGE_COLUMNS = [
    "site", "url", "title", "text", "content_hash", "depth", "status", "bytes", "fetched_at",
    "etag", "last_modified", "not_modified",
]  # fmt: skip


def store_crawl(
    store: WarehouseStore, site: str, crawl_id: str, root_url: str, started: datetime, result: CrawlResult
) -> tuple[SnapshotDiff, dict, dict[str, TableWrite]]:
    """Version a finished crawl against the site's stored snapshot and write it; returns the diff, the crawl's
    `crawls` row as JSON-ready values (its summary) and the writes.

    Two crawls of one site at once (the daily schedule and `webdancer crawl`, two Dagster runs) must not both diff
    against the same previous snapshot: each would append `(url, version 2, changed)` to `page_history`. So the
    read, the diff and the write happen under the home's lock `crawl-<site>` (`WarehouseStore.lock`, a file lock):
    a second crawl waits for the first to commit, then diffs against what it wrote, and its summary counts what it
    found itself. Only this step is serialized; fetching, nearly all of a crawl's time, still runs side by side.

    Not one DuckDB transaction instead: connections of one process share one database, whose snapshot isolation
    lets two transactions read the same previous snapshot; appended history rows never conflict, and a site's
    first crawl deletes no rows, so duplicates would still commit. Where the writes do conflict, the loser fails
    and its whole crawl is lost, where waiting a moment would have kept it.
    """
    with store.lock(f"crawl-{site}", timeout_s=CRAWL_LOCK_TIMEOUT_S, holder=f"crawl {crawl_id}"):
        previous = (
            store.read_table("pages", "site = ?", [site])
            if store.table_exists("pages")
            else pd.DataFrame(columns=["url"])
        )
        crawled = result.pages.assign(site=site).reindex(columns=PAGE_COLUMNS)
        crawled = crawled.astype({"etag": "string", "last_modified": "string", "not_modified": "bool"})
        diff = diff_snapshot(previous, crawled, crawl_id)
        summary = {
            "crawl_id": crawl_id,
            "site": site,
            "root_url": root_url,
            "started_at": started,
            "finished_at": datetime.now(UTC),
            "pages": len(diff.pages),
            "links": len(result.links),
            "skipped": len(result.skipped),
            **diff.counts,
            "not_modified": int(result.stats.get("not_modified", 0)),
            "pages_per_s": float(result.stats["pages_per_s"]),
            "data_version": diff.data_version,
        }
        writes = store.write_tables(
            partition=("site", site),
            partition_replacements={
                "pages": diff.pages,
                "links": result.links.assign(site=site, crawl_id=crawl_id),
            },
            appends={
                "page_history": diff.history.assign(site=site)[
                    ["site", "url", "version", "content_hash", "change", "crawl_id"]
                ],
                "crawls": pd.DataFrame([summary]),
                "crawl_skips": result.skipped.assign(site=site, crawl_id=crawl_id),
            },
        )
    readable = {key: value.isoformat() if isinstance(value, datetime) else value for key, value in summary.items()}
    return diff, readable, writes


def crawl_declared_site(
    store: WarehouseStore, site: DeclaredSite, registry_source: Path | None, limits: CrawlLimits, crawl_id: str
) -> CrawlResult:
    """Crawl a declared live site straight from the web, conditionally against its stored snapshot.

    Its `sites` row is written first, so a site added to the registry needs no `web_sites` run before its first
    crawl (synthesis and the leakage checks read the `benchmark` flag from that table)."""
    row = declared_site_row(site, registry_source)
    store.write_tables(partition=("name", site.name), partition_replacements={"sites": row})
    previous: dict = {}
    if store.table_exists("pages"):
        pages = store.read_table("pages", "site = ?", [site.name])
        links = store.read_table("links", "site = ?", [site.name]) if store.table_exists("links") else None
        previous = previous_validators(pages, links)
    return crawl_site(
        list(site.root_urls),
        proxy_url=None,
        limits=limits,
        work_dir=store.artifact_dir("crawls", crawl_id),
        live=site.live_crawl(),
        previous=previous,
    )
