"""The offline web as a resource: serves the built sites while a step runs, and opens the search backend."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import (
    MAX_RESULTS_PER_QUERY,
    TOP_K,
    LocalSearch,
    SearchBackend,
    SerperSearch,
    index_content_version,
)
from webdancer_dagster.web.server import SiteServer

SEARCH_INDEX_DIR = "search_index"


def site_roots(store: WarehouseStore) -> dict[str, Path]:
    """Virtual host -> document root of every built site, in this home: the `sites` table stores a folder of the
    home relative to it (so a moved home serves its own copy); an absolute one, from an older home, is kept. Live
    sites (declared in sites.yaml) have no folder: the proxy does not serve them."""
    sites = store.read_table("sites")
    if sites.empty:
        raise LookupError("the sites table is empty; materialize web_sites first")
    return {
        row.host: store.resolve_path(row.directory)
        for row in sites.itertuples()
        if isinstance(row.directory, str) and row.directory
    }


class WebEnvironment(dg.ConfigurableResource):
    """Local sites behind one proxy on 127.0.0.1, BM25 search over the crawl, or a live Serper backend."""

    warehouse: Warehouse
    search_backend: str = Field(default="local", description="'local' (BM25 over crawled pages) or 'serper'.")
    serper_api_key: str | None = Field(
        default=None, description="Serper API key; set it with dg.EnvVar('SERPER_API_KEY'), never inline."
    )
    live_search_api_key_env: str = Field(
        default="SERPER_API_KEY",
        description="Evaluation of the question-only benchmarks searches the live web with Serper when this "
        "environment variable holds a key, and runs closed-book otherwise (the key is read, never stored).",
    )
    serper_base_url: str = Field(default="https://google.serper.dev", description="Serper-compatible API URL.")
    search_results_per_query: int = Field(
        default=TOP_K,
        ge=1,
        le=MAX_RESULTS_PER_QUERY,
        description="Hits the agent's `search` returns a query, and the prompt says it returns, wherever the agent "
        "runs (teacher trajectories, DAPO rollouts, scoring). WebDancer's 10 by default; fewer make every search "
        "observation shorter (the learning profile takes 5 to fit 2 CPU cores). Released trajectories stay as "
        "recorded.",
    )
    private_network_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts the live-web `visit` may fetch although they resolve to a loopback or private address "
        "(an intranet service); every other such address is refused.",
    )

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Start the site server for the built sites; yields its proxy URL and stops it afterwards."""
        with SiteServer(site_roots(self.warehouse.store())) as server:
            yield server.proxy_url

    def search(self) -> SearchBackend:
        if self.search_backend == "serper":
            if not self.serper_api_key:
                raise ValueError("search_backend='serper' needs serper_api_key (dg.EnvVar('SERPER_API_KEY'))")
            return SerperSearch(api_key=self.serper_api_key, base_url=self.serper_base_url)
        if self.search_backend != "local":
            raise ValueError(f"unknown search_backend {self.search_backend!r}; use 'local' or 'serper'")
        return self.local_search()

    def live_search(self) -> SearchBackend | None:
        """A live web search backend if one is configured (`search_backend='serper'`, or a key in
        `live_search_api_key_env`); None means there is no live web to search."""
        if self.search_backend == "serper" and self.serper_api_key:
            return SerperSearch(api_key=self.serper_api_key, base_url=self.serper_base_url)
        key = os.environ.get(self.live_search_api_key_env, "").strip()
        return SerperSearch(api_key=key, base_url=self.serper_base_url) if key else None

    def local_search(self) -> SearchBackend:
        """BM25 over the crawled local web, whatever `search_backend` says."""
        return LocalSearch(self.local_index_dir())

    def local_index_dir(self) -> Path:
        """The BM25 index folder of the crawled local web (what RL rollouts in other processes open)."""
        index_dir = self.warehouse.store().home / SEARCH_INDEX_DIR
        if not index_dir.exists():
            raise LookupError(f"no search index at {index_dir}; materialize search_index first")
        return index_dir

    def local_index_content(self) -> str:
        """What the local index holds, as a version of its documents: the same after a rebuild of the same pages."""
        return index_content_version(self.local_index_dir())
