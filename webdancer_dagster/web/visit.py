"""Fetching a page for the agent's ``visit`` tool, like a careful browser: allow-listed hosts, bounded size."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from webdancer_dagster.web.errors import FetchError
from webdancer_dagster.web.extract import decode_html, extract_page

logger = logging.getLogger(__name__)

READABLE_CONTENT_TYPES = frozenset({"text/html", "text/plain", "application/xhtml+xml"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "webdancer-agent/0.1 (+offline research crawler)"


@dataclass(frozen=True)
class FetchPolicy:
    allowed_hosts: frozenset[str] | None = None  # None = any host
    proxy_url: str | None = None  # the local web's site proxy: it serves plain http, so https URLs reach it as http
    timeout_s: float = 15.0
    max_bytes: int = 2_000_000
    max_redirects: int = 5
    max_chars: int = 20_000


@dataclass
class FetchedPage:
    url: str
    final_url: str
    status: int
    content_type: str
    title: str
    text: str
    truncated: bool


def check_url(url: str, policy: FetchPolicy) -> None:
    """Raise FetchError unless ``url`` is an http(s) URL on an allowed host."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError as error:
        raise FetchError(url, "invalid_url", str(error)) from error
    if parts.scheme not in ("http", "https"):
        raise FetchError(url, "unsupported_scheme", f"only http and https URLs can be visited, not {parts.scheme!r}")
    if not host:
        raise FetchError(url, "invalid_url", "the URL has no host")
    if policy.allowed_hosts is not None and host not in policy.allowed_hosts:
        raise FetchError(url, "host_not_allowed", f"{host} is not one of the sites this agent may visit")


def make_client(policy: FetchPolicy) -> httpx.Client:
    """A client for ``fetch_page``: the policy's proxy and timeout; redirects are followed by hand."""
    return httpx.Client(
        proxy=policy.proxy_url,
        trust_env=policy.proxy_url is None,
        timeout=policy.timeout_s,
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT, "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9"},
    )


def fetch_page(url: str, policy: FetchPolicy, client: httpx.Client | None = None) -> FetchedPage:
    """Fetch ``url`` and extract its text; every refusal or failure is a FetchError with a reason slug."""
    if client is None:
        with make_client(policy) as own_client:
            return _fetch(url, policy, own_client)
    return _fetch(url, policy, client)


def _fetch(url: str, policy: FetchPolicy, client: httpx.Client) -> FetchedPage:
    current = url
    visited: set[str] = set()
    for _hop in range(policy.max_redirects + 1):
        check_url(current, policy)
        visited.add(current)
        request_url = _plain_http(current) if policy.proxy_url else current
        try:
            with client.stream("GET", request_url, follow_redirects=False, timeout=policy.timeout_s) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(current, "http_error", f"HTTP {response.status_code} without Location")
                    following = urljoin(current, location)
                    if following in visited:
                        raise FetchError(url, "redirect_loop", f"{following} redirects back to itself")
                    current = following
                    continue
                return _read(url, current, response, policy)
        except httpx.TimeoutException as error:
            raise FetchError(current, "timeout", f"no complete answer within {policy.timeout_s:g}s") from error
        except httpx.HTTPError as error:
            raise FetchError(current, "connect_error", f"{type(error).__name__}: {error}") from error
    raise FetchError(url, "too_many_redirects", f"more than {policy.max_redirects} redirects")


def _plain_http(url: str) -> str:
    """The local sites have no TLS: a model that writes https:// for one of them means the page at http://."""
    parts = urlsplit(url)
    return parts._replace(scheme="http").geturl() if parts.scheme == "https" else url


def _read(url: str, final_url: str, response: httpx.Response, policy: FetchPolicy) -> FetchedPage:
    if response.status_code >= 400:
        raise FetchError(final_url, "http_error", f"HTTP {response.status_code}")
    content_type = response.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in READABLE_CONTENT_TYPES:
        raise FetchError(final_url, "non_html", f"content type {media_type or 'missing'} is not a readable page")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(final_url, "too_large", f"{int(declared)} bytes is over the {policy.max_bytes} byte limit")
    body = bytearray()
    for chunk in response.iter_bytes():
        body.extend(chunk)
        if len(body) > policy.max_bytes:
            raise FetchError(final_url, "too_large", f"over the {policy.max_bytes} byte limit")
    if media_type == "text/plain":
        title, text = "", decode_html(bytes(body), response.charset_encoding)
    else:
        page = extract_page(bytes(body), final_url, encoding=response.charset_encoding)
        title, text = page.title, page.text
    truncated = len(text) > policy.max_chars
    if truncated:
        text = text[: policy.max_chars]
    return FetchedPage(
        url=url,
        final_url=final_url,
        status=response.status_code,
        content_type=media_type,
        title=title,
        text=text,
        truncated=truncated,
    )
