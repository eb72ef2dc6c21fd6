"""One local HTTP server that hosts every site under its virtual host and doubles as their HTTP proxy.

Clients (Scrapy, httpx, wget) set ``proxy_url`` as their HTTP proxy and request stable URLs such as
``http://python-docs.webdancer.test/library/os.html``; the server answers proxy-style requests
(absolute URI in the request line) and direct ones (path plus ``Host`` header) alike.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import mimetypes
import os
import posixpath
import signal
import socket
import threading
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0
_COPY_CHUNK = 256 * 1024


class _SiteHTTPServer(ThreadingHTTPServer):
    """Tracks open connections so ``stop()`` can close idle keep-alive sockets and join every thread."""

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of 16 connections (Scrapy's default concurrency)
    # overflows it and the dropped SYNs are retried only after 1 s.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], sites: Mapping[str, Path]) -> None:
        self.sites = {host.lower(): Path(directory) for host, directory in sites.items()}
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _SiteRequestHandler)

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client: nothing left to wake up


class _SiteRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "webdancer-sites/1"
    server: _SiteHTTPServer
    # Idle keep-alive connections give up after this long, so no thread waits forever.
    timeout = 30

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms a response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._serve(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        if self.path.startswith(("http://", "https://")):
            parts = urlsplit(self.path)
            host = (parts.hostname or "").lower()
            raw_path = parts.path or "/"
            proxied = True
        else:
            host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip().lower()
            raw_path = self.path.split("?", 1)[0].split("#", 1)[0] or "/"
            proxied = False
        root = self.server.sites.get(host)
        if root is None:
            known = ", ".join(sorted(self.server.sites)) or "none"
            self._send_text(
                HTTPStatus.NOT_FOUND, f"unknown site host {host!r}; this server hosts: {known}\n", send_body
            )
            return
        relative = _safe_relative_path(unquote(raw_path))
        if relative is None:
            self._send_text(HTTPStatus.NOT_FOUND, f"not found: {raw_path}\n", send_body)
            return
        target = root / relative if relative else root
        if target.is_dir():
            if not raw_path.endswith("/"):
                location = raw_path + "/"
                if proxied:
                    location = f"http://{host}{location}"
                self._send_redirect(location, send_body)
                return
            target = target / "index.html"
        if not target.is_file():
            self._send_text(HTTPStatus.NOT_FOUND, f"not found: {raw_path}\n", send_body)
            return
        self._send_file(target, send_body)

    def _send_file(self, path: Path, send_body: bool) -> None:
        content_type = _content_type(path)
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if send_body:
                self.wfile.flush()
                self.connection.sendfile(handle)

    def _send_redirect(self, location: str, send_body: bool) -> None:
        body = f"moved to {location}\n".encode()
        self.send_response(HTTPStatus.MOVED_PERMANENTLY)
        self.send_header("Location", location)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _send_text(self, status: HTTPStatus, text: str, send_body: bool) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _safe_relative_path(url_path: str) -> str | None:
    """The file path below the site root, or None when the path tries to leave it."""
    if "\x00" in url_path or "\\" in url_path:
        return None
    segments = [s for s in url_path.split("/") if s not in ("", ".")]
    if any(s == ".." for s in segments):
        return None
    return posixpath.join(*segments) if segments else ""


def _content_type(path: Path) -> str:
    guessed, encoding = mimetypes.guess_type(path.name)
    if encoding is not None:
        return "application/octet-stream"
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/javascript", "application/json"):
        return f"{guessed}; charset=utf-8"
    return guessed


class SiteServer:
    """Serves ``sites`` (virtual host -> document root) on ``host:port`` (0 = a free port)."""

    def __init__(self, sites: Mapping[str, Path], host: str = "127.0.0.1", port: int = 0) -> None:
        for virtual_host, directory in sites.items():
            if not Path(directory).is_dir():
                raise FileNotFoundError(f"document root for {virtual_host} is not a directory: {directory}")
        self._sites = dict(sites)
        self._host = host
        self._port = port
        self._server: _SiteHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SiteServer is not running; call start() first")
        return self._server.server_address[1]

    @property
    def proxy_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def start(self) -> SiteServer:
        """Bind, serve in a background thread and check that a request through the server answers."""
        if self._server is not None:
            raise RuntimeError("SiteServer is already running")
        self._server = _SiteHTTPServer((self._host, self._port), self._sites)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="site-server", daemon=True
        )
        self._thread.start()
        try:
            self._health_check()
        except BaseException:
            self.stop()
            raise
        logger.info("site server on %s hosting %s", self.proxy_url, ", ".join(sorted(self._sites)))
        return self

    def _health_check(self) -> None:
        probe_host = next(iter(self._sites), "health-check.invalid")
        connection = http.client.HTTPConnection(self._host, self.port, timeout=HEALTH_TIMEOUT_S)
        try:
            connection.request("HEAD", f"http://{probe_host}/")
            status = connection.getresponse().status
        except OSError as error:
            raise RuntimeError(f"site server on {self.proxy_url} did not answer its health check: {error}") from error
        finally:
            connection.close()
        if status >= 500:
            raise RuntimeError(f"site server on {self.proxy_url} answered its health check with HTTP {status}")

    def stop(self) -> None:
        """Stop accepting, close open connections and join every server thread."""
        if self._server is None:
            return
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> SiteServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _parse_site(value: str) -> tuple[str, Path]:
    host, sep, directory = value.partition("=")
    if not sep or not host or not directory:
        raise argparse.ArgumentTypeError(f"expected HOST=DIRECTORY, got {value!r}")
    return host, Path(directory)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve sites until SIGINT or SIGTERM: ``python -m webdancer_dagster.web.server --site H=DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--site", action="append", type=_parse_site, required=True, help="virtual host and document root: HOST=DIR"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop_requested = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.set())
    with SiteServer(dict(args.site), host=args.host, port=args.port) as server:
        print(server.proxy_url, flush=True)
        stop_requested.wait()


if __name__ == "__main__":
    main()
