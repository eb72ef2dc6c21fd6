"""Crawl one site with Scrapy, from its root URL through its sub-links, into pages, links and skips.

Scrapy runs one crawl per process (its Twisted reactor cannot restart), so `crawl_site` launches this module
as a subprocess: ``python -m webdancer_dagster.web.crawl --root URL --proxy URL --out DIR``. The spider writes
JSON lines into DIR; the parent reads them back as DataFrames.

The crawl is breadth-first and level-synchronous: every page at depth d is fetched (concurrently) before the
links found there are ranked and the next level is released. With a page budget, the pages kept are therefore
exactly those a sequential breadth-first crawl would keep, whatever order the responses arrived in, so a
re-crawl of an unchanged site visits the same pages and downstream assets stay fresh.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urldefrag, urljoin, urlsplit

from webdancer_dagster.processes import die_with_parent
from webdancer_dagster.web.errors import CrawlError
from webdancer_dagster.web.extract import ExtractedPage, extract_page, page_links

if TYPE_CHECKING:
    # Only the parent reads results into DataFrames; the spider process skips pandas' ~0.4 s import.
    import pandas as pd

logger = logging.getLogger(__name__)

PAGES_FILE = "pages.jsonl"
LINKS_FILE = "links.jsonl"
SKIPS_FILE = "skips.jsonl"
STATS_FILE = "stats.json"
PAGE_FIELDS = ["url", "title", "text", "content_hash", "depth", "status", "bytes", "fetched_at"]
LINK_FIELDS = ["src_url", "dst_url", "internal"]
SKIP_FIELDS = ["url", "depth", "reason", "detail"]
HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Links to these are never fetched: they cannot become pages. Scrapy's own list plus plain-text sources.
_EXTRA_IGNORED_EXTENSIONS = ("txt", "rst", "py", "json", "xml")
LOG_TAIL_CHARS = 4000
DIRECTORY_INDEX = "index.html"
# Error pages reach the callback to be recorded as skips; redirects stay with Scrapy's redirect middleware.
ERROR_STATUSES = list(range(400, 600))


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


def canonical_url(url: str) -> str:
    """One URL per page: no fragment, and a directory's ``index.html`` is the directory itself."""
    url = urldefrag(url)[0]
    return url[: -len(DIRECTORY_INDEX)] if url.endswith("/" + DIRECTORY_INDEX) else url


def crawl_site(root_url: str, proxy_url: str, limits: CrawlLimits, work_dir: Path) -> CrawlResult:
    """Crawl the site under ``root_url`` through the site server at ``proxy_url``.

    Raises CrawlError when the crawl fails or yields no page (an unreachable root, a site with zero pages),
    so that nothing is written for it. Skipped URLs are returned with their reason, never raised.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", __name__,
        "--root", root_url,
        "--proxy", proxy_url,
        "--out", str(work_dir),
        "--limits", json.dumps(asdict(limits)),
    ]  # fmt: skip
    started = time.perf_counter()
    log_path = work_dir / "crawl.log"
    with log_path.open("w") as log_file:
        completed = subprocess.run(
            command, stdout=log_file, stderr=subprocess.STDOUT, check=False, preexec_fn=die_with_parent
        )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise CrawlError(f"crawl of {root_url} failed (exit {completed.returncode}); log tail:\n{_tail(log_path)}")
    pages = _read_jsonl(work_dir / PAGES_FILE, PAGE_FIELDS)
    links = _read_jsonl(work_dir / LINKS_FILE, LINK_FIELDS).drop_duplicates(["src_url", "dst_url"])
    skipped = _read_jsonl(work_dir / SKIPS_FILE, SKIP_FIELDS)
    stats = json.loads((work_dir / STATS_FILE).read_text())
    if pages.empty:
        reasons = "; ".join(f"{row.url}: {row.reason} {row.detail}".strip() for row in skipped.head(3).itertuples())
        raise CrawlError(f"crawl of {root_url} stored no page ({reasons or 'the root page links to nothing'})")
    stats["seconds"] = round(seconds, 3)
    stats["pages_per_s"] = len(pages) / seconds if seconds > 0 else 0.0
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


# ------------------------------------------------------------------------------------------ the spider process


def _spider_class():  # noqa: ANN202 (built lazily: importing scrapy in the parent would pull in Twisted)
    import scrapy
    from scrapy import signals
    from scrapy.exceptions import (
        CannotResolveHostError,
        DontCloseSpider,
        DownloadCancelledError,
        DownloadConnectionRefusedError,
        DownloadTimeoutError,
        IgnoreRequest,
    )
    from scrapy.linkextractors import IGNORED_EXTENSIONS

    ignored_extensions = frozenset(f".{ext}" for ext in (*IGNORED_EXTENSIONS, *_EXTRA_IGNORED_EXTENSIONS))

    class SiteSpider(scrapy.Spider):
        """Breadth-first, one level at a time; links ranked by where they were first seen (see module doc)."""

        name = "webdancer_site"

        def __init__(self, root_url: str, proxy_url: str, out_dir: str, limits: CrawlLimits) -> None:
            super().__init__()
            self.root_url = root_url
            self.host = (urlsplit(root_url).hostname or "").lower()
            self.proxy_url = proxy_url
            self.limits = limits
            out = Path(out_dir)
            self._pages = (out / PAGES_FILE).open("w", encoding="utf-8")
            self._links = (out / LINKS_FILE).open("w", encoding="utf-8")
            self._skips = (out / SKIPS_FILE).open("w", encoding="utf-8")
            self._stats_path = out / STATS_FILE
            self.scheduled: set[str] = {root_url}
            self.stored: set[str] = set()
            self.next_level: dict[str, tuple[int, ...]] = {}  # url -> smallest rank key it was found under
            self.level = 0
            self._extractors = ProcessPoolExecutor(max_workers=limits.extract_workers or os.cpu_count() or 1)
            self.counts = {"requests": 1, "duplicates": 0, "ignored_extension": 0, "beyond_budget": 0}

        @classmethod
        def from_crawler(cls, crawler, *args, **kwargs):  # noqa: ANN001, ANN206 (Scrapy's signature)
            spider = super().from_crawler(crawler, *args, **kwargs)
            crawler.signals.connect(spider.release_next_level, signal=signals.spider_idle)
            crawler.signals.connect(spider.finish, signal=signals.spider_closed)
            return spider

        async def start(self) -> AsyncIterator[scrapy.Request]:
            yield self._request(self.root_url, depth=0, rank=())

        def _request(self, url: str, depth: int, rank: tuple[int, ...]) -> scrapy.Request:
            return scrapy.Request(
                url,
                callback=self.parse_page,
                errback=self.failed,
                dont_filter=True,  # dedup happens here; redirect loops must reach the errback
                meta={
                    "proxy": self.proxy_url,
                    "handle_httpstatus_list": ERROR_STATUSES,
                    "page_depth": depth,
                    "rank": rank,
                },
            )

        async def parse_page(self, response: scrapy.http.Response) -> None:
            depth, rank = response.meta["page_depth"], response.meta["rank"]
            url = canonical_url(response.url)
            if response.status >= 400:
                self._skip(url, depth, f"http_{response.status}", "")
                return
            if (urlsplit(url).hostname or "").lower() != self.host:
                self._skip(url, depth, "offsite_redirect", f"redirected away from {self.host}")
                return
            media_type = response.headers.get(b"Content-Type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media_type not in HTML_TYPES:
                self._skip(url, depth, "non_html", f"content type {media_type or 'missing'}")
                return
            if url in self.stored:
                self.counts["duplicates"] += 1
                return
            self.stored.add(url)
            encoding = getattr(response, "encoding", None)
            # Extraction is most of a page's cost: worker processes do it while the reactor keeps downloading.
            page, hrefs = await asyncio.wrap_future(
                self._extractors.submit(extract_with_links, response.body, url, encoding)
            )
            self._write(
                self._pages,
                {
                    "url": url,
                    "title": page.title,
                    "text": page.text,
                    "content_hash": content_hash(page.title, page.text),
                    "depth": depth,
                    "status": response.status,
                    "bytes": len(response.body),
                    "fetched_at": datetime.now(UTC).isoformat(),
                },
            )
            for position, target in enumerate(self._outlinks(hrefs, url)):
                internal = (urlsplit(target).hostname or "").lower() == self.host
                self._write(self._links, {"src_url": url, "dst_url": target, "internal": internal})
                if internal and depth < self.limits.max_depth:
                    self._discover(target, (*rank, position))

        @staticmethod
        def _outlinks(hrefs: list[str], base_url: str) -> list[str]:
            seen: dict[str, None] = {}
            for href in hrefs:
                target = canonical_url(urljoin(base_url, href.strip()))
                if target.startswith(("http://", "https://")) and target != base_url:
                    seen.setdefault(target, None)
            return list(seen)

        def _discover(self, url: str, rank: tuple[int, ...]) -> None:
            if url in self.scheduled:
                return
            if os.path.splitext(urlsplit(url).path)[1].lower() in ignored_extensions:
                self.counts["ignored_extension"] += 1
                self.scheduled.add(url)
                return
            known = self.next_level.get(url)
            if known is None or rank < known:
                self.next_level[url] = rank

        def release_next_level(self) -> None:
            """On idle (the current level is done): schedule the best-ranked links found, within the budget."""
            if not self.next_level:
                return
            ranked = sorted(self.next_level.items(), key=lambda item: (item[1], item[0]))
            self.next_level = {}
            self.level += 1
            budget = self.limits.max_pages - self.counts["requests"]
            chosen, dropped = ranked[: max(budget, 0)], ranked[max(budget, 0) :]
            self.counts["beyond_budget"] += len(dropped)
            for url, rank in chosen:
                self.scheduled.add(url)
                self.counts["requests"] += 1
                self.crawler.engine.crawl(self._request(url, depth=self.level, rank=rank))
            if chosen:
                raise DontCloseSpider

        def failed(self, failure) -> None:  # noqa: ANN001 (Twisted Failure)
            request = failure.request
            error = failure.value
            if failure.check(IgnoreRequest) and "redirect" in str(error).lower():
                reason = "redirect_loop"
            elif failure.check(DownloadCancelledError):
                reason = "too_large" if "size" in str(error).lower() else "cancelled"
            elif failure.check(DownloadTimeoutError):
                reason = "timeout"
            elif failure.check(DownloadConnectionRefusedError, CannotResolveHostError):
                reason = "connect_error"
            else:
                reason = "fetch_error"
            self._skip(
                request.url,
                request.meta.get("page_depth", 0),
                reason,
                f"{type(error).__name__}: {error}"[:300],
            )

        def _skip(self, url: str, depth: int, reason: str, detail: str) -> None:
            self._write(self._skips, {"url": url, "depth": depth, "reason": reason, "detail": detail})

        @staticmethod
        def _write(handle, row: dict) -> None:  # noqa: ANN001 (text file)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")

        def finish(self, spider, reason: str) -> None:  # noqa: ANN001 (Scrapy's signal signature)
            self._extractors.shutdown(cancel_futures=True)
            for handle in (self._pages, self._links, self._skips):
                handle.close()
            self._stats_path.write_text(
                json.dumps(
                    {
                        **self.counts,
                        "levels": self.level + 1,
                        "pages_stored": len(self.stored),
                        "close": reason,
                    }
                )
            )

    return SiteSpider


def extract_with_links(body: bytes, url: str, encoding: str | None) -> tuple[ExtractedPage, list[str]]:
    """Title, main text and raw hrefs of one response (runs in a worker process of the spider)."""
    return extract_page(body, url, encoding), page_links(body, encoding)


def run_spider(root_url: str, proxy_url: str, out_dir: Path, limits: CrawlLimits) -> None:
    """Run the spider in this process (the subprocess side of `crawl_site`)."""
    from scrapy.crawler import CrawlerProcess

    settings = {
        "ROBOTSTXT_OBEY": False,
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "COOKIES_ENABLED": False,
        "LOG_LEVEL": "WARNING",
        "CONCURRENT_REQUESTS": limits.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": limits.concurrency,
        "DOWNLOAD_DELAY": 0,
        "DOWNLOAD_TIMEOUT": limits.timeout_s,
        "DOWNLOAD_MAXSIZE": limits.max_bytes,
        "DOWNLOAD_WARNSIZE": 0,
        "RETRY_TIMES": 1,
        "REDIRECT_MAX_TIMES": 5,
        "USER_AGENT": "webdancer-crawler/0.1 (+offline research crawler)",
        "AUTOTHROTTLE_ENABLED": False,
        "HTTPCACHE_ENABLED": False,
    }
    process = CrawlerProcess(settings=settings)
    process.crawl(_spider_class(), root_url=root_url, proxy_url=proxy_url, out_dir=str(out_dir), limits=limits)
    process.start()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crawl one site breadth-first into JSON lines.")
    parser.add_argument("--root", required=True, help="root URL, e.g. http://wiki.webdancer.test/")
    parser.add_argument("--proxy", required=True, help="the site server's proxy URL, e.g. http://127.0.0.1:8123")
    parser.add_argument("--out", required=True, type=Path, help="folder for pages/links/skips JSONL and stats")
    parser.add_argument("--limits", default="{}", help="CrawlLimits as JSON")
    args = parser.parse_args(argv)
    run_spider(args.root, args.proxy, args.out, CrawlLimits(**json.loads(args.limits)))
    if not (args.out / STATS_FILE).exists():
        sys.exit("the spider closed without writing its stats")


if __name__ == "__main__":
    main()
