"""The Scrapy crawler against real local servers: breadth-first budget, links, and every kind of bad page."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from webdancer_dagster.web.crawl import CrawlLimits, crawl_site
from webdancer_dagster.web.errors import CrawlError
from webdancer_dagster.web.server import SiteServer

HOST = "docs.webdancer.test"
ROOT = f"http://{HOST}/"


def page(title: str, body: str, links: list[str]) -> str:
    anchors = " ".join(f'<a href="{href}">{href}</a>' for href in links)
    return (
        f"<html><head><title>{title}</title></head><body><h1>{title}</h1>"
        f"<p>{body} This paragraph is long enough to count as the main text of the page.</p>{anchors}</body></html>"
    )


@pytest.fixture
def site(tmp_path):
    """root -> a, b, c (+ a 404, a binary file, an external link); a -> a1, a2; b -> b1; a1 -> deep."""
    root = tmp_path / "site"
    (root / "a").mkdir(parents=True)
    files = {
        "index.html": page(
            "Home",
            "The home page.",
            [
                "a/index.html",
                "b.html",
                "c.html",
                "missing.html",
                "blob",
                "https://example.org/elsewhere",
                "#top",
                "c.html#part",
            ],
        ),
        "a/index.html": page("A", "Section A.", ["a1.html", "a2.html", "../index.html"]),
        "a/a1.html": page("A1", "Page A1.", ["../deep.html"]),
        "a/a2.html": page("A2", "Page A2.", []),
        "b.html": page("B", "Section B.", ["b1.html"]),
        "b1.html": page("B1", "Page B1.", []),
        "c.html": page("C", "Section C.", []),
        "deep.html": page("Deep", "Three clicks away.", []),
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "blob").write_bytes(b"\x00\x01binary")
    with SiteServer({HOST: root}) as server:
        yield server


def crawl(server, tmp_path, **limits):
    return crawl_site(ROOT, server.proxy_url, CrawlLimits(**limits), tmp_path / "work")


def test_crawl_follows_sub_links_breadth_first_within_depth(site, tmp_path):
    result = crawl(site, tmp_path, max_depth=2)
    by_url = result.pages.set_index("url")
    assert set(by_url.index) == {
        ROOT, f"{ROOT}a/", f"{ROOT}b.html", f"{ROOT}c.html",
        f"{ROOT}a/a1.html", f"{ROOT}a/a2.html", f"{ROOT}b1.html",
    }  # fmt: skip
    assert by_url.loc[f"{ROOT}a/a1.html", "depth"] == 2
    assert by_url.loc[f"{ROOT}c.html", "title"] == "C"
    assert "Section C." in by_url.loc[f"{ROOT}c.html", "text"]
    assert by_url["content_hash"].str.len().eq(64).all()

    links = result.links
    assert {"src_url", "dst_url", "internal"} <= set(links.columns)
    external = links[~links["internal"].astype(bool)]
    assert external["dst_url"].tolist() == ["https://example.org/elsewhere"]
    assert not links.duplicated(["src_url", "dst_url"]).any()

    reasons = dict(zip(result.skipped["url"], result.skipped["reason"], strict=True))
    assert reasons == {f"{ROOT}missing.html": "http_404", f"{ROOT}blob": "non_html"}
    assert result.stats["skipped_by_reason"] == {"http_404": 1, "non_html": 1}
    assert result.stats["pages_per_s"] > 0


def test_page_budget_keeps_the_first_pages_in_breadth_first_order_every_time(site, tmp_path):
    first = crawl(site, tmp_path, max_pages=4, max_depth=5)
    again = crawl(site, tmp_path, max_pages=4, max_depth=5, concurrency=1)
    expected = {ROOT, f"{ROOT}a/", f"{ROOT}b.html", f"{ROOT}c.html"}
    assert set(first.pages["url"]) == set(again.pages["url"]) == expected
    assert first.stats["beyond_budget"] > 0


def test_site_with_no_page_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with SiteServer({HOST: empty}) as server, pytest.raises(CrawlError, match="stored no page.*http_404"):
        crawl(server, tmp_path)


def test_unreachable_root_is_a_clear_error(tmp_path):
    with SiteServer({HOST: tmp_path}) as server:
        dead_proxy = server.proxy_url
    with pytest.raises(CrawlError, match="stored no page.*connect_error"):
        crawl_site(ROOT, dead_proxy, CrawlLimits(), tmp_path / "work")


class HostileHandler(BaseHTTPRequestHandler):
    """A proxy-style server for evil.webdancer.test with pages that misbehave."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path = urlsplit(self.path).path
        if path == "/":
            self.reply(200, "text/html", page("Evil", "Links to bad pages.", ["/loop", "/huge", "/latin"]).encode())
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "http://evil.webdancer.test/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/huge":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            try:
                for _ in range(50):
                    self.wfile.write(b"<p>" + b"x" * (1024 * 1024 - 7) + b"</p>\n")
            except OSError:
                pass  # the crawler hung up, as it should
        elif path == "/latin":
            body = b"<html><head><title>Bad bytes</title></head><body><p>Caf\xe9 \xff\xfe invalid utf-8 "
            self.reply(
                200,
                "text/html; charset=utf-8",
                body + b"but still a page with enough text.</p></body></html>",
            )
        else:
            self.reply(404, "text/plain", b"no")

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_hostile_pages_become_recorded_skips_not_crashes(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostileHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = crawl_site(
            "http://evil.webdancer.test/",
            f"http://127.0.0.1:{server.server_address[1]}",
            CrawlLimits(max_bytes=5_000_000, timeout_s=5),
            tmp_path / "work",
        )
    finally:
        server.shutdown()
        server.server_close()
    reasons = dict(zip(result.skipped["url"], result.skipped["reason"], strict=True))
    assert reasons["http://evil.webdancer.test/loop"] == "redirect_loop"
    assert reasons["http://evil.webdancer.test/huge"] == "too_large"
    latin = result.pages.set_index("url").loc["http://evil.webdancer.test/latin"]
    assert latin["title"] == "Bad bytes" and "\ufffd" in latin["text"] and "still a page" in latin["text"]
