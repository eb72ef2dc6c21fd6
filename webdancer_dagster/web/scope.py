"""Which part of the web an agent's tools may reach, decided in one place for every stage.

Synthesis and RL rollouts see the non-benchmark local sites only (the leakage rule), evaluation and `webdancer ask`
see every local site, a live-web benchmark sees the public web, a closed-book one nothing. The local sites come
from the `sites` table (`host`, `benchmark`, and `name`), written by the `web_sites` and `crawl_pages` assets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import ExcludeHosts, SearchBackend
from webdancer_dagster.web.visit import FetchPolicy


@dataclass(frozen=True)
class LocalSites:
    """The `sites` table split by its benchmark flag. `live_hosts` are the declared live sites' hosts, which `visit`
    fetches directly rather than through the site proxy; `private_network_hosts` those of them whose entry allows a
    private address."""

    names: tuple[str, ...]
    hosts: frozenset[str]
    benchmark_names: tuple[str, ...]
    benchmark_hosts: frozenset[str]
    live_hosts: frozenset[str] = frozenset()
    private_network_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_table(cls, sites: pd.DataFrame) -> LocalSites:
        if sites.empty:
            raise LookupError("the sites table is empty; materialize web_sites first")
        benchmark = sites["benchmark"].astype(bool)
        nowhere = pd.Series(False, index=sites.index)  # a table written before live sites had these columns
        live = sites["kind"].eq("live") if "kind" in sites else nowhere
        private = live & sites.get("allow_private_network", nowhere).fillna(False).astype(bool)
        return cls(
            names=tuple(sites.loc[~benchmark, "name"]),
            hosts=frozenset(sites.loc[~benchmark, "host"]),
            benchmark_names=tuple(sites.loc[benchmark, "name"]),
            benchmark_hosts=frozenset(sites.loc[benchmark, "host"]),
            live_hosts=frozenset(sites.loc[live, "host"]),
            private_network_hosts=frozenset(sites.loc[private, "host"]),
        )

    @classmethod
    def of_home(cls, store: WarehouseStore) -> LocalSites:
        """The sites of this home's warehouse."""
        if not store.table_exists("sites"):
            raise LookupError("no sites table; materialize web_sites first")
        return cls.from_table(store.read_table("sites"))


@dataclass(frozen=True)
class WebScope:
    """What `search` may return and `visit` may fetch. `blocked_hosts` never appear in search results;
    `fetch` holds the hosts `visit` may open (None: any public host) and the proxy that serves the local web."""

    fetch: FetchPolicy
    blocked_hosts: frozenset[str] = frozenset()

    @classmethod
    def synthesis(cls, sites: LocalSites, proxy_url: str | None) -> WebScope:
        """The non-benchmark sites: what QA synthesis, trajectories and RL rollouts may read."""
        return cls(_site_policy(sites, sites.hosts, proxy_url), sites.benchmark_hosts)

    @classmethod
    def every_local_site(cls, sites: LocalSites, proxy_url: str | None) -> WebScope:
        """Every site of the table, benchmark sites included: what evaluation and `webdancer ask` may read."""
        return cls(_site_policy(sites, sites.hosts | sites.benchmark_hosts, proxy_url))

    @classmethod
    def live(cls, private_network_hosts: frozenset[str] = frozenset()) -> WebScope:
        """Any public host, fetched directly; private addresses only for the named intranet hosts."""
        return cls(FetchPolicy(private_network_hosts=private_network_hosts))

    @classmethod
    def closed_book(cls) -> WebScope:
        """Nothing: `visit` refuses every host."""
        return cls(FetchPolicy(allowed_hosts=frozenset()))

    def search(self, backend: SearchBackend) -> SearchBackend:
        """`backend` with the blocked hosts' pages removed from every result list."""
        return ExcludeHosts(backend, sorted(self.blocked_hosts)) if self.blocked_hosts else backend


def _site_policy(sites: LocalSites, allowed: frozenset[str], proxy_url: str | None) -> FetchPolicy:
    """`allowed` through the site proxy, except the declared live sites among them, which are fetched directly."""
    direct = sites.live_hosts & allowed
    return FetchPolicy(
        allowed_hosts=allowed,
        proxy_url=proxy_url,
        direct_hosts=direct,
        private_network_hosts=sites.private_network_hosts & direct,
    )
