"""The live crawl path against plain HTTP servers on 127.0.0.1 declared as live sites (`allow_private_network`):
what the server's request log shows the crawler did and did not do."""

import gzip
from dataclasses import replace

import pytest
from live_site import LiveSite, page

from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.crawl import (
    CrawlLimits,
    LiveCrawl,
    canonical_url,
    crawl_site,
    page_outlinks,
    previous_validators,
)
from webdancer_dagster.web.crawl_store import store_crawl
from webdancer_dagster.web.errors import CrawlError

CONTACT = "https://example.org/who-crawls"
FAST = {"delay_s": 0.0, "start_delay_s": 0.0, "max_retry_after_s": 10.0, "concurrency_per_domain": 4}


def live(site: LiveSite, **overrides) -> LiveCrawl:
    settings = {"allow_private_network": True, "contact_url": CONTACT, **FAST, **overrides}
    return LiveCrawl(allowed_hosts=(f"127.0.0.1:{site.port}",), **settings)


def crawl(site, tmp_path, name="work", previous=None, limits=None, **overrides):
    return crawl_site(
        site.url,
        None,
        limits or CrawlLimits(timeout_s=5),
        tmp_path / name,
        live=live(site, **overrides),
        previous=previous,
    )


def reasons(result) -> dict[str, str]:
    return dict(zip(result.skipped["url"], result.skipped["reason"], strict=True))


def test_robots_txt_is_obeyed_offsite_redirects_are_skipped_and_no_cookie_goes_back(tmp_path):
    with LiveSite() as elsewhere, LiveSite() as site:
        elsewhere.pages["/landing.html"] = page("Elsewhere")
        site.robots = "User-agent: *\nDisallow: /private/\n"
        site.pages.update(
            {
                "/": page("Home", ["a.html", "private/secret.html", "away", "mailto:x@example.org", "ftp://h/f"]),
                "/a.html": page("A", ["/"]),
                "/private/secret.html": page("Secret"),
            }
        )
        site.routes["/away"] = lambda s, h: (302, {"Location": f"{elsewhere.url}landing.html"}, b"")
        result = crawl(site, tmp_path)

    assert set(result.pages["url"]) == {site.url, f"{site.url}a.html"}
    assert "/private/secret.html" not in site.paths()  # never requested
    assert site.paths()[0] == "/robots.txt"
    assert elsewhere.log == []  # the redirect was refused before it was followed
    skipped = reasons(result)
    assert skipped[f"{site.url}private/secret.html"] == "robots_txt"
    assert skipped[f"{site.url}away"] == "offsite_redirect"
    assert result.stats["skipped_by_reason"]["offsite_redirect"] == 1
    page_hits = [hit for hit in site.log if hit.path != "/robots.txt"]
    assert all(hit.headers["user-agent"] == f"webdancer-crawler/0.1 (+{CONTACT})" for hit in site.log)
    assert not any("cookie" in hit.headers for hit in page_hits)  # Set-Cookie was answered on every page
    assert not result.links["internal"].astype(bool).loc[result.links["dst_url"].str.startswith("mailto")].any()


def test_429_is_retried_after_its_retry_after(tmp_path):
    with LiveSite() as site:
        site.pages["/"] = page("Home", ["busy.html"])
        answers = iter([(429, {"Retry-After": "2", "Content-Type": "text/plain"}, b"slow down")])

        def busy(s, handler):
            return next(answers, (200, {"Content-Type": "text/html"}, page("Busy").encode()))

        site.routes["/busy.html"] = busy
        result = crawl(site, tmp_path)

    first, second = site.hits("/busy.html")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 2.0
    assert f"{site.url}busy.html" in set(result.pages["url"])
    assert result.stats["retries"] == 1


def test_a_retry_after_beyond_the_limit_and_endless_503s_become_skips(tmp_path):
    with LiveSite() as site:
        site.pages["/"] = page("Home", ["later.html", "down.html"])
        site.routes["/later.html"] = lambda s, h: (429, {"Retry-After": "3600"}, b"")
        site.routes["/down.html"] = lambda s, h: (503, {"Retry-After": "0"}, b"")
        result = crawl(site, tmp_path, max_retries=2)

    assert len(site.hits("/later.html")) == 1 and len(site.hits("/down.html")) == 3
    skips = result.skipped.set_index("url")
    assert skips.loc[f"{site.url}later.html", "reason"] == "http_429"
    assert "above max_retry_after_s" in skips.loc[f"{site.url}later.html", "detail"]
    assert skips.loc[f"{site.url}down.html", "detail"] == "gave up after 2 retries"


def test_the_per_domain_delay_holds_between_requests(tmp_path):
    with LiveSite() as site:
        site.pages["/"] = page("Home", [f"p{i}.html" for i in range(5)])
        site.pages.update({f"/p{i}.html": page(f"P{i}") for i in range(5)})
        crawl(site, tmp_path, delay_s=0.4, start_delay_s=0.4, concurrency_per_domain=4)

    times = [hit.at for hit in site.log]
    assert len(times) == 7  # robots.txt, the root, five pages
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # The server stamps a request when its handler thread runs: never early, but late on a busy machine, which
    # shortens the gap after it. The gaps' sum only has the first stamp's lateness in it; late_s allows for that.
    late_s = 0.1
    assert times[-1] - times[0] >= 6 * 0.4 - late_s, gaps  # without the delay the pages come at once, ~0 s apart
    assert min(gaps) >= 0.4 - late_s, gaps


def test_a_recrawl_gets_304s_downloads_no_body_and_records_pages_unchanged(tmp_path, isolated_home):
    store = WarehouseStore(isolated_home)
    with LiveSite() as site:
        site.pages.update({"/": page("Home", ["a.html", "b.html"]), "/a.html": page("A"), "/b.html": page("B")})
        first = crawl(site, tmp_path, "first")
        diff1, summary1, _ = store_crawl(store, "mysite", "c1", site.url, _now(), first)
        assert diff1.counts["new"] == 3 and first.pages["etag"].notna().all()
        site.log.clear()

        stored = store.read_table("pages", "site = ?", ["mysite"])
        links = store.read_table("links", "site = ?", ["mysite"])
        again = crawl(site, tmp_path, "again", previous=previous_validators(stored, links))
        diff2, summary2, _ = store_crawl(store, "mysite", "c2", site.url, _now(), again)
        page_hits = [hit for hit in site.log if hit.path != "/robots.txt"]
        assert sorted(hit.path for hit in page_hits) == ["/", "/a.html", "/b.html"]
        assert all(hit.headers.get("if-none-match") for hit in page_hits)
        assert {hit.status for hit in page_hits} == {304} and sum(hit.body_bytes for hit in page_hits) == 0
        assert again.stats["not_modified"] == 3 and again.stats["body_bytes"] == 0
        assert diff2.counts == {"new": 0, "changed": 0, "unchanged": 3, "removed": 0}
        assert summary2["data_version"] == summary1["data_version"] and summary2["not_modified"] == 3
        kept = store.read_table("pages", "site = ?", ["mysite"]).set_index("url")
        assert kept.loc[f"{site.url}a.html", "title"] == "A" and kept["not_modified"].all()

        # One page changes: only it is downloaded again, and it alone gets a new version.
        site.pages["/b.html"] = page("B", body="B was rewritten with entirely different words in this version.")
        site.log.clear()
        stored = store.read_table("pages", "site = ?", ["mysite"])
        links = store.read_table("links", "site = ?", ["mysite"])
        third = crawl(site, tmp_path, "third", previous=previous_validators(stored, links))
        diff3, summary3, _ = store_crawl(store, "mysite", "c3", site.url, _now(), third)
    statuses = {hit.path: hit.status for hit in site.log if hit.path != "/robots.txt"}
    assert statuses == {"/": 304, "/a.html": 304, "/b.html": 200}
    assert diff3.counts["changed"] == 1 and diff3.counts["unchanged"] == 2
    assert summary3["data_version"] != summary1["data_version"]


def test_a_live_site_on_a_private_address_is_refused_unless_allowed(tmp_path):
    with LiveSite() as site:
        site.pages["/"] = page("Home")
        with pytest.raises(CrawlError, match=r"stored no page .*private_address.*127\.0\.0\.1.*allow_private_network"):
            crawl(site, tmp_path, allow_private_network=False)
        assert site.log == []  # not even robots.txt
        assert len(crawl(site, tmp_path, "allowed").pages) == 1


def test_only_http_roots_on_allowed_hosts_and_paths_are_crawled(tmp_path):
    limits = CrawlLimits()
    rules = LiveCrawl(allowed_hosts=("example.org",), path_prefixes=("/docs/",))
    with pytest.raises(CrawlError, match="only http and https"):
        crawl_site("ftp://example.org/docs/", None, limits, tmp_path, live=rules)
    with pytest.raises(CrawlError, match="outside the allowed hosts"):
        crawl_site("https://example.org/blog/", None, limits, tmp_path, live=rules)
    with pytest.raises(ValueError, match="exactly one of proxy_url"):
        crawl_site("https://example.org/docs/", None, limits, tmp_path)
    assert rules.in_scope("https://example.org/docs/a") and rules.in_scope("http://example.org/docs/")
    assert not rules.in_scope("https://example.org:8443/docs/a") and not rules.in_scope("https://www.example.org/docs/")
    on_port = replace(rules, allowed_hosts=("127.0.0.1:8080",), path_prefixes=("/",))
    assert on_port.in_scope("http://127.0.0.1:8080/x") and not on_port.in_scope("http://127.0.0.1:8081/x")


def test_canonical_urls_lowercase_the_host_and_drop_default_ports_and_fragments():
    assert canonical_url("HTTP://Example.ORG:80/a/index.html#top") == "http://example.org/a/"
    assert canonical_url("https://example.org:443") == "https://example.org/"
    assert canonical_url("https://example.org:8443/A?b=1") == "https://example.org:8443/A?b=1"


def test_page_outlinks_are_canonical_each_once_in_first_seen_order_without_the_page_itself():
    hrefs = ["b.html#x", " ../c/index.html ", "#top", "", "b.html", "mailto:a@b.org", "HTTP://Other.ORG:80/d#y", "?q=1"]
    assert page_outlinks(hrefs, "http://example.org/a/page.html") == [
        "http://example.org/a/b.html",
        "http://example.org/c/",
        "http://other.org/d",
        "http://example.org/a/page.html?q=1",
    ]


def _now():
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _urlset(*locations: str) -> str:
    entries = "".join(f"<url><loc>{location}</loc></url>" for location in locations)
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{entries}</urlset>'


def test_sitemap_seeds_reach_unlinked_pages_in_scope_and_only_those(tmp_path):
    """A sitemap index names a plain and a gzipped sitemap; their in-scope pages are crawled although no page links
    to them, out-of-scope entries are counted and never requested, and a broken sitemap is a recorded skip."""
    with LiveSite() as site:
        site.pages.update(
            {
                "/docs/": page("Home", ["a.html"]),
                "/docs/a.html": page("A"),
                "/docs/orphan.html": page("Orphan"),
                "/docs/zipped.html": page("Zipped"),
                "/blog/post.html": page("Blog"),
            }
        )
        plain = _urlset(f"{site.url}docs/orphan.html", f"{site.url}blog/post.html", "http://elsewhere.test/docs/x.html")
        zipped = gzip.compress(_urlset(f"{site.url}docs/zipped.html", f"{site.url}docs/a.html").encode())
        index = (
            '<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            "<sitemap><loc>/plain.xml</loc></sitemap><sitemap><loc>/zipped.xml.gz</loc></sitemap>"
            "<sitemap><loc>http://elsewhere.test/sitemap.xml</loc></sitemap></sitemapindex>"
        )
        site.routes["/sitemap.xml"] = lambda s, h: (200, {"Content-Type": "application/xml"}, index.encode())
        site.routes["/plain.xml"] = lambda s, h: (200, {"Content-Type": "application/xml"}, plain.encode())
        site.routes["/zipped.xml.gz"] = lambda s, h: (200, {"Content-Type": "application/gzip"}, zipped)
        site.routes["/broken.xml"] = lambda s, h: (200, {"Content-Type": "application/xml"}, b"")
        result = crawl_site(
            f"{site.url}docs/",
            None,
            CrawlLimits(timeout_s=5),
            tmp_path / "work",
            live=live(
                site,
                path_prefixes=("/docs/",),
                sitemap_urls=(f"{site.url}sitemap.xml", f"{site.url}broken.xml"),
            ),
        )
        requested = site.paths()

    assert set(result.pages["url"]) == {
        f"{site.url}docs/{name}" for name in ("", "a.html", "orphan.html", "zipped.html")
    }
    assert "/blog/post.html" not in requested, "a sitemap entry outside the path prefixes was fetched"
    assert requested.count("/docs/a.html") == 1, "a page both linked and in a sitemap is fetched once"
    assert (result.stats["sitemaps"], result.stats["sitemap_pages"], result.stats["sitemap_out_of_scope"]) == (4, 3, 2)
    assert reasons(result)[f"{site.url}broken.xml"] == "bad_sitemap"


def test_no_sitemap_is_read_at_depth_zero(tmp_path):
    with LiveSite() as site:
        site.pages.update({"/": page("Home"), "/orphan.html": page("Orphan")})
        site.routes["/sitemap.xml"] = lambda s, h: (200, {}, _urlset(f"{site.url}orphan.html").encode())
        result = crawl(
            site, tmp_path, limits=CrawlLimits(timeout_s=5, max_depth=0), sitemap_urls=(f"{site.url}sitemap.xml",)
        )
        assert "/sitemap.xml" not in site.paths()
    assert list(result.pages["url"]) == [site.url]
