"""Fetching pages for the visit tool against a real, deliberately hostile HTTP server on 127.0.0.1."""

import functools
import gzip
import ipaddress
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from webdancer_dagster.web.errors import FetchError
from webdancer_dagster.web.server import SiteServer
from webdancer_dagster.web.visit import (
    USER_AGENT,
    FetchPolicy,
    check_url,
    fetch_page,
    is_public_address,
    make_client,
)

# The hostile server is on 127.0.0.1, which a live policy refuses: the tests name it as a private host they trust.
LOOPBACK = frozenset({"127.0.0.1"})
DRIP_BYTES = 200
HUGE_BYTES = 50 * 1024 * 1024
CHUNK = 64 * 1024
PAGE = (
    b"<html><head><title>Hostile test page</title></head><body><main>"
    b"<p>This page is the plain, friendly one among many hostile responses served by the fixture.</p>"
    b"</main></body></html>"
)


@functools.cache
def gzip_bomb():
    """About 40 KB on the wire that inflate to 8 MB, eight times the test policy's size cap."""
    return gzip.compress(b"<p>" + b"a" * (8 * 1024 * 1024), compresslevel=1)


class HostileHandler(BaseHTTPRequestHandler):
    server: "HostileServer"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):  # noqa: N802
        self.server.requests.append((self.path, self.headers))
        route = getattr(self, "route_" + urlsplit(self.path).path.strip("/").replace("/", "_").replace("-", "_"), None)
        if route is None:
            self.reply(404, b"no such route", "text/plain")
        else:
            route()

    def reply(self, status, body, content_type="text/html; charset=utf-8", headers=()):
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def redirect(self, location, status=302):
        self.reply(status, b"", "text/plain", headers=[("Location", location)])

    def route_page(self):
        self.reply(200, PAGE)

    def route_xhtml(self):
        self.reply(200, PAGE, "application/xhtml+xml")

    def route_plain(self):
        self.reply(200, "plain text body, naïve".encode(), "text/plain; charset=utf-8")

    def route_latin1(self):
        self.reply(
            200,
            "<title>Crème brûlée</title><p>Très bon.</p>".encode("latin-1"),
            "text/html; charset=ISO-8859-1",
        )

    def route_loop(self):
        self.redirect("/loop")

    def route_loop_a(self):
        self.redirect("/loop-b", 301)

    def route_loop_b(self):
        self.redirect(f"http://127.0.0.1:{self.server.server_address[1]}/loop-a", 307)

    def route_hop(self):
        self.redirect("/hop2", 303)

    def route_hop2(self):
        self.redirect("page", 308)

    def route_chain(self):
        # /chain?n=K redirects K more times before landing on /page.
        remaining = int(urlsplit(self.path).query.split("=")[1])
        self.redirect("/page" if remaining == 0 else f"/chain?n={remaining - 1}")

    def route_no_location(self):
        self.reply(302, b"", "text/plain")

    def route_to_file(self):
        self.redirect("file:///etc/passwd")

    def route_to_elsewhere(self):
        self.redirect("http://elsewhere.example/secret")

    def route_binary(self):
        self.reply(200, bytes(range(256)) * 64, "application/octet-stream")

    def route_image(self):
        self.reply(200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "image/png")

    def route_no_type(self):
        self.reply(200, PAGE, None)

    def route_binary_as_html(self):
        self.reply(200, bytes(range(256)) * 64)

    def route_bad_utf8(self):
        self.reply(200, b"<title>Bad \xff bytes</title><p>caf\xc3 au lait \x80\x81 ok</p>")

    def route_missing(self):
        self.reply(404, b"gone")

    def route_broken(self):
        self.reply(500, b"internal error")

    def route_long(self):
        self.reply(200, b"<title>Long</title><p>" + b"word " * 20_000 + b"</p>")

    def route_huge_declared(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        self.stream_huge()

    def route_huge(self):
        # No Content-Length: only counting bytes while reading can stop this one.
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Connection", "close")
        self.end_headers()
        self.stream_huge()

    def route_gzip_bomb(self):
        self.reply(200, gzip_bomb(), headers=[("Content-Encoding", "gzip")])

    def stream_huge(self):
        chunk = b"<p>" + b"x" * (CHUNK - 3)
        try:
            while self.server.huge_sent < HUGE_BYTES:
                self.wfile.write(chunk)
                self.server.huge_sent += len(chunk)
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True
        self.server.huge_ended += 1

    def route_slow(self):
        self.server.release.wait(timeout=10)
        self.reply(200, PAGE)

    def route_to_internal_admin(self):
        self.redirect(f"http://127.0.0.1:{self.server.server_address[1]}/internal-admin")

    def route_internal_admin(self):
        self.reply(200, b"<title>Internal admin</title><p>secret</p>")

    def route_drip_body(self):
        # Every read gets a byte within a second, so only a deadline on the whole fetch can stop it.
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(DRIP_BYTES))
        self.end_headers()
        self.drip(b"x" * DRIP_BYTES)

    def route_drip_headers(self):
        self.drip(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Padding: " + b"x" * DRIP_BYTES + b"\r\n\r\n")

    def drip(self, data):
        try:
            for index in range(len(data)):
                if self.server.stopped.wait(1.0):
                    break
                self.wfile.write(data[index : index + 1])
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True
        self.server.drips_ended += 1


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.requests = []
        self.huge_sent = 0
        self.huge_ended = 0
        self.release = threading.Event()
        self.stopped = threading.Event()  # ends every drip at teardown
        self.drips_ended = 0

    def url(self, path):
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


@pytest.fixture(autouse=True)
def no_proxy_from_environment(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def hostile():
    server = HostileServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.stopped.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def policy():
    return FetchPolicy(timeout_s=5.0, max_bytes=1_000_000, private_network_hosts=LOOPBACK)


def reason_of(url, policy, client=None):
    with pytest.raises(FetchError) as raised:
        fetch_page(url, policy, client)
    assert raised.value.reason in str(raised.value)
    return raised.value


def closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetches_title_and_text(hostile, policy):
    page = fetch_page(hostile.url("/page"), policy)
    assert page.status == 200 and page.content_type == "text/html"
    assert page.title == "Hostile test page"
    assert "plain, friendly one" in page.text
    assert page.url == page.final_url == hostile.url("/page")
    assert page.truncated is False
    path, headers = hostile.requests[-1]
    assert path == "/page" and headers["User-Agent"] == USER_AGENT


def test_xhtml_and_plain_text_are_readable(hostile, policy):
    assert fetch_page(hostile.url("/xhtml"), policy).title == "Hostile test page"
    plain = fetch_page(hostile.url("/plain"), policy)
    assert (plain.title, plain.text, plain.content_type) == ("", "plain text body, naïve", "text/plain")


def test_declared_charset_is_honoured(hostile, policy):
    page = fetch_page(hostile.url("/latin1"), policy)
    assert page.title == "Crème brûlée" and "Très bon." in page.text


def test_relative_redirects_are_followed_and_recorded(hostile, policy):
    page = fetch_page(hostile.url("/hop"), policy)
    assert page.url == hostile.url("/hop")
    assert page.final_url == hostile.url("/page")
    assert page.title == "Hostile test page"


def test_unreachable_url_is_connect_error(policy):
    error = reason_of(f"http://127.0.0.1:{closed_port()}/page", policy)
    assert error.reason == "connect_error"
    assert "ConnectError" in error.detail


@pytest.mark.parametrize(("path", "requested"), [("/loop", ["/loop"]), ("/loop-a", ["/loop-a", "/loop-b"])])
def test_redirect_loop(hostile, policy, path, requested):
    hostile.requests.clear()
    error = reason_of(hostile.url(path), policy)
    assert error.reason == "redirect_loop"
    assert error.url == hostile.url(path)
    assert [sent for sent, _ in hostile.requests] == requested  # seen on its first lap, not run to the redirect cap


def test_too_many_redirects(hostile, policy):
    assert fetch_page(hostile.url("/chain?n=4"), policy).final_url == hostile.url("/page")  # 5 redirects: allowed
    error = reason_of(hostile.url("/chain?n=5"), policy)
    assert error.reason == "too_many_redirects" and "more than 5 redirects" in error.detail
    strict = FetchPolicy(timeout_s=5.0, max_redirects=0, private_network_hosts=LOOPBACK)
    assert reason_of(hostile.url("/hop"), strict).reason == "too_many_redirects"


def test_redirect_without_location(hostile, policy):
    error = reason_of(hostile.url("/no-location"), policy)
    assert error.reason == "http_error" and "without Location" in error.detail


def test_redirects_are_checked_against_scheme_and_allow_list(hostile):
    hostile.requests.clear()
    policy = FetchPolicy(allowed_hosts=LOOPBACK, timeout_s=5.0, private_network_hosts=LOOPBACK)
    assert reason_of(hostile.url("/to-file"), policy).reason == "unsupported_scheme"
    error = reason_of(hostile.url("/to-elsewhere"), policy)
    assert error.reason == "host_not_allowed" and error.url == "http://elsewhere.example/secret"
    assert [path for path, _ in hostile.requests] == ["/to-file", "/to-elsewhere"]


@pytest.mark.parametrize("path", ["/binary", "/image", "/no-type"])
def test_non_html_responses_are_refused(hostile, policy, path):
    error = reason_of(hostile.url(path), policy)
    assert error.reason == "non_html"
    expected = {"/binary": "application/octet-stream", "/image": "image/png", "/no-type": "missing"}[path]
    assert f"content type {expected} " in error.detail


def test_binary_bytes_labelled_html_do_not_crash(hostile, policy):
    page = fetch_page(hostile.url("/binary-as-html"), policy)
    assert isinstance(page.text, str) and page.status == 200


def test_invalid_utf8_is_decoded_with_replacement(hostile, policy):
    page = fetch_page(hostile.url("/bad-utf8"), policy)
    assert page.title == "Bad \ufffd bytes"
    assert "caf\ufffd au lait \ufffd\ufffd ok" in page.text


@pytest.mark.parametrize(("path", "status"), [("/missing", 404), ("/broken", 500), ("/no-route", 404)])
def test_http_errors(hostile, policy, path, status):
    error = reason_of(hostile.url(path), policy)
    assert error.reason == "http_error" and error.detail == f"HTTP {status}"


def test_declared_50mb_page_is_refused_from_its_headers(hostile, policy):
    hostile.huge_sent, ended = 0, hostile.huge_ended
    error = reason_of(hostile.url("/huge-declared"), policy)
    assert error.reason == "too_large"
    assert str(HUGE_BYTES) in error.detail
    wait_for_huge_stream_to_end(hostile, ended + 1)
    assert hostile.huge_sent < HUGE_BYTES / 4  # the client hung up instead of reading the body


def test_streamed_50mb_page_stops_at_the_size_cap_without_reading_it_all(hostile, policy):
    hostile.huge_sent, ended = 0, hostile.huge_ended
    error = reason_of(hostile.url("/huge"), policy)
    assert error.reason == "too_large"
    assert "1000000 byte limit" in error.detail
    wait_for_huge_stream_to_end(hostile, ended + 1)
    assert hostile.huge_sent < HUGE_BYTES / 4  # the server sent nowhere near 50 MB before the client hung up


def wait_for_huge_stream_to_end(hostile, count):
    """The server's stream stops at its first write after the client hung up, or once all 50 MB are out."""
    deadline = time.monotonic() + 30
    while hostile.huge_ended < count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hostile.huge_ended >= count, "the client neither read the page nor hung up"


def test_decompression_bomb_stops_at_the_size_cap(hostile, policy):
    assert len(gzip_bomb()) < policy.max_bytes
    error = reason_of(hostile.url("/gzip-bomb"), policy)
    assert error.reason == "too_large"


def test_long_page_is_truncated(hostile):
    page = fetch_page(hostile.url("/long"), FetchPolicy(timeout_s=5.0, max_chars=1_000, private_network_hosts=LOOPBACK))
    assert page.truncated is True and len(page.text) == 1_000
    assert page.text.startswith("word word")


def test_slow_response_times_out(hostile):
    hostile.release.clear()
    hostile.requests.clear()
    started = time.perf_counter()
    error = reason_of(hostile.url("/slow"), FetchPolicy(timeout_s=0.3, private_network_hosts=LOOPBACK))
    assert error.reason == "timeout" and "0.3s" in error.detail
    assert [path for path, _ in hostile.requests] == ["/slow"]
    assert time.perf_counter() - started < 9  # it gave up at its timeout: the server answers after 10 s
    hostile.release.set()


def test_live_policy_refuses_a_loopback_url_before_sending_anything(hostile):
    hostile.requests.clear()
    error = reason_of(hostile.url("/internal-admin"), FetchPolicy(timeout_s=5.0))
    assert error.reason == "private_address" and "127.0.0.1" in error.detail
    assert hostile.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433:{port}/internal-admin",  # 127.0.0.1 as one number
        "http://0x7f.1:{port}/internal-admin",
        "http://0:{port}/internal-admin",  # 0.0.0.0 reaches this machine
        "http://[::ffff:127.0.0.1]:{port}/internal-admin",
        "https://localhost:{port}/internal-admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::1]/",
    ],
)
def test_live_policy_refuses_other_spellings_of_private_addresses(hostile, url):
    hostile.requests.clear()
    error = reason_of(url.format(port=hostile.server_address[1]), FetchPolicy(timeout_s=2.0))
    assert error.reason == "private_address"
    assert hostile.requests == []


def test_live_policy_refuses_a_redirect_to_a_loopback_url_at_that_hop(hostile):
    """The first hop is a host the policy trusts by name; the redirect's 127.0.0.1 is not, and gets no request."""
    hostile.requests.clear()
    port = hostile.server_address[1]
    policy = FetchPolicy(timeout_s=5.0, private_network_hosts=frozenset({"localhost"}))
    assert fetch_page(f"http://localhost:{port}/page", policy).title == "Hostile test page"
    error = reason_of(f"http://localhost:{port}/to-internal-admin", policy)
    assert error.reason == "private_address" and error.url == hostile.url("/internal-admin")
    assert [path for path, _ in hostile.requests] == ["/page", "/to-internal-admin"]


def test_the_connection_itself_only_goes_to_public_addresses(hostile):
    """make_client's transport vets the address it connects to, so a name that re-resolves after the check is caught."""
    hostile.requests.clear()
    with make_client(FetchPolicy(timeout_s=2.0)) as client, pytest.raises(FetchError) as raised:
        client.get(hostile.url("/internal-admin"))
    assert raised.value.reason == "private_address"
    assert hostile.requests == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("100.100.100.200", False),
        ("168.63.129.16", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("64:ff9b::7f00:1", False),
    ],
)
def test_is_public_address(address, public):
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_page_that_drips_a_byte_a_second_is_cut_off_at_the_deadline(hostile, path):
    ended = hostile.drips_ended
    started = time.perf_counter()
    error = reason_of(hostile.url(path), FetchPolicy(timeout_s=5.0, deadline_s=2.0, private_network_hosts=LOOPBACK))
    assert error.reason == "timeout" and "2s deadline" in error.detail
    assert time.perf_counter() - started < 60  # cut off: the whole drip takes 200 s
    wait_for_drips_to_end(hostile, ended + 1)


def test_the_deadline_holds_for_a_client_not_from_make_client(hostile):
    ended = hostile.drips_ended
    started = time.perf_counter()
    policy = FetchPolicy(timeout_s=5.0, deadline_s=2.0, private_network_hosts=LOOPBACK)
    with httpx.Client() as client:
        error = reason_of(hostile.url("/drip-body"), policy, client)
    assert error.reason == "timeout" and "2s deadline" in error.detail
    assert time.perf_counter() - started < 60  # cut off: the whole drip takes 200 s
    wait_for_drips_to_end(hostile, ended + 1)


def wait_for_drips_to_end(hostile, count):
    """The server's drip notices the hang-up on its next write, within a second or so."""
    deadline = time.monotonic() + 30
    while hostile.drips_ended < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hostile.drips_ended >= count


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "unsupported_scheme"),
        ("ftp://wiki.webdancer.test/file", "unsupported_scheme"),
        ("javascript:alert(1)", "unsupported_scheme"),
        ("data:text/html,<h1>x</h1>", "unsupported_scheme"),
        ("wiki.webdancer.test/page", "unsupported_scheme"),
        ("http:///no-host", "invalid_url"),
        ("http://[::1/broken", "invalid_url"),
        ("http://evil.example/", "host_not_allowed"),
        ("https://127.0.0.1.evil.example/", "host_not_allowed"),
    ],
)
def test_check_url_refuses(url, reason):
    policy = FetchPolicy(allowed_hosts=frozenset({"wiki.webdancer.test", "127.0.0.1"}))
    with pytest.raises(FetchError) as raised:
        check_url(url, policy)
    assert raised.value.reason == reason


def test_check_url_accepts_allowed_hosts_case_insensitively():
    policy = FetchPolicy(allowed_hosts=frozenset({"wiki.webdancer.test"}))
    check_url("http://WIKI.webdancer.test/wiki/X.html", policy)
    check_url("https://wiki.webdancer.test:8443/", policy)
    check_url("http://anything.example/", FetchPolicy())


def test_refused_urls_never_reach_the_network(hostile):
    hostile.requests.clear()
    policy = FetchPolicy(allowed_hosts=frozenset({"wiki.webdancer.test"}), timeout_s=5.0)
    assert reason_of(hostile.url("/page"), policy).reason == "host_not_allowed"
    assert reason_of("file:///etc/passwd", policy).reason == "unsupported_scheme"
    assert hostile.requests == []


def test_a_shared_client_is_reused(hostile, policy):
    with make_client(policy) as client:
        first = fetch_page(hostile.url("/page"), policy, client)
        second = fetch_page(hostile.url("/hop"), policy, client)
        assert not client.is_closed
    assert first.title == second.title == "Hostile test page"


@pytest.fixture
def site_server(tmp_path):
    root = tmp_path / "wiki"
    (root / "wiki").mkdir(parents=True)
    (root / "index.html").write_text("<html><head><title>Wiki home</title></head><body><p>Home.</p></body></html>")
    (root / "wiki" / "index.html").write_text("<html><head><title>Article list</title></head><body></body></html>")
    (root / "wiki" / "Marie_Curie.html").write_text(
        "<html><head><title>Marie Curie</title></head><body><p>Polish physicist and chemist.</p></body></html>"
    )
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    with SiteServer({"wiki.webdancer.test": root}) as server:
        yield server


def test_visits_a_virtual_host_through_the_site_server_proxy(site_server):
    policy = FetchPolicy(allowed_hosts=frozenset({"wiki.webdancer.test"}), proxy_url=site_server.proxy_url)
    page = fetch_page("http://wiki.webdancer.test/wiki/Marie_Curie.html", policy)
    assert page.title == "Marie Curie" and "Polish physicist" in page.text
    moved = fetch_page("http://wiki.webdancer.test/wiki", policy)
    assert moved.final_url == "http://wiki.webdancer.test/wiki/" and moved.title == "Article list"
    error = reason_of("http://wiki.webdancer.test/../secret.txt", policy)
    assert error.reason == "http_error" and error.detail == "HTTP 404"
    assert reason_of("http://other.webdancer.test/", policy).reason == "host_not_allowed"


def test_an_https_url_of_a_local_site_is_fetched_over_plain_http(site_server):
    """The proxy serves the local sites over http only (a CONNECT tunnel gets 501); models often write https."""
    policy = FetchPolicy(allowed_hosts=frozenset({"wiki.webdancer.test"}), proxy_url=site_server.proxy_url)
    page = fetch_page("https://wiki.webdancer.test/wiki/Marie_Curie.html", policy)
    assert page.title == "Marie Curie" and page.url == "https://wiki.webdancer.test/wiki/Marie_Curie.html"
    assert reason_of("https://other.webdancer.test/", policy).reason == "host_not_allowed"


def test_proxy_that_is_down_is_connect_error():
    policy = FetchPolicy(proxy_url=f"http://127.0.0.1:{closed_port()}", timeout_s=2.0)
    assert reason_of("http://wiki.webdancer.test/", policy).reason == "connect_error"


def test_make_client_uses_policy_proxy_and_no_auto_redirects():
    policy = FetchPolicy(proxy_url="http://127.0.0.1:9", timeout_s=3.0)
    with make_client(policy) as client:
        assert client.follow_redirects is False
        assert client.timeout == httpx.Timeout(3.0)
        assert client.headers["User-Agent"] == USER_AGENT


def test_a_live_sites_host_is_fetched_directly_beside_the_proxied_local_web(site_server, hostile):
    """A declared live site is not on the site proxy: its host goes straight to the site, vetted like any direct
    fetch, while the local sites still go through the proxy, in one client."""
    direct = FetchPolicy(
        allowed_hosts=frozenset({"wiki.webdancer.test", "127.0.0.1"}),
        proxy_url=site_server.proxy_url,
        direct_hosts=frozenset({"127.0.0.1"}),
        private_network_hosts=LOOPBACK,
    )
    with make_client(direct) as client:
        live = fetch_page(hostile.url("/page"), direct, client)
        local = fetch_page("http://wiki.webdancer.test/wiki/Marie_Curie.html", direct, client)
    assert live.title == "Hostile test page" and local.title == "Marie Curie"
    proxied = FetchPolicy(allowed_hosts=direct.allowed_hosts, proxy_url=site_server.proxy_url)
    assert reason_of(hostile.url("/page"), proxied).reason == "http_error", "the proxy serves no live site"
    unvetted = FetchPolicy(allowed_hosts=direct.allowed_hosts, proxy_url=site_server.proxy_url,
                           direct_hosts=frozenset({"127.0.0.1"}))  # fmt: skip
    assert reason_of(hostile.url("/page"), unvetted).reason == "private_address"
