"""The `sites` table (one row per local site built and per live site declared in the site registry), and the
overview of every site with its last crawl that `webdancer sites` prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.site_registry import DeclaredSite
from webdancer_dagster.web.sites import BuiltSite, SiteSpec, site_root_url

SITE_COLUMNS = [
    "name",
    "host",
    "root_url",
    "directory",
    "pages",
    "benchmark",
    "source",
    "kind",
    "allow_private_network",
]
OVERVIEW_CRAWL_COLUMNS = ["site", "finished_at", "pages", "new", "changed", "removed", "not_modified", "skipped"]


def sites_table(
    built: Sequence[BuiltSite], declared: Sequence[DeclaredSite], registry_source: Path | None, store: WarehouseStore
) -> pd.DataFrame:
    """Every local site (its folder stored relative to the home, so a copied or moved home serves its own) and every
    declared live site (no folder: the proxy does not serve it; `visit` fetches it directly, on a private address
    only when its entry allows it)."""
    local = pd.DataFrame(
        {
            "name": [site.name for site in built],
            "host": [site.host for site in built],
            "root_url": [site.root_url for site in built],
            "directory": [store.stored_path(site.directory) for site in built],
            "pages": [site.pages for site in built],
            "benchmark": [site.benchmark for site in built],
            "source": [site.source for site in built],
            "kind": "local",
            "allow_private_network": False,
        }
    )
    live = [declared_site_row(site, registry_source) for site in declared]
    return pd.concat([local, *live], ignore_index=True).astype({"directory": "string"})


def declared_site_row(site: DeclaredSite, registry_source: Path | None) -> pd.DataFrame:
    """The `sites` row of a declared live site: no folder, its first root URL."""
    row = {
        "name": site.name,
        "host": site.host,
        "root_url": site.root_url,
        "directory": None,
        "pages": 0,
        "benchmark": site.benchmark,
        "source": str(registry_source),
        "kind": "live",
        "allow_private_network": site.allow_private_network,
    }
    return pd.DataFrame([row], columns=SITE_COLUMNS).astype({"directory": "string", "pages": "int64"})


def site_overview(
    store: WarehouseStore, local: Sequence[SiteSpec], declared: Sequence[DeclaredSite], local_schedule: str
) -> pd.DataFrame:
    """Every site, local (re-crawled on `local_schedule`) and declared live, with its last crawl (pages, changes,
    skips)."""
    rows = [
        {
            "site": spec.name,
            "kind": "local",
            "benchmark": spec.benchmark,
            "root_url": site_root_url(spec.name),
            "schedule": local_schedule,
        }
        for spec in local
    ]
    rows += [
        {"site": s.name, "kind": "live", "benchmark": s.benchmark, "root_url": s.root_url, "schedule": s.schedule}
        for s in declared
    ]
    last = pd.DataFrame(columns=OVERVIEW_CRAWL_COLUMNS)
    if store.table_exists("crawls"):
        # crawls stored before not_modified was counted read NaN there
        crawls = store.read_table("crawls").reindex(columns=OVERVIEW_CRAWL_COLUMNS)
        last = crawls.sort_values("finished_at").groupby("site").tail(1)
    last = last.rename(columns={"finished_at": "last_crawl"})
    return pd.DataFrame(rows).merge(last, on="site", how="left")
