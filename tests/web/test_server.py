"""The site server: virtual hosts, proxy-style requests, path safety, clean start and stop."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from webdancer_dagster.web.server import SiteServer, _parse_site, _SiteHTTPServer

ALPHA = "alpha.webdancer.test"
BETA = "beta.webdancer.test"


def make_sites(tmp_path):
    alpha = tmp_path / "alpha"
    (alpha / "docs").mkdir(parents=True)
    (alpha / "index.html").write_text("<html><body>alpha home</body></html>")
    (alpha / "docs" / "index.html").write_text("<html><body>alpha docs</body></html>")
    (alpha / "docs" / "page.html").write_text("<html><body>alpha page é</body></html>", encoding="utf-8")
    (alpha / "notes.txt").write_text("plain notes")
    (alpha / "archive.tar.gz").write_bytes(b"\x1f\x8b\x08\x00binary")
    (alpha / "blob.unknownext").write_bytes(b"\x00\x01")
    beta = tmp_path / "beta"
    beta.mkdir()
    (beta / "index.html").write_text("<html><body>beta home</body></html>")
    # A file outside both document roots that traversal attempts aim at.
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return {ALPHA: alpha, BETA: beta}


@pytest.fixture
def site_dirs(tmp_path):
    return make_sites(tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the read-only tests: stopping one waits up to its 0.2 s poll interval."""
    with SiteServer(make_sites(tmp_path_factory.mktemp("sites"))) as running:
        yield running


def raw_get(server, path, host=ALPHA, method="GET"):
    """Send ``path`` verbatim in the request line (httpx would normalise ``..`` away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_each_virtual_host_serves_its_own_root(server):
    status, headers, body = raw_get(server, "/", host=ALPHA)
    assert status == 200 and b"alpha home" in body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Length"] == str(len(body))
    status, _, body = raw_get(server, "/", host=f"{BETA}:{server.port}")
    assert status == 200 and b"beta home" in body


def test_host_header_is_case_insensitive_and_query_is_ignored(server):
    status, _, body = raw_get(server, "/docs/page.html?q=1#frag", host="ALPHA.WebDancer.Test")
    assert status == 200 and "alpha page é" in body.decode("utf-8")


def test_works_as_an_http_proxy(server):
    with httpx.Client(proxy=server.proxy_url, trust_env=False, timeout=5) as client:
        alpha = client.get(f"http://{ALPHA}/docs/page.html")
        beta = client.get(f"http://{BETA}/")
    assert alpha.status_code == 200 and "alpha page é" in alpha.text
    assert beta.status_code == 200 and "beta home" in beta.text
    assert server.proxy_url == f"http://127.0.0.1:{server.port}"


def test_unknown_host_is_404_naming_the_hosted_sites(server):
    status, _, body = raw_get(server, "/", host="evil.example")
    assert status == 404
    assert b"unknown site host 'evil.example'" in body
    assert ALPHA.encode() in body and BETA.encode() in body


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/../secret.txt",
        "/docs/../../secret.txt",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/%2E%2E/secret.txt",
        "/..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/docs/page.html%00.txt",
        "/missing.html",
    ],
)
def test_path_traversal_and_missing_files_are_404(server, path):
    status, _, body = raw_get(server, path)
    assert status == 404
    assert b"SECRET" not in body and b"root:" not in body


def test_path_traversal_through_the_proxy_is_404(server):
    status, _, body = raw_get(server, f"http://{ALPHA}/../../etc/passwd")
    assert status == 404 and b"root:" not in body
    status, _, body = raw_get(server, f"http://{ALPHA}/%2e%2e/secret.txt")
    assert status == 404 and b"SECRET" not in body


def test_dot_segments_that_stay_inside_the_root_are_served(server):
    status, _, body = raw_get(server, "/./docs/./page.html")
    assert status == 200 and b"alpha page" in body


def test_directory_without_slash_redirects_and_with_slash_serves_index(server):
    status, headers, _ = raw_get(server, "/docs")
    assert status == 301 and headers["Location"] == "/docs/"
    status, headers, _ = raw_get(server, f"http://{ALPHA}/docs")
    assert status == 301 and headers["Location"] == f"http://{ALPHA}/docs/"
    status, _, body = raw_get(server, "/docs/")
    assert status == 200 and b"alpha docs" in body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/notes.txt", "text/plain; charset=utf-8"),
        ("/archive.tar.gz", "application/octet-stream"),
        ("/blob.unknownext", "application/octet-stream"),
        ("/docs/page.html", "text/html; charset=utf-8"),
    ],
)
def test_content_types(server, path, content_type):
    status, headers, _ = raw_get(server, path)
    assert status == 200 and headers["Content-Type"] == content_type


def test_head_sends_headers_without_a_body(server):
    status, headers, body = raw_get(server, "/docs/page.html", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["Content-Length"]) == len("<html><body>alpha page é</body></html>".encode())


def test_keep_alive_connection_serves_several_requests(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for path in ("/", "/docs/page.html", "/missing", "/"):
            connection.request("GET", path, headers={"Host": ALPHA})
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 404)
            assert not response.will_close
    finally:
        connection.close()


def test_concurrent_requests(server):
    expected = {(ALPHA, "/"): b"alpha home", (ALPHA, "/docs/page.html"): b"alpha page", (BETA, "/"): b"beta home"}
    requests = list(expected) * 20

    def fetch(request):
        host, path = request
        status, _, body = raw_get(server, path, host=host)
        return status, expected[request] in body

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(fetch, requests))
    assert results == [(200, True)] * len(requests)


def test_listen_backlog_absorbs_a_crawler_burst():
    # With socketserver's default backlog of 5, 16 simultaneous connects drop SYNs that are retried after 1 s.
    assert _SiteHTTPServer.request_queue_size >= 64


def test_stop_closes_idle_keep_alive_connections_and_frees_the_port(site_dirs):
    server = SiteServer(site_dirs).start()
    port = server.port
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    connection.request("GET", "/", headers={"Host": ALPHA})
    connection.getresponse().read()  # the connection now idles in a handler thread
    threads_before = threading.active_count()
    started = time.perf_counter()
    server.stop()
    # The handler's idle timeout is 30 s; stop() joins the handler threads, so waiting for it would take that long.
    assert time.perf_counter() - started < 20
    assert threading.active_count() < threads_before
    connection.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    server.stop()  # stopping twice is harmless
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port


def test_start_twice_and_port_before_start_are_errors(site_dirs):
    server = SiteServer(site_dirs)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    with server:
        with pytest.raises(RuntimeError, match="already running"):
            server.start()


def test_missing_document_root_is_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        SiteServer({ALPHA: tmp_path / "nowhere"})


def test_fixed_port_in_use_fails_clearly(server, site_dirs):
    second = SiteServer(site_dirs, port=server.port)
    with pytest.raises(OSError):
        second.start()
    with pytest.raises(RuntimeError, match="not running"):
        _ = second.port


@pytest.mark.parametrize("value", ["no-equals-sign", "=dir", "host="])
def test_cli_site_argument_must_be_host_equals_dir(value):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="HOST=DIRECTORY"):
        _parse_site(value)


def test_cli_serves_until_sigterm(site_dirs):
    alpha = site_dirs[ALPHA]
    process = subprocess.Popen(
        [sys.executable, "-m", "webdancer_dagster.web.server", "--site", f"{ALPHA}={alpha}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), process.stderr.read() if process.poll() is not None else url
        with httpx.Client(proxy=url, trust_env=False, timeout=5) as client:
            response = client.get(f"http://{ALPHA}/docs/page.html")
        assert response.status_code == 200 and "alpha page" in response.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
