"""Crawl one site with Scrapy, from its root URLs through their sub-links, into pages, links and skips.

Scrapy runs one crawl per process (its Twisted reactor cannot restart), so `crawl_site` launches the spider
(`web/spider.py`) as a subprocess: ``python -m webdancer_dagster.web.spider --plan PLAN.json --out DIR``. The
spider writes JSON lines into DIR; the parent reads them back as DataFrames.

Two paths:
- **local** (``proxy_url`` given): every request goes through the project's site proxy on 127.0.0.1, robots.txt
  ignored, no delay; the sites are the project's own builds.
- **live** (``live`` given, no proxy): requests go straight to the site's hosts, politely: robots.txt obeyed,
  AutoThrottle with a per-domain delay floor and concurrency, 429/503 retried after `Retry-After`, a user agent
  with a contact URL, no cookies, no environment proxy. Only http(s) URLs on the allowed hosts and under the
  allowed path prefixes are fetched; a redirect that leaves them is skipped (`offsite_redirect`) before it is
  followed; a host that resolves to a loopback or private address is refused (`private_address`) unless the site
  says `allow_private_network`. With ``previous`` (the last snapshot's validators), a re-crawl sends
  `If-None-Match` / `If-Modified-Since` and a 304 keeps the stored page without downloading or extracting it.

The crawl is breadth-first and level-synchronous: every page at depth d is fetched (concurrently) before the
links found there are ranked and the next level is released. With a page budget, the pages kept are therefore
exactly those a sequential breadth-first crawl would keep, whatever order the responses arrived in, so a
re-crawl of an unchanged site visits the same pages and downstream assets stay fresh.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urljoin, urlsplit, urlunsplit

from webdancer_dagster.processes import die_with_parent
from webdancer_dagster.web.errors import CrawlError

if TYPE_CHECKING:
    # Only the parent reads results into DataFrames; the spider process skips pandas' ~0.4 s import.
    import pandas as pd

logger = logging.getLogger(__name__)

PAGES_FILE = "pages.jsonl"
LINKS_FILE = "links.jsonl"
SKIPS_FILE = "skips.jsonl"
STATS_FILE = "stats.json"
PLAN_FILE = "plan.json"
PREVIOUS_FILE = "previous.jsonl"
PAGE_FIELDS = [
    "url", "title", "text", "content_hash", "depth", "status", "bytes", "fetched_at",
    "etag", "last_modified", "not_modified",
]  # fmt: skip
LINK_FIELDS = ["src_url", "dst_url", "internal", "position"]
SKIP_FIELDS = ["url", "depth", "reason", "detail"]
LOG_TAIL_CHARS = 4000
DIRECTORY_INDEX = "index.html"
CRAWLER_NAME = "webdancer-crawler"
CRAWLER_VERSION = "0.1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class CrawlLimits:
    """How far and how hard to crawl one site."""

    max_pages: int = 200
    max_depth: int = 3
    concurrency: int = 16
    timeout_s: float = 10.0
    max_bytes: int = 5_000_000
    extract_workers: int = 0  # processes extracting text and links; 0 means one per core

    def __post_init__(self) -> None:
        if self.max_pages < 1 or self.max_depth < 0 or self.concurrency < 1:
            raise ValueError(f"crawl limits need max_pages >= 1, max_depth >= 0, concurrency >= 1: {self}")


@dataclass(frozen=True)
class LiveCrawl:
    """A crawl straight from the web: where it may go and how politely (see the module doc).

    `allowed_hosts` are host names (any of them matches http and https on their default ports) or `host:port`.
    `delay_s` is the floor of the per-domain delay between requests; AutoThrottle raises it when the site slows
    down, up to `max_delay_s`. A 429 or 503 is retried at most `max_retries` times, each after `Retry-After` (or
    an exponential backoff from `delay_s` when the reply names none); a `Retry-After` above `max_retry_after_s`
    gives the page up as a skip rather than holding the crawl.
    """

    allowed_hosts: tuple[str, ...]
    path_prefixes: tuple[str, ...] = ("/",)
    contact_url: str = ""
    allow_private_network: bool = False
    obey_robots_txt: bool = True
    autothrottle: bool = True
    delay_s: float = 1.0
    start_delay_s: float = 2.0
    max_delay_s: float = 30.0
    target_concurrency: float = 1.0
    concurrency_per_domain: int = 2
    max_retries: int = 3
    max_retry_after_s: float = 120.0
    sitemap_urls: tuple[str, ...] = ()  # sitemaps whose in-scope pages join the first level after the roots

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", tuple(host.lower() for host in self.allowed_hosts))
        object.__setattr__(self, "path_prefixes", tuple(self.path_prefixes))
        object.__setattr__(self, "sitemap_urls", tuple(self.sitemap_urls))
        if not self.allowed_hosts:
            raise ValueError("a live crawl needs at least one allowed host")
        if self.delay_s < 0 or self.max_retries < 0 or self.concurrency_per_domain < 1:
            raise ValueError(f"a live crawl needs delay_s >= 0, max_retries >= 0, concurrency_per_domain >= 1: {self}")

    @property
    def user_agent(self) -> str:
        """`webdancer-crawler/0.1 (+CONTACT_URL)`: who is crawling, and where to complain."""
        return f"{CRAWLER_NAME}/{CRAWLER_VERSION} (+{self.contact_url or 'no contact URL configured'})"

    def in_scope(self, url: str) -> bool:
        """An http(s) URL on an allowed host (and port), under an allowed path prefix."""
        return host_allowed(url, self.allowed_hosts) and path_allowed(url, self.path_prefixes)


@dataclass
class CrawlResult:
    """What one crawl saw: pages (PAGE_FIELDS), links (LINK_FIELDS), skipped URLs (SKIP_FIELDS) and stats."""

    pages: pd.DataFrame
    links: pd.DataFrame
    skipped: pd.DataFrame
    stats: dict = field(default_factory=dict)


def content_hash(title: str, text: str) -> str:
    """What versioning compares: the extracted title and text, not the raw bytes (timestamps, markup churn)."""
    return hashlib.sha256(f"{title}\n{text}".encode()).hexdigest()


@functools.lru_cache(maxsize=65_536)
def canonical_url(url: str) -> str:
    """One URL per page: no fragment, lowercase scheme and host, no default port, and a directory's
    ``index.html`` is the directory itself. Cached: a site's pages link the same targets over and over."""
    url = urldefrag(url)[0]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    if scheme in _DEFAULT_PORTS and parts.hostname:
        host = parts.hostname.lower()
        if ":" in host:
            host = f"[{host}]"
        netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
        if parts.username or parts.password:
            netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
        url = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return url[: -len(DIRECTORY_INDEX)] if url.endswith("/" + DIRECTORY_INDEX) else url


def page_outlinks(hrefs: Sequence[str], page_url: str) -> list[str]:
    """The canonical http(s) URLs a page's hrefs point to, each once, in the order first seen, the page itself left
    out. Hrefs are deduplicated without their fragment before they are resolved: the Python docs' 163,000 hrefs
    are 23,000 distinct targets, and resolving all of them took as long as extracting the text."""
    targets: dict[str, None] = {}
    for href in dict.fromkeys(href.strip().partition("#")[0] for href in hrefs):
        target = canonical_url(urljoin(page_url, href))
        if target.startswith(("http://", "https://")) and target != page_url:
            targets.setdefault(target, None)
    return list(targets)


def host_allowed(url: str, allowed_hosts: Sequence[str]) -> bool:
    """Whether `url` is http(s) on one of `allowed_hosts`: `host` (default ports only) or `host:port`."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return False
    if scheme not in _DEFAULT_PORTS or not host:
        return False
    port = port or _DEFAULT_PORTS[scheme]
    return any(
        entry == f"{host}:{port}" or (entry == host and port == _DEFAULT_PORTS[scheme]) for entry in allowed_hosts
    )


def path_allowed(url: str, path_prefixes: Sequence[str]) -> bool:
    path = urlsplit(url).path or "/"
    return any(path.startswith(prefix) for prefix in path_prefixes)


def previous_validators(pages: pd.DataFrame, links: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """What a conditional re-crawl needs from the stored snapshot, by URL: the validators (`etag`,
    `last_modified`), the stored title, text and hash (kept on a 304) and the page's links in page order (followed
    on a 304, as if the page had been read again). Pages stored without a validator are left out."""
    import pandas as pd

    if pages.empty or not ({"etag", "last_modified"} & set(pages.columns)):
        return {}
    outlinks: dict[str, list[str]] = {}
    if links is not None and len(links):
        ordered = links.sort_values("position", kind="stable") if "position" in links.columns else links
        for src, dst in zip(ordered["src_url"], ordered["dst_url"], strict=True):
            outlinks.setdefault(src, []).append(dst)
    found: dict[str, dict[str, Any]] = {}
    for row in pages.to_dict("records"):
        etag, modified = row.get("etag"), row.get("last_modified")
        etag = etag if isinstance(etag, str) and etag else None
        modified = modified if isinstance(modified, str) and modified else None
        if etag is None and modified is None:
            continue
        found[row["url"]] = {
            "etag": etag,
            "last_modified": modified,
            "title": row["title"],
            "text": row["text"],
            "content_hash": row["content_hash"],
            "bytes": int(row["bytes"]) if pd.notna(row.get("bytes")) else 0,
            "links": outlinks.get(row["url"], []),
        }
    return found


def crawl_site(
    root_url: str | Sequence[str],
    proxy_url: str | None,
    limits: CrawlLimits,
    work_dir: Path,
    live: LiveCrawl | None = None,
    previous: Mapping[str, Mapping[str, Any]] | None = None,
) -> CrawlResult:
    """Crawl the site under ``root_url`` (one URL or several) through the site server at ``proxy_url``, or,
    with ``live`` and no proxy, straight from the web (see the module doc). ``previous``: `previous_validators`
    of the stored snapshot, for a conditional re-crawl (live path only).

    Raises CrawlError when the crawl fails or yields no page (an unreachable root, a site with zero pages, a
    refused address), so that nothing is written for it. Skipped URLs are returned with their reason, never raised.
    """
    roots = [root_url] if isinstance(root_url, str) else list(root_url)
    if not roots:
        raise ValueError("crawl_site needs at least one root URL")
    if (proxy_url is None) == (live is None):
        raise ValueError("crawl_site needs exactly one of proxy_url (the local web) and live (the live web)")
    for root in roots:
        if urlsplit(root).scheme.lower() not in _DEFAULT_PORTS:
            raise CrawlError(f"crawl of {root} refused: only http and https URLs are crawled")
        if live is not None and not live.in_scope(canonical_url(root)):
            raise CrawlError(f"crawl of {root} refused: the root is outside the allowed hosts and path prefixes")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = {
        "roots": roots,
        "proxy_url": proxy_url,
        "limits": asdict(limits),
        "live": asdict(live) if live is not None else None,
        "previous": str(work_dir / PREVIOUS_FILE) if previous and live is not None else None,
    }
    if plan["previous"]:
        with (work_dir / PREVIOUS_FILE).open("w", encoding="utf-8") as handle:
            for url, record in previous.items():
                handle.write(json.dumps({"url": url, **record}, ensure_ascii=False) + "\n")
    (work_dir / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    command = [sys.executable, "-m", "webdancer_dagster.web.spider", "--plan", str(work_dir / PLAN_FILE)]
    command += ["--out", str(work_dir)]
    started = time.perf_counter()
    log_path = work_dir / "crawl.log"
    with log_path.open("w") as log_file:
        completed = subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, check=False, preexec_fn=die_with_parent
        )
    seconds = time.perf_counter() - started
    label = roots[0] if len(roots) == 1 else f"{roots[0]} (+{len(roots) - 1} roots)"
    if completed.returncode != 0:
        raise CrawlError(f"crawl of {label} failed (exit {completed.returncode}); log tail:\n{_tail(log_path)}")
    pages = _read_jsonl(work_dir / PAGES_FILE, PAGE_FIELDS)
    links = _read_jsonl(work_dir / LINKS_FILE, LINK_FIELDS).drop_duplicates(["src_url", "dst_url"])
    skipped = _read_jsonl(work_dir / SKIPS_FILE, SKIP_FIELDS)
    stats = json.loads((work_dir / STATS_FILE).read_text())
    if pages.empty:
        reasons = "; ".join(f"{row.url}: {row.reason} {row.detail}".strip() for row in skipped.head(3).itertuples())
        raise CrawlError(f"crawl of {label} stored no page ({reasons or 'the root page links to nothing'})")
    pages["not_modified"] = pages["not_modified"].fillna(False).astype(bool)
    stats["seconds"] = round(seconds, 3)
    stats["pages_per_s"] = len(pages) / seconds if seconds > 0 else 0.0
    stats["not_modified"] = int(pages["not_modified"].sum())
    stats["skipped_by_reason"] = skipped["reason"].value_counts().to_dict() if len(skipped) else {}
    return CrawlResult(
        pages=pages.reset_index(drop=True), links=links.reset_index(drop=True), skipped=skipped, stats=stats
    )


def _read_jsonl(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        return pd.DataFrame(columns=list(columns))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return pd.DataFrame(rows, columns=list(columns))


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-LOG_TAIL_CHARS:]
