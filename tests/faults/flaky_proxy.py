"""A real HTTP proxy on 127.0.0.1 that loses a fifth of the requests to the server behind it and delays the rest.

Request n (counted from 1, POSTs only) fails when n is a multiple of 5: alternately the connection is closed without
an answer (n = 5, 15, ...) and an HTTP 503 comes back (n = 10, 20, ...); every other request is forwarded after a
delay of `delay_s` times n mod 5. The pattern is fixed rather than random so a run sees the same faults on a loaded
machine as on an idle one, and no request fails twice in a row when one client sends them one at a time.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAIL_EVERY = 5
# Set per connection, or by this server itself.
NOT_RELAYED = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away after a dropped request is what this server is for


class FlakyProxy:
    """Forward to `upstream` (scheme://host:port) with faults; `base_url` keeps the upstream's path, e.g. /v1."""

    def __init__(self, upstream_base_url: str, *, delay_s: float = 0.02) -> None:
        parsed = urllib.parse.urlsplit(upstream_base_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.path = parsed.path
        self.delay_s = delay_s
        self.seen = 0
        self.dropped = 0
        self.unavailable = 0
        self.delayed = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.path}"

    @property
    def failed(self) -> int:
        """Requests that got no answer from upstream: dropped connections and 503s."""
        return self.dropped + self.unavailable

    def reset(self) -> None:
        with self._lock:
            self.seen = self.dropped = self.unavailable = self.delayed = self.forwarded = 0

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _fate(self) -> tuple[str, float]:
        with self._lock:
            self.seen += 1
            n = self.seen
            if n % (2 * FAIL_EVERY) == FAIL_EVERY:
                self.dropped += 1
                return "drop", 0.0
            if n % FAIL_EVERY == 0:
                self.unavailable += 1
                return "503", 0.0
            delay = self.delay_s * (n % FAIL_EVERY)
            self.delayed += 1
            return "forward", delay

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, list, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=300)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in NOT_RELAYED]
            with self._lock:
                self.forwarded += 1
            return response.status, kept, data
        finally:
            connection.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _relay(self, fate: str, delay: float) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fate == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fate == "503":
                    self._send(503, [("Content-Type", "application/json")], b'{"error": {"message": "overloaded"}}')
                    return
                time.sleep(delay)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in NOT_RELAYED}
                self._send(*proxy._forward(self.command, self.path, headers, body))

            def _send(self, status: int, headers: list, data: bytes) -> None:
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._relay(*proxy._fate())

            def do_GET(self) -> None:
                self._relay("forward", 0.0)

        return Handler
