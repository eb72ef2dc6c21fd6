"""A plain HTTP server on 127.0.0.1 standing in for a live website, with a log of every request it received."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


@dataclass
class Hit:
    at: float  # time.monotonic() when the request arrived
    path: str
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0


Route = Callable[["LiveSite", BaseHTTPRequestHandler], tuple[int, dict[str, str], bytes]]


@dataclass
class LiveSite:
    """Serves `pages` (path -> HTML) with an ETag each (If-None-Match -> 304), `robots` at /robots.txt, and
    `routes` (path -> function returning status, headers, body) for anything special."""

    pages: dict[str, str] = field(default_factory=dict)
    robots: str | None = None
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[Hit] = field(default_factory=list)

    def __post_init__(self) -> None:
        site = self
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # noqa: ANN002
                pass

            def do_GET(self):  # noqa: N802
                hit = Hit(time.monotonic(), urlsplit(self.path).path, {k.lower(): v for k, v in self.headers.items()})
                with site._lock:
                    site.log.append(hit)
                status, headers, body = site.answer(self)
                hit.status, hit.body_bytes = status, len(body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def answer(self, handler: BaseHTTPRequestHandler) -> tuple[int, dict[str, str], bytes]:
        path = urlsplit(handler.path).path
        if path in self.routes:
            return self.routes[path](self, handler)
        if path == "/robots.txt" and self.robots is not None:
            return 200, {"Content-Type": "text/plain"}, self.robots.encode()
        if path in self.pages:
            body = self.pages[path].encode()
            etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
            if handler.headers.get("If-None-Match") == etag:
                return 304, {"ETag": etag}, b""
            headers = {"Content-Type": "text/html; charset=utf-8", "ETag": etag, "Set-Cookie": "session=abc; Path=/"}
            return 200, headers, body
        return 404, {"Content-Type": "text/plain"}, b"not found"

    def hits(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.log if hit.path == path]

    def paths(self) -> list[str]:
        with self._lock:
            return [hit.path for hit in self.log]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> LiveSite:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def page(title: str, links: list[str] = (), body: str = "") -> str:
    anchors = " ".join(f'<a href="{href}">{href}</a>' for href in links)
    text = body or f"{title} is a page of the test site, long enough to count as the main text of the page."
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p>{anchors}</body></html>"
