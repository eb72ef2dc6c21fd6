"""Live sites declared in one YAML file: each becomes a `crawl_pages` partition, crawled straight from the web.

A site is added by config alone: an entry in `sites.yaml` (the repository's, or the file named by
`$WEBDANCER_SITES`) becomes a partition, with its own re-crawl schedule, the next time the definitions load
("Reload definitions" in the UI). The built-in local sites (python-docs, wiki, musique and the corpora of declared
benchmarks) are not declared here and do not change. An entry names its root URLs, the hosts and path prefixes the
crawl may enter, its page and depth budget, its politeness, whether it is a benchmark site (synthesis never reads
it) and its cron schedule; `allow_private_network: true` lets it reach a host on a loopback or private address,
which is refused otherwise. The file's `contact_url` goes into the crawler's user agent, so a site's owner can
reach whoever runs it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from webdancer_dagster.config_files import ConfigFileError, dotted, read_entries_file
from webdancer_dagster.paths import REPO_ROOT
from webdancer_dagster.web.crawl import LiveCrawl, canonical_url, host_allowed

SITES_ENV = "WEBDANCER_SITES"
DEFAULT_SITES_PATH = REPO_ROOT / "sites.yaml"
DEFAULT_SCHEDULE = "0 3 * * *"  # daily, at the built-in sites' hour
# A partition key (and a schedule name once '-' becomes '_'), as in evaluation.yaml.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
_HOST = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]{1,5})?$")
_CRON_ALIASES = frozenset({"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"})
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?-]+$")
_CRON_BOUNDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


class SiteRegistryError(ConfigFileError):
    """The site registry file is malformed; the message names the file, the line and the entry."""


class _Politeness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    obey_robots_txt: bool = Field(default=True, description="Fetch robots.txt and skip what it disallows.")
    autothrottle: bool = Field(default=True, description="Scrapy's AutoThrottle: slow down when the site does.")
    delay_s: float = Field(default=1.0, ge=0, description="Least seconds between two requests to one domain.")
    start_delay_s: float = Field(default=2.0, ge=0, description="AutoThrottle's first delay.")
    max_delay_s: float = Field(default=30.0, gt=0, description="AutoThrottle's largest delay.")
    target_concurrency: float = Field(default=1.0, gt=0, description="AutoThrottle's requests in flight per site.")
    concurrency_per_domain: int = Field(default=2, ge=1, le=32, description="Most requests in flight per domain.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of a 429 or 503 reply.")
    max_retry_after_s: float = Field(default=120.0, ge=0, description="A longer Retry-After gives the page up.")


class _SiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    root_urls: list[str] = Field(min_length=1, description="Where the crawl starts (depth 0).")
    allowed_hosts: list[str] | None = Field(default=None, description="Default: the root URLs' hosts.")
    path_prefixes: list[str] = Field(default_factory=lambda: ["/"], min_length=1)
    max_pages: int = Field(default=200, ge=1)
    max_depth: int = Field(default=3, ge=0)
    benchmark: bool = Field(default=False, description="A benchmark's web: synthesis never reads it.")
    schedule: str = Field(default=DEFAULT_SCHEDULE, description="Cron (UTC) of the site's re-crawl.")
    allow_private_network: bool = Field(default=False, description="May reach loopback and private addresses.")
    description: str = ""
    politeness: _Politeness = Field(default_factory=_Politeness)
    sitemap_urls: list[str] = Field(
        default_factory=list,
        description="Sitemaps (or sitemap indexes) on the allowed hosts: their pages under the path prefixes are "
        "crawled at depth 1, after the roots' own links.",
    )

    @field_validator("root_urls", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("root_urls", "sitemap_urls")
    @classmethod
    def _urls(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind = "root URL" if info.field_name == "root_urls" else "sitemap URL"
        for url in value:
            try:
                parts = urlsplit(url)
                parts.port  # noqa: B018 (raises on a bad port)
            except ValueError as error:
                raise ValueError(f"{kind} {url!r} is not a URL ({error})") from None
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{kind} {url!r} must be an http:// or https:// URL with a host")
            if parts.username or parts.password:
                raise ValueError(f"{kind} {url!r} carries credentials; they are never stored")
        return [canonical_url(url) for url in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        hosts = [host.strip().lower() for host in value]
        for host in hosts:
            if not _HOST.match(host):
                raise ValueError(f"allowed host {host!r} must be a host name, optionally with :port (no scheme/path)")
        return hosts

    @field_validator("path_prefixes")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            if not prefix.startswith("/"):
                raise ValueError(f"path prefix {prefix!r} must start with '/'")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = value.strip()
        if not valid_cron(value):
            raise ValueError(f"schedule {value!r} is not a cron expression (five fields, e.g. '0 3 * * *' daily)")
        return value

    @model_validator(mode="after")
    def _roots_in_scope(self) -> _SiteEntry:
        if self.allowed_hosts is None:
            self.allowed_hosts = list(dict.fromkeys(_host_entry(url) for url in self.root_urls))
        live = LiveCrawl(tuple(self.allowed_hosts), tuple(self.path_prefixes))
        for url in self.root_urls:
            if not live.in_scope(url):
                raise ValueError(f"root URL {url} is outside allowed_hosts {self.allowed_hosts} / path_prefixes")
        for url in self.sitemap_urls:
            if not host_allowed(url, live.allowed_hosts):
                raise ValueError(f"sitemap URL {url} is not on allowed_hosts {self.allowed_hosts}")
        return self


class _SitesFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_url: str | None = Field(default=None, description="Where a site owner can reach you (user agent).")
    sites: list[_SiteEntry] = Field(default_factory=list)

    @field_validator("contact_url")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(https?://[^\s/]+\S*|mailto:\S+@\S+)$", value):
            raise ValueError(f"contact_url {value!r} must be an http(s) URL or a mailto: address")
        return value


@dataclasses.dataclass(frozen=True)
class DeclaredSite:
    """One live site of the registry: where its crawl may go, how far and how politely, and when it re-runs."""

    name: str
    root_urls: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...]
    max_pages: int
    max_depth: int
    benchmark: bool
    schedule: str
    allow_private_network: bool
    description: str
    politeness: Mapping[str, Any]
    contact_url: str
    sitemap_urls: tuple[str, ...] = ()

    @property
    def root_url(self) -> str:
        return self.root_urls[0]

    @property
    def host(self) -> str:
        """The first root URL's host name (the `sites` table's `host`)."""
        return (urlsplit(self.root_url).hostname or "").lower()

    def live_crawl(self) -> LiveCrawl:
        return LiveCrawl(
            allowed_hosts=self.allowed_hosts,
            path_prefixes=self.path_prefixes,
            contact_url=self.contact_url,
            allow_private_network=self.allow_private_network,
            sitemap_urls=self.sitemap_urls,
            **self.politeness,
        )


@dataclasses.dataclass(frozen=True)
class SiteRegistry:
    """The declared live sites, in file order."""

    sites: Mapping[str, DeclaredSite]
    contact_url: str | None = None
    source: Path | None = None


def load_site_registry(path: Path | None, taken: Iterable[str] = ()) -> SiteRegistry:
    """The sites declared in `path` (None: none). `taken`: names already used by built-in sites."""
    if path is None:
        return SiteRegistry(sites={})
    document, parsed = read_entries_file(
        Path(path), "site registry file", SiteRegistryError, _SitesFile, "`contact_url:` and `sites:`"
    )
    if parsed.sites and not parsed.contact_url:
        raise SiteRegistryError(
            f"{document.at('contact_url')}: contact_url: a live crawl must say who runs it; set contact_url to a "
            "page or mailto: address where a site's owner can reach you (it goes into the user agent)"
        )
    names = set(taken)
    sites: dict[str, DeclaredSite] = {}
    for index, entry in enumerate(parsed.sites):
        where = ("sites", index)
        prefix = f"{document.at(*where, 'name')}: {dotted(where)}"
        if not _NAME.match(entry.name):
            raise SiteRegistryError(
                f"{prefix}: name {entry.name!r} must be lowercase letters, digits, '-' or '_' (it is a partition key)"
            )
        if entry.name in names:
            raise SiteRegistryError(f"{prefix}: name {entry.name!r} is already taken (built-in or declared twice)")
        names.add(entry.name)
        sites[entry.name] = DeclaredSite(
            name=entry.name,
            root_urls=tuple(entry.root_urls),
            allowed_hosts=tuple(entry.allowed_hosts or ()),
            path_prefixes=tuple(entry.path_prefixes),
            max_pages=entry.max_pages,
            max_depth=entry.max_depth,
            benchmark=entry.benchmark,
            schedule=entry.schedule,
            allow_private_network=entry.allow_private_network,
            description=entry.description or f"live site {entry.root_urls[0]}",
            politeness=entry.politeness.model_dump(),
            contact_url=str(parsed.contact_url),
            sitemap_urls=tuple(entry.sitemap_urls),
        )
    return SiteRegistry(sites=sites, contact_url=parsed.contact_url, source=document.path)


def site_registry_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """`$WEBDANCER_SITES` if set (it must exist), else the repository's `sites.yaml` if present."""
    if environ.get(SITES_ENV):
        return Path(environ[SITES_ENV]).expanduser()
    return DEFAULT_SITES_PATH if DEFAULT_SITES_PATH.is_file() else None


def default_site_registry(taken: Iterable[str] = ()) -> SiteRegistry:
    """The registry the definitions are built from (`assets.registries.SITE_REGISTRY` holds the one read at import)."""
    return load_site_registry(site_registry_path(), taken)


def entry_location(registry: SiteRegistry, name: str) -> str:
    """`file: sites[i] (name)` of a declared site, for errors found after loading (e.g. by Dagster)."""
    index = list(registry.sites).index(name)
    return f"{registry.source}: sites[{index}] ({name})"


def valid_cron(value: str) -> bool:
    """Five cron fields (minute hour day month weekday) with numbers in range, or an alias such as @daily."""
    if value in _CRON_ALIASES:
        return True
    fields = value.split()
    if len(fields) != 5:
        return False
    for text, (low, high) in zip(fields, _CRON_BOUNDS, strict=True):
        if not _CRON_FIELD.match(text):
            return False
        for number in re.findall(r"\d+", text.split("/")[0]):
            if not low <= int(number) <= high:
                return False
    return True


def _host_entry(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port else host
