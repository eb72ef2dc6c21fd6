"""Fetching a page for the agent's ``visit`` tool, like a careful browser: allow-listed hosts, bounded size and time.

A direct fetch (no site proxy) may only reach public addresses: a model-written URL or a redirect must not make
the agent read this machine's services, the private network or the cloud metadata endpoint, and feed what it read
to the summarizer and the cache. The host is resolved and every address vetted before each hop, and again when the
connection is opened, which then goes to a vetted address (a name that re-resolves to 127.0.0.1 between the two,
DNS rebinding, gets nothing). TLS still checks the certificate against the host name.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from webdancer_dagster.web.addresses import is_public_address
from webdancer_dagster.web.errors import FetchError
from webdancer_dagster.web.extract import decode_html, extract_page

logger = logging.getLogger(__name__)

READABLE_CONTENT_TYPES = frozenset({"text/html", "text/plain", "application/xhtml+xml"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "webdancer-agent/0.1 (+offline research crawler)"


@dataclass(frozen=True)
class FetchPolicy:
    """What ``fetch_page`` may fetch, and for how long.

    Without ``proxy_url`` pages are fetched directly and must resolve to public addresses only, except for the hosts
    named in ``private_network_hosts`` (an operator's own service; the tests' server on 127.0.0.1). Through
    ``proxy_url`` (the local site proxy on 127.0.0.1) the allow-list is the protection and addresses are not vetted;
    ``direct_hosts`` (declared live sites) bypass the proxy and are fetched directly, vetted like any direct fetch.
    ``timeout_s`` bounds each wait for the network; ``deadline_s`` bounds the whole fetch, every redirect and the body,
    so a server that drips a byte a second is cut off too.
    """

    allowed_hosts: frozenset[str] | None = None  # None = any host
    proxy_url: str | None = None  # the local web's site proxy: it serves plain http, so https URLs reach it as http
    direct_hosts: frozenset[str] = frozenset()  # fetched straight from the site even when there is a proxy
    timeout_s: float = 15.0
    deadline_s: float = 30.0
    max_bytes: int = 2_000_000
    max_redirects: int = 5
    max_chars: int = 20_000
    private_network_hosts: frozenset[str] = frozenset()


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


def resolve_public(url: str, host: str, port: int | None, policy: FetchPolicy) -> list[str]:
    """The addresses ``host`` resolves to, or FetchError if it cannot be resolved or any of them is not public.

    Every address must be public, not just one: the connection may use any of them. Numeric spellings such as
    ``2130706433`` or ``0x7f.1`` resolve to 127.0.0.1 here, as they would when connecting.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise FetchError(url, "connect_error", f"cannot resolve {host}: {error}") from error
    addresses = list(dict.fromkeys(str(info[4][0]) for info in found))
    if host.lower() not in policy.private_network_hosts:
        for address in addresses:
            if not is_public_address(ipaddress.ip_address(address)):
                raise FetchError(url, "private_address", f"{host} is at {address}, which is not a public address")
    return addresses


_deadline: ContextVar[float | None] = ContextVar("visit_deadline", default=None)


def _until_deadline(timeout: float | None) -> float | None:
    """``timeout`` cut to the time left before the current fetch's deadline; a timeout error once it has passed."""
    deadline = _deadline.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.TimeoutException("the fetch deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write also waits no longer than the fetch's deadline, headers included."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _until_deadline(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _until_deadline(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, _until_deadline(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _PublicOnlyBackend(httpcore.SyncBackend):
    """Opens each connection to an address vetted at that moment, so the name cannot re-resolve after the check."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = resolve_public(host, host, port, self.policy)
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            try:
                stream = super().connect_tcp(address, port, _until_deadline(timeout), local_address, socket_options)
            except httpcore.ConnectError as error:
                failure = error
            else:
                return _DeadlineStream(stream)
        raise failure or httpcore.ConnectError(f"no address for {host}")


class _PublicOnlyTransport(httpx.HTTPTransport):
    """httpx's transport over a pool that connects through ``_PublicOnlyBackend`` (httpx has no public hook)."""

    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_PublicOnlyBackend(policy),
        )


def make_client(policy: FetchPolicy) -> httpx.Client:
    """A client for ``fetch_page``: the policy's proxy and timeout; redirects are followed by hand.

    Without a site proxy, connections go through ``_PublicOnlyTransport``: vetted addresses and the fetch deadline.
    A proxy from the environment (``HTTPS_PROXY``) still applies to live fetches; then only the check before each hop
    vets the address, and the proxy connects by name. With a site proxy, only the ``direct_hosts`` are mounted on
    ``_PublicOnlyTransport``.
    """
    direct = {f"all://{host}": _PublicOnlyTransport(policy) for host in sorted(policy.direct_hosts)}
    return httpx.Client(
        proxy=policy.proxy_url,
        transport=_PublicOnlyTransport(policy) if policy.proxy_url is None else None,
        mounts=direct if policy.proxy_url is not None else None,
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
    deadline = time.monotonic() + policy.deadline_s
    token = _deadline.set(deadline)
    try:
        return _follow(url, policy, client, deadline)
    finally:
        _deadline.reset(token)


def _follow(url: str, policy: FetchPolicy, client: httpx.Client, deadline: float) -> FetchedPage:
    current = url
    visited: set[str] = set()
    for _hop in range(policy.max_redirects + 1):
        check_url(current, policy)
        proxied = _through_proxy(current, policy)
        if not proxied:
            _check_address(current, policy)
        visited.add(current)
        request_url = _plain_http(current) if proxied else current
        # Clients not from make_client cannot cut a wait short at the deadline: each wait is at most the time left.
        timeout = min(policy.timeout_s, deadline - time.monotonic())
        try:
            if timeout <= 0:
                raise httpx.TimeoutException("the fetch deadline has passed")
            with client.stream("GET", request_url, follow_redirects=False, timeout=timeout) as response:
                if response.status_code in _REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(current, "http_error", f"HTTP {response.status_code} without Location")
                    following = urljoin(current, location)
                    if following in visited:
                        raise FetchError(url, "redirect_loop", f"{following} redirects back to itself")
                    current = following
                    continue
                return _read(url, current, response, policy, deadline)
        except httpx.TimeoutException as error:
            raise _timeout(current, policy, deadline) from error
        except httpx.HTTPError as error:
            raise FetchError(current, "connect_error", f"{type(error).__name__}: {error}") from error
    raise FetchError(url, "too_many_redirects", f"more than {policy.max_redirects} redirects")


def _through_proxy(url: str, policy: FetchPolicy) -> bool:
    """Whether ``url`` goes through the site proxy: every host but the direct ones, when there is a proxy."""
    return policy.proxy_url is not None and (urlsplit(url).hostname or "").lower() not in policy.direct_hosts


def _check_address(url: str, policy: FetchPolicy) -> None:
    """Refuse a direct fetch of a host that is not on public addresses, before any request is sent."""
    try:
        host = httpx.URL(url).raw_host.decode("ascii")  # the name the connection will use: IDNA, no brackets
    except httpx.InvalidURL as error:
        raise FetchError(url, "invalid_url", str(error)) from error
    resolve_public(url, host, None, policy)


def _timeout(url: str, policy: FetchPolicy, deadline: float) -> FetchError:
    if time.monotonic() >= deadline:
        return FetchError(url, "timeout", f"no complete answer within the {policy.deadline_s:g}s deadline")
    return FetchError(url, "timeout", f"no answer within {policy.timeout_s:g}s")


def _plain_http(url: str) -> str:
    """The local sites have no TLS: a model that writes https:// for one of them means the page at http://."""
    parts = urlsplit(url)
    return parts._replace(scheme="http").geturl() if parts.scheme == "https" else url


def _read(url: str, final_url: str, response: httpx.Response, policy: FetchPolicy, deadline: float) -> FetchedPage:
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
        if time.monotonic() >= deadline:
            raise _timeout(final_url, policy, deadline)
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
