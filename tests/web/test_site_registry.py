"""The site registry: live sites declared in YAML, with errors that name the file, the line and the entry."""

import re

import pytest

from webdancer_dagster.web.site_registry import (
    DEFAULT_SITES_PATH,
    SITES_ENV,
    SiteRegistryError,
    load_site_registry,
    site_registry_path,
    valid_cron,
)

BUILTIN = ["python-docs", "wiki", "musique"]
HEAD = "contact_url: https://example.org/crawler\nsites:\n"


def write(tmp_path, text):
    path = tmp_path / "sites.yaml"
    path.write_text(text)
    return path


def test_declared_sites_get_defaults_and_their_own_settings(tmp_path):
    path = write(
        tmp_path,
        HEAD + "  - name: docs\n"
        "    root_urls: https://Docs.Example.org/guide/index.html\n"
        "    path_prefixes: [/guide/]\n"
        "    schedule: '15 4 * * 1'\n"
        "    benchmark: true\n"
        "    politeness: {delay_s: 3, concurrency_per_domain: 1}\n"
        "    sitemap_urls: [https://docs.example.org/sitemap.xml]\n"
        "  - {name: local-test, root_urls: ['http://127.0.0.1:8080/'], allow_private_network: true}\n",
    )
    registry = load_site_registry(path, BUILTIN)
    docs, local = registry.sites["docs"], registry.sites["local-test"]
    assert docs.root_urls == ("https://docs.example.org/guide/",)
    assert docs.allowed_hosts == ("docs.example.org",) and docs.path_prefixes == ("/guide/",)
    assert (docs.max_pages, docs.max_depth, docs.schedule, docs.benchmark) == (200, 3, "15 4 * * 1", True)
    crawl = docs.live_crawl()
    assert (crawl.delay_s, crawl.concurrency_per_domain, crawl.obey_robots_txt, crawl.autothrottle) == (
        3,
        1,
        True,
        True,
    )
    assert crawl.user_agent == "webdancer-crawler/0.1 (+https://example.org/crawler)"
    assert crawl.sitemap_urls == ("https://docs.example.org/sitemap.xml",) and local.sitemap_urls == ()
    assert not crawl.allow_private_network
    assert local.allowed_hosts == ("127.0.0.1:8080",) and local.schedule == "0 3 * * *"
    assert local.live_crawl().allow_private_network
    assert registry.source == path


def test_the_shipped_file_declares_nothing_and_its_example_loads_once_uncommented(tmp_path):
    assert load_site_registry(DEFAULT_SITES_PATH, BUILTIN).sites == {}
    text = DEFAULT_SITES_PATH.read_text()
    uncommented = re.sub(r"(?m)^#(  )", r"\1", text).replace("contact_url: null", "contact_url: mailto:me@example.org")
    registry = load_site_registry(write(tmp_path, uncommented.replace("sites: []", "sites:")), BUILTIN)
    assert "ehaweb" in registry.sites and registry.sites["ehaweb"].root_url == "https://ehaweb.org/"
    assert registry.sites["rheumatology-meeting"].path_prefixes == ("/annual-meeting",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "  - {name: Big Site, root_urls: 'https://a.org/'}\n", ":3: sites[0]: name 'Big Site' must be"),
        (HEAD + "  - {name: wiki, root_urls: 'https://a.org/'}\n", ":3: sites[0]: name 'wiki' is already taken"),
        (
            HEAD + "  - {name: a, root_urls: 'https://a.org/'}\n  - {name: a, root_urls: 'https://b.org/'}\n",
            ":4: sites[1]: name 'a' is already taken",
        ),
        (
            HEAD + "  - name: a\n    root_urls: ['ftp://a.org/']\n",
            ":4: sites[0].root_urls (a): root URL 'ftp://a.org/'",
        ),
        (HEAD + "  - name: a\n    root_urls: ['https://u:p@a.org/']\n", ":4: sites[0].root_urls (a): root URL "),
        (HEAD + "  - name: a\n    root_urls: []\n", ":4: sites[0].root_urls (a): List should have at least 1"),
        (HEAD + "  - {name: a}\n", ":3: sites[0].root_urls (a): Field required"),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    allowed_hosts: ['https://a.org/']\n",
            ":5: sites[0].allowed_hosts (a): allowed host 'https://a.org/' must be a host name",
        ),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/x/']\n    path_prefixes: ['/y/']\n",
            ":3: sites[0] (a): root URL https://a.org/x/ is outside allowed_hosts",
        ),
        (HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    path_prefixes: [y]\n", ":5: sites[0].path_prefix"),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    schedule: '61 * * * *'\n",
            ":5: sites[0].schedule (a): schedule '61 * * * *' is not a cron expression",
        ),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    politeness: {delay_s: -1}\n",
            ":5: sites[0].politeness.delay_s (a): Input should be greater than or equal to 0",
        ),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    politeness: {robots: false}\n",
            ":5: sites[0].politeness.robots (a): Extra inputs are not permitted",
        ),
        (HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    max_pages: 0\n", ":5: sites[0].max_pages (a)"),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    sitemap_urls: ['https://b.org/sitemap.xml']\n",
            ":3: sites[0] (a): sitemap URL https://b.org/sitemap.xml is not on allowed_hosts",
        ),
        (
            HEAD + "  - name: a\n    root_urls: ['https://a.org/']\n    sitemap_urls: ['file:///etc/passwd']\n",
            ":5: sites[0].sitemap_urls (a): sitemap URL 'file:///etc/passwd' must be an http:// or https:// URL",
        ),
        (HEAD + "  - name: a\n    root_url: 'https://a.org/'\n", ":4: sites[0].root_url (a): Extra inputs"),
        ("sites:\n  - {name: a, root_urls: 'https://a.org/'}\n", ":1: contact_url: a live crawl must say who runs it"),
        ("contact_url: nobody\nsites: []\n", ":1: contact_url: contact_url 'nobody' must be an http(s) URL"),
        ("sites: []\nsites: []\n", ":2: duplicate key sites (first on line 1)"),
        ("- name: a\n", ":1: expected a mapping with `contact_url:` and `sites:`, got list"),
        ("sites: [\n", ":2: not valid YAML"),
    ],
)
def test_registry_errors_name_the_file_line_and_entry(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(SiteRegistryError) as error:
        load_site_registry(path, BUILTIN)
    assert any(line.startswith(f"{path}{expected}") for line in str(error.value).splitlines()), str(error.value)


def test_the_registry_file_comes_from_the_environment_or_the_repository(tmp_path):
    assert site_registry_path({SITES_ENV: str(tmp_path / "mine.yaml")}) == tmp_path / "mine.yaml"
    assert site_registry_path({}) == DEFAULT_SITES_PATH
    assert load_site_registry(None).sites == {}
    with pytest.raises(SiteRegistryError, match="no such site registry file"):
        load_site_registry(tmp_path / "mine.yaml")


def test_cron_expressions():
    assert all(valid_cron(c) for c in ["0 3 * * *", "*/15 * * * *", "0 4 * * 1-5", "@daily", "0 0 1 1 MON"])
    assert not any(valid_cron(c) for c in ["0 3 * *", "61 * * * *", "0 24 * * *", "daily", "0 0 0 * *"])
