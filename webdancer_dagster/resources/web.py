"""The offline web as a resource: serves the built sites while a step runs, and opens the search backend."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.web.search import LocalSearch, SearchBackend, SerperSearch
from webdancer_dagster.web.server import SiteServer

SEARCH_INDEX_DIR = "search_index"


class WebEnvironment(dg.ConfigurableResource):
    """Local sites behind one proxy on 127.0.0.1, BM25 search over the crawl, or a live Serper backend."""

    warehouse: Warehouse
    search_backend: str = Field(default="local", description="'local' (BM25 over crawled pages) or 'serper'.")
    serper_api_key: str | None = Field(
        default=None, description="Serper API key; set it with dg.EnvVar('SERPER_API_KEY'), never inline."
    )

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Start the site server for the built sites; yields its proxy URL and stops it afterwards."""
        store = self.warehouse.store()
        sites = store.read_table("sites")
        if sites.empty:
            raise LookupError("the sites table is empty; materialize web_sites first")
        hosts = {row.host: Path(row.directory) for row in sites.itertuples()}
        with SiteServer(hosts) as server:
            yield server.proxy_url

    def search(self) -> SearchBackend:
        if self.search_backend == "serper":
            if not self.serper_api_key:
                raise ValueError("search_backend='serper' needs serper_api_key (dg.EnvVar('SERPER_API_KEY'))")
            return SerperSearch(api_key=self.serper_api_key)
        if self.search_backend != "local":
            raise ValueError(f"unknown search_backend {self.search_backend!r}; use 'local' or 'serper'")
        index_dir = self.warehouse.store().home / SEARCH_INDEX_DIR
        if not index_dir.exists():
            raise LookupError(f"no search index at {index_dir}; materialize search_index first")
        return LocalSearch(index_dir)
