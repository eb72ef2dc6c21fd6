"""The crawler's spider process: ``python -m webdancer_dagster.web.spider --plan PLAN.json --out DIR``.

`crawl.crawl_site` writes the plan (roots, proxy or live settings, limits, previous validators) and reads back the
JSON lines this process writes. Only this process imports Scrapy and Twisted. See `crawl.py` for the two paths.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import lxml.etree
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
from scrapy.utils.gz import gunzip
from scrapy.utils.sitemap import Sitemap

from webdancer_dagster.web.addresses import is_public_address
from webdancer_dagster.web.crawl import (
    CRAWLER_NAME,
    LINKS_FILE,
    PAGES_FILE,
    SKIPS_FILE,
    STATS_FILE,
    CrawlLimits,
    LiveCrawl,
    canonical_url,
    content_hash,
    host_allowed,
)
from webdancer_dagster.web.extract import extract_with_outlinks

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# Links to these are never fetched: they cannot become pages. Scrapy's own list plus plain-text sources.
_EXTRA_IGNORED_EXTENSIONS = ("txt", "rst", "py", "json", "xml")
IGNORED = frozenset(f".{ext}" for ext in (*IGNORED_EXTENSIONS, *_EXTRA_IGNORED_EXTENSIONS))
# Error pages reach the callback to be recorded as skips; redirects stay with Scrapy's redirect middleware.
ERROR_STATUSES = list(range(400, 600))
NOT_MODIFIED = 304
MAX_SITEMAPS = 20  # sitemaps fetched in one crawl, those named by sitemap indexes included
RETRY_LATER_STATUSES = frozenset({429, 503})
LIVE_SETTING = "WEBDANCER_LIVE"


class Refused(IgnoreRequest):
    """A request the live path will not send; `reason` becomes the skip's reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SiteSpider(scrapy.Spider):
    """Breadth-first, one level at a time; links ranked by where they were first seen (see `crawl.py`)."""

    name = "webdancer_site"

    def __init__(self, plan: dict[str, Any], out_dir: str) -> None:
        super().__init__()
        self.roots = list(dict.fromkeys(canonical_url(url) for url in plan["roots"]))
        self.proxy_url: str | None = plan["proxy_url"]
        self.limits = CrawlLimits(**plan["limits"])
        self.live = LiveCrawl(**plan["live"]) if plan.get("live") else None
        self.host = (urlsplit(self.roots[0]).hostname or "").lower()
        self.previous = _read_previous(plan.get("previous"))
        out = Path(out_dir)
        self._pages = (out / PAGES_FILE).open("w", encoding="utf-8")
        self._links = (out / LINKS_FILE).open("w", encoding="utf-8")
        self._skips = (out / SKIPS_FILE).open("w", encoding="utf-8")
        self._stats_path = out / STATS_FILE
        self.scheduled: set[str] = set(self.roots)
        self.stored: set[str] = set()
        self.next_level: dict[str, tuple[int, ...]] = {}  # url -> smallest rank key it was found under
        self.level = 0
        self._in_scope: dict[str, bool] = {}
        self._extractors = ProcessPoolExecutor(max_workers=self.limits.extract_workers or os.cpu_count() or 1)
        self.counts = {
            "requests": len(self.roots),
            "duplicates": 0,
            "ignored_extension": 0,
            "beyond_budget": 0,
            "retries": 0,
            "not_modified": 0,
            "body_bytes": 0,
            "sitemaps": 0,
            "sitemap_pages": 0,
            "sitemap_out_of_scope": 0,
        }

    @classmethod
    def from_crawler(cls, crawler, *args, **kwargs):  # noqa: ANN001, ANN206 (Scrapy's signature)
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.release_next_level, signal=signals.spider_idle)
        crawler.signals.connect(spider.finish, signal=signals.spider_closed)
        return spider

    def in_scope(self, url: str) -> bool:
        """Cached by URL: a site's pages link the same targets over and over."""
        known = self._in_scope.get(url)
        if known is None:
            if self.live is not None:
                known = self.live.in_scope(url)
            else:
                known = (urlsplit(url).hostname or "").lower() == self.host
            self._in_scope[url] = known
        return known

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for position, root in enumerate(self.roots):
            yield self._request(root, depth=0, rank=(position,))
        if self.live is not None and self.limits.max_depth >= 1:
            for position, sitemap in enumerate(self.live.sitemap_urls, start=len(self.roots)):
                yield self._sitemap_request(sitemap, rank=(position,))

    def _sitemap_request(self, url: str, rank: tuple[int, ...]) -> scrapy.Request:
        """A sitemap (not a page: outside the page budget); its pages are ranked after the roots' own links."""
        self.counts["sitemaps"] += 1
        meta = {
            "sitemap": True,
            "page_depth": 0,
            "rank": rank,
            "requested_url": url,
            "handle_httpstatus_list": ERROR_STATUSES,
        }
        return scrapy.Request(url, callback=self.parse_sitemap, errback=self.failed, dont_filter=True, meta=meta)

    def parse_sitemap(self, response: scrapy.http.Response) -> Iterator[scrapy.Request]:
        """Queue a sitemap's pages that are in scope for the next level; a sitemap index's sitemaps on the allowed
        hosts are fetched in turn, at most `MAX_SITEMAPS` in all."""
        url, rank = canonical_url(response.url), response.meta["rank"]
        if response.status >= 400:
            self._skip(url, 0, f"http_{response.status}", "sitemap")
            return
        try:
            entries, index = _sitemap_entries(response.body, self.limits.max_bytes)
        except (OSError, ValueError, lxml.etree.LxmlError) as error:  # not gzip, over max_bytes, or not XML
            self._skip(url, 0, "bad_sitemap", f"{type(error).__name__}: {error}"[:300])
            return
        for position, entry in enumerate(entries):
            location = canonical_url(urljoin(url, entry))
            if index:
                if host_allowed(location, self.live.allowed_hosts) and self.counts["sitemaps"] < MAX_SITEMAPS:
                    yield self._sitemap_request(location, rank=(*rank, position))
            elif self.in_scope(location):
                self.counts["sitemap_pages"] += 1
                self._discover(location, (*rank, position))
            else:
                self.counts["sitemap_out_of_scope"] += 1

    def _request(self, url: str, depth: int, rank: tuple[int, ...]) -> scrapy.Request:
        meta: dict[str, Any] = {
            "handle_httpstatus_list": [*ERROR_STATUSES, NOT_MODIFIED],
            "page_depth": depth,
            "rank": rank,
            "requested_url": url,
        }
        if self.proxy_url is not None:
            meta["proxy"] = self.proxy_url
        headers = {}
        prior = self.previous.get(url)
        if prior is not None:
            if prior.get("etag"):
                headers["If-None-Match"] = prior["etag"]
            if prior.get("last_modified"):
                headers["If-Modified-Since"] = prior["last_modified"]
        return scrapy.Request(
            url,
            callback=self.parse_page,
            errback=self.failed,
            dont_filter=True,  # dedup happens here; redirect loops must reach the errback
            headers=headers or None,
            meta=meta,
        )

    async def parse_page(self, response: scrapy.http.Response) -> None:
        depth, rank = response.meta["page_depth"], response.meta["rank"]
        url = canonical_url(response.url)
        if response.status == NOT_MODIFIED:
            self._not_modified(url, depth, rank)
            return
        if response.status >= 400:
            self._skip(url, depth, f"http_{response.status}", response.meta.get("retry_note", ""))
            return
        if not self.in_scope(url):
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
        self.counts["body_bytes"] += len(response.body)
        encoding = getattr(response, "encoding", None)
        # Extraction is most of a page's cost: worker processes do it while the reactor keeps downloading.
        page, outlinks = await asyncio.wrap_future(
            self._extractors.submit(extract_with_outlinks, response.body, url, encoding)
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
                "etag": _header(response, b"ETag"),
                "last_modified": _header(response, b"Last-Modified"),
                "not_modified": False,
            },
        )
        self._follow(url, outlinks, depth, rank)

    def _not_modified(self, url: str, depth: int, rank: tuple[int, ...]) -> None:
        """A 304: the stored page stands (title, text, hash, validators), and its stored links are followed."""
        prior = self.previous.get(url)
        if prior is None:  # the server answered a request that was not conditional with 304
            self._skip(url, depth, "http_304", "not modified, but nothing stored to keep")
            return
        if url in self.stored:
            self.counts["duplicates"] += 1
            return
        self.stored.add(url)
        self.counts["not_modified"] += 1
        self._write(
            self._pages,
            {
                "url": url,
                "title": prior["title"],
                "text": prior["text"],
                "content_hash": prior["content_hash"],
                "depth": depth,
                "status": NOT_MODIFIED,
                "bytes": prior.get("bytes", 0),
                "fetched_at": datetime.now(UTC).isoformat(),
                "etag": prior.get("etag"),
                "last_modified": prior.get("last_modified"),
                "not_modified": True,
            },
        )
        self._follow(url, list(dict.fromkeys(prior.get("links") or [])), depth, rank)

    def _follow(self, url: str, targets: list[str], depth: int, rank: tuple[int, ...]) -> None:
        for position, target in enumerate(targets):
            internal = self.in_scope(target)
            self._write(self._links, {"src_url": url, "dst_url": target, "internal": internal, "position": position})
            if internal and depth < self.limits.max_depth:
                self._discover(target, (*rank, position))

    def _discover(self, url: str, rank: tuple[int, ...]) -> None:
        if url in self.scheduled:
            return
        if os.path.splitext(urlsplit(url).path)[1].lower() in IGNORED:
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
        url = request.meta.get("requested_url", request.url)
        detail = f"{type(error).__name__}: {error}"
        if isinstance(error, Refused):
            reason, detail = error.reason, error.detail
        elif failure.check(IgnoreRequest) and "robots.txt" in str(error):
            reason, detail = "robots_txt", f"disallowed for {CRAWLER_NAME} by the site's robots.txt"
        elif failure.check(IgnoreRequest) and "redirect" in str(error).lower():
            reason = "redirect_loop"
        elif failure.check(DownloadCancelledError):
            reason = "too_large" if "size" in str(error).lower() else "cancelled"
        elif failure.check(DownloadTimeoutError):
            reason = "timeout"
        elif failure.check(DownloadConnectionRefusedError, CannotResolveHostError):
            reason = "connect_error"
        else:
            reason = "fetch_error"
        self._skip(url, request.meta.get("page_depth", 0), reason, detail[:300])

    def _skip(self, url: str, depth: int, reason: str, detail: str) -> None:
        self._write(self._skips, {"url": url, "depth": depth, "reason": reason, "detail": detail})

    @staticmethod
    def _write(handle, row: dict) -> None:  # noqa: ANN001 (text file)
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    def finish(self, spider, reason: str) -> None:  # noqa: ANN001 (Scrapy's signal signature)
        self._extractors.shutdown(cancel_futures=True)
        for handle in (self._pages, self._links, self._skips):
            handle.close()
        stats = {**self.counts, "levels": self.level + 1, "pages_stored": len(self.stored), "close": reason}
        self._stats_path.write_text(json.dumps(stats))


# --------------------------------------------------------------------------------- live-path downloader middleware


class LiveGuardMiddleware:
    """Before anything else (robots.txt included): only http(s), only the allowed hosts and path prefixes (a redirect
    that leaves them is refused as `offsite_redirect` before it is followed), and no loopback or private address
    unless the site allows it (each host resolved once per crawl)."""

    def __init__(self, live: LiveCrawl) -> None:
        self.live = live
        self._vetted: dict[str, Refused | None] = {}

    @classmethod
    def from_crawler(cls, crawler):  # noqa: ANN001, ANN206 (Scrapy's signature)
        return cls(LiveCrawl(**crawler.settings.getdict(LIVE_SETTING)))

    async def process_request(self, request: scrapy.Request) -> None:
        url = request.url
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise Refused("bad_scheme", f"only http and https are crawled, not {scheme or 'no scheme'}")
        if request.meta.get("dont_obey_robotstxt") or request.meta.get("sitemap"):  # robots.txt or a sitemap
            if not host_allowed(url, self.live.allowed_hosts):
                raise Refused("out_of_scope", f"{url} is not on an allowed host")
        elif not self.live.in_scope(canonical_url(url)):
            if request.meta.get("redirect_urls"):
                raise Refused("offsite_redirect", f"redirected to {url}, outside the allowed hosts and paths")
            raise Refused("out_of_scope", f"{url} is outside the allowed hosts and paths")
        if not self.live.allow_private_network:
            refusal = await self._vet(urlsplit(url))
            if refusal is not None:
                raise refusal

    async def _vet(self, parts: Any) -> Refused | None:
        host = (parts.hostname or "").lower()
        if host not in self._vetted:
            loop = asyncio.get_running_loop()
            try:
                found = await loop.getaddrinfo(host, parts.port or 80, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                return None  # unresolvable: the download fails as connect_error, and nothing was reached
            refusal = None
            for address in dict.fromkeys(str(info[4][0]) for info in found):
                if not is_public_address(ipaddress.ip_address(address.split("%")[0])):
                    refusal = Refused(
                        "private_address",
                        f"{host} is at {address}, which is not a public address "
                        "(a site on a private network needs allow_private_network: true)",
                    )
                    break
            self._vetted[host] = refusal
        return self._vetted[host]


class RetryAfterMiddleware:
    """A 429 or 503 is retried at most `max_retries` times, each after the wait its `Retry-After` names (seconds or
    an HTTP date), else after an exponential backoff; a wait above `max_retry_after_s` gives the page up. The
    reply that is finally given up reaches the spider, which records it as `http_429` / `http_503`."""

    def __init__(self, live: LiveCrawl, crawler: Any) -> None:
        self.live = live
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler):  # noqa: ANN001, ANN206 (Scrapy's signature)
        return cls(LiveCrawl(**crawler.settings.getdict(LIVE_SETTING)), crawler)

    async def process_response(self, request: scrapy.Request, response: scrapy.http.Response):  # noqa: ANN201
        if response.status not in RETRY_LATER_STATUSES:
            return response
        tries = int(request.meta.get("polite_retries", 0))
        named = retry_after_seconds(response.headers.get(b"Retry-After"))
        wait = named if named is not None else min(max(self.live.delay_s, 1.0) * 2**tries, self.live.max_retry_after_s)
        if tries >= self.live.max_retries:
            request.meta["retry_note"] = f"gave up after {tries} retries"
            return response
        if wait > self.live.max_retry_after_s:
            request.meta["retry_note"] = f"Retry-After {wait:.0f} s is above max_retry_after_s"
            return response
        spider = self.crawler.spider
        if isinstance(spider, SiteSpider):
            spider.counts["retries"] += 1
        await asyncio.sleep(wait)
        retry = request.copy()
        retry.meta["polite_retries"] = tries + 1
        retry.dont_filter = True
        return retry


def retry_after_seconds(value: bytes | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _sitemap_entries(body: bytes, max_bytes: int) -> tuple[list[str], bool]:
    """The `<loc>`s of a sitemap (gzipped or not), and whether it is a sitemap index."""
    if body[:2] == b"\x1f\x8b":  # a .xml.gz served as a file, not as Content-Encoding
        body = gunzip(body, max_size=max_bytes)
    try:
        sitemap = Sitemap(body)
    except StopIteration:
        raise ValueError("the sitemap is empty") from None
    return [str(entry.get("loc", "")).strip() for entry in sitemap], sitemap.type == "sitemapindex"


def _header(response: scrapy.http.Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value else None


def _read_previous(path: str | None) -> dict[str, dict[str, Any]]:
    if not path:
        return {}
    records = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line:
            record = json.loads(line)
            records[record.pop("url")] = record
    return records


def spider_settings(limits: CrawlLimits, live: LiveCrawl | None) -> dict[str, Any]:
    """Scrapy settings of one crawl: the local path's, or the live path's politeness and limits."""
    settings: dict[str, Any] = {
        "ROBOTSTXT_OBEY": False,
        "TELNETCONSOLE_ENABLED": False,
        "REMOTE_CONTROL_ENABLED": False,
        "COOKIES_ENABLED": False,  # nothing a site sets is stored or sent back
        "LOG_LEVEL": "WARNING",
        # The callbacks yield no items (parse_page nothing, parse_sitemap a few requests): Scrapy would otherwise start
        # 100 output tasks for every response.
        "CONCURRENT_ITEMS": 1,
        "CONCURRENT_REQUESTS": limits.concurrency,
        "CONCURRENT_REQUESTS_PER_DOMAIN": limits.concurrency,
        "DOWNLOAD_DELAY": 0,
        "DOWNLOAD_TIMEOUT": limits.timeout_s,
        "DOWNLOAD_MAXSIZE": limits.max_bytes,
        "DOWNLOAD_WARNSIZE": 0,
        "RETRY_TIMES": 1,
        "REDIRECT_MAX_TIMES": 5,
        "USER_AGENT": f"{CRAWLER_NAME}/0.1 (+offline research crawler)",
        "AUTOTHROTTLE_ENABLED": False,
        "HTTPCACHE_ENABLED": False,
    }
    if live is None:
        return settings
    return {
        **settings,
        LIVE_SETTING: {key: list(value) if isinstance(value, tuple) else value for key, value in live.__dict__.items()},
        "USER_AGENT": live.user_agent,
        "ROBOTSTXT_OBEY": live.obey_robots_txt,
        "ROBOTSTXT_USER_AGENT": CRAWLER_NAME,
        "AUTOTHROTTLE_ENABLED": live.autothrottle,
        "AUTOTHROTTLE_START_DELAY": max(live.start_delay_s, live.delay_s),
        "AUTOTHROTTLE_MAX_DELAY": max(live.max_delay_s, live.delay_s),
        "AUTOTHROTTLE_TARGET_CONCURRENCY": live.target_concurrency,
        "DOWNLOAD_DELAY": live.delay_s,
        "DOWNLOAD_DELAY_JITTER": 0,  # the delay is a floor, not an average
        "CONCURRENT_REQUESTS_PER_DOMAIN": live.concurrency_per_domain,
        "HTTPPROXY_ENABLED": False,  # straight to the site: no environment proxy
        "RETRY_HTTP_CODES": [500, 502, 504, 522, 524, 408],  # 429 and 503 wait for Retry-After instead
        "DOWNLOADER_MIDDLEWARES": {
            f"{__name__}.LiveGuardMiddleware": 40,  # before robots.txt (100): refused hosts get no request at all
            f"{__name__}.RetryAfterMiddleware": 560,  # sees replies before Scrapy's RetryMiddleware (550)
        },
    }


def run_spider(plan: dict[str, Any], out_dir: Path) -> None:
    """Run the spider in this process (the subprocess side of `crawl.crawl_site`)."""
    from scrapy.crawler import CrawlerProcess

    limits = CrawlLimits(**plan["limits"])
    live = LiveCrawl(**plan["live"]) if plan.get("live") else None
    process = CrawlerProcess(settings=spider_settings(limits, live))
    process.crawl(SiteSpider, plan=plan, out_dir=str(out_dir))
    process.start()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Crawl one site breadth-first into JSON lines.")
    parser.add_argument("--plan", required=True, type=Path, help="the crawl plan crawl_site wrote (JSON)")
    parser.add_argument("--out", required=True, type=Path, help="folder for pages/links/skips JSONL and stats")
    args = parser.parse_args(argv)
    run_spider(json.loads(args.plan.read_text()), args.out)
    if not (args.out / STATS_FILE).exists():
        sys.exit("the spider closed without writing its stats")


if __name__ == "__main__":
    main()
