"""Site building: slugs, page assignment, title links, listings, and atomic, fingerprinted builds."""

import json
import re

import pytest

from webdancer_dagster.web import sites
from webdancer_dagster.web.sites import (
    LISTING_PAGE_SIZE,
    CorpusPage,
    SiteSpec,
    TitleLinker,
    assign_pages,
    build_site,
    default_site_specs,
    render_corpus_site,
    site_host,
    site_root_url,
    slugify,
)

HREF = re.compile(r'href="([^"]+)"')


def records(*pairs):
    return [{"title": title, "text": text} for title, text in pairs]


def write_corpus(path, items):
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def page_html(html_dir, page):
    return (html_dir / page.path.lstrip("/")).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("title", "slug"),
    [
        ("Tom Hanks", "Tom_Hanks"),
        ("Café de Flore", "Cafe_de_Flore"),
        ("C++ (programming language)", "C_programming_language"),
        ("  AC/DC  ", "AC_DC"),
        ("../../etc/passwd", "etc_passwd"),
        ("東京", "page"),
        ("!!!", "page"),
        ("", "page"),
    ],
)
def test_slugify(title, slug):
    assert slugify(title) == slug


def test_slugify_caps_length():
    assert slugify("a" * 500) == "a" * 120


def test_site_host_and_root_url():
    assert site_host("wiki") == "wiki.webdancer.test"
    assert site_root_url("wiki") == "http://wiki.webdancer.test/"


def test_assign_pages_one_page_per_distinct_title_and_text():
    pages = assign_pages(
        records(
            ("Paris", "Capital of France."),
            ("Paris", "Capital of France."),
            (" Paris ", " Capital of France.  "),  # same after stripping
            ("Berlin", "Capital of Germany."),
        )
    )
    assert [(p.title, p.text) for p in pages] == [
        ("Paris", "Capital of France."),
        ("Berlin", "Capital of Germany."),
    ]
    assert [p.slug for p in pages] == ["Paris", "Berlin"]
    assert pages[0].path == "/wiki/Paris.html"


def test_duplicate_titles_get_distinct_slugs_stable_under_reordering():
    corpus = records(
        ("John Smith", "John Smith was a footballer."),
        ("John Smith", "John Smith was a painter."),
        ("John  Smith!", "A third John Smith."),  # same slug, different title
        ("Unique Title", "Nothing shared."),
    )
    pages = assign_pages(corpus)
    slugs = [p.slug for p in pages]
    assert len(set(slugs)) == 4
    assert slugs[3] == "Unique_Title"
    assert all(re.fullmatch(r"John_Smith-[0-9a-f]{8}", s) for s in slugs[:3])

    by_text = {p.text: p.slug for p in pages}
    reordered = assign_pages(list(reversed(corpus)) + records(("Someone Else", "Unrelated.")))
    assert {p.text: p.slug for p in reordered if p.text in by_text} == by_text


def test_title_linker_links_whole_word_mentions_once_leftmost_longest():
    pages = [
        CorpusPage("New York", "t", "New_York"),
        CorpusPage("New York City", "t", "New_York_City"),
        CorpusPage("Paris", "t", "Paris"),
        CorpusPage("War", "t", "War"),  # one short word: never linked
        CorpusPage("Self Page", "t", "Self_Page"),
    ]
    linker = TitleLinker(pages)
    text = "Self Page: New York City and New York; Parisian War, then Paris and Paris again."
    found = [(text[start:end], path) for start, end, path in linker.mentions(text, exclude_title="Self Page")]
    assert found == [
        ("New York City", "/wiki/New_York_City.html"),
        ("New York", "/wiki/New_York.html"),
        ("Paris", "/wiki/Paris.html"),
    ]


def test_title_linker_without_linkable_titles_finds_nothing():
    assert TitleLinker([CorpusPage("War", "t", "War")]).mentions("War and war", "x") == []
    assert TitleLinker([]).mentions("anything", "x") == []


def test_render_corpus_site_pages_links_and_root_index(tmp_path):
    corpus = records(
        ("Marie Curie", "Marie Curie worked in Paris with Pierre Curie."),
        ("Pierre Curie", "Pierre Curie married Marie Curie in 1895."),
        ("Paris", "Paris is the capital of France."),
        ("Paris", "Paris is the capital of France."),
        ("Lonely Page", "Mentions nobody <script>alert(1)</script>."),
    )
    html_dir = tmp_path / "html"
    count = render_corpus_site(corpus, html_dir, "wiki")
    pages = assign_pages(corpus)
    assert count == len(pages) == 4
    assert sorted(p.name for p in (html_dir / "wiki").iterdir()) == sorted(f"{p.slug}.html" for p in pages)

    by_title = {p.title: p for p in pages}
    curie = page_html(html_dir, by_title["Marie Curie"])
    assert "<title>Marie Curie</title>" in curie
    assert '<a href="/wiki/Paris.html">Paris</a>' in curie
    assert '<a href="/wiki/Pierre_Curie.html">Pierre Curie</a>' in curie
    assert "/wiki/Marie_Curie.html" not in curie  # no link to itself
    lonely = page_html(html_dir, by_title["Lonely Page"])
    assert "<script>" not in lonely and "&lt;script&gt;" in lonely
    assert set(HREF.findall(lonely)) == {"/"}

    root = (html_dir / "index.html").read_text()
    listings = HREF.findall(root)
    assert listings == ["/", "/index/page-001.html"]
    listed = HREF.findall((html_dir / "index" / "page-001.html").read_text())
    assert sorted(h for h in listed if h.startswith("/wiki/")) == sorted(p.path for p in pages)


def test_listing_pages_paginate_and_cover_every_article(tmp_path):
    corpus = records(*((f"Article number {i:04d}", f"text {i}") for i in range(2 * LISTING_PAGE_SIZE + 5)))
    html_dir = tmp_path / "html"
    render_corpus_site(corpus, html_dir, "big")
    root_links = [h for h in HREF.findall((html_dir / "index.html").read_text()) if h != "/"]
    assert root_links == ["/index/page-001.html", "/index/page-002.html", "/index/page-003.html"]
    listed = []
    for link in root_links:
        text = (html_dir / link.lstrip("/")).read_text()
        listed += [h for h in HREF.findall(text) if h.startswith("/wiki/")]
        assert ("Previous" in text) == (link != root_links[0])
        assert ("Next" in text) == (link != root_links[-1])
    assert len(listed) == len(set(listed)) == len(corpus)


def test_build_corpus_site_and_skip_when_unchanged(tmp_path, monkeypatch):
    source = write_corpus(tmp_path / "corpus.json", records(("Alpha Page", "about Beta Page"), ("Beta Page", "b")))
    spec = SiteSpec(name="wiki", kind="corpus", source=source, benchmark=True)
    out = tmp_path / "sites" / "wiki"
    built = build_site(spec, out)
    assert built.pages == 2 and built.benchmark is True
    assert built.host == "wiki.webdancer.test" and built.root_url == "http://wiki.webdancer.test/"
    assert built.directory == out / "html" and (out / "html" / "index.html").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["pages"] == 2 and manifest["kind"] == "corpus"

    def must_not_render(*args, **kwargs):
        raise AssertionError("an unchanged source must not be re-rendered")

    monkeypatch.setattr(sites, "render_corpus_site", must_not_render)
    again = build_site(spec, out)
    assert again == built

    write_corpus(source, records(("Alpha Page", "changed"), ("Beta Page", "b"), ("Gamma Page", "c")))
    monkeypatch.undo()
    rebuilt = build_site(spec, out)
    assert rebuilt.pages == 3
    assert json.loads((out / "manifest.json").read_text())["fingerprint"] != manifest["fingerprint"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["wiki"]  # no temporary or old builds left


def test_failed_build_leaves_previous_build_intact(tmp_path, monkeypatch):
    source = write_corpus(tmp_path / "corpus.json", records(("Alpha Page", "first version")))
    spec = SiteSpec(name="wiki", kind="corpus", source=source)
    out = tmp_path / "sites" / "wiki"
    build_site(spec, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    write_corpus(source, [{"title": "Alpha Page", "text": "new"}, {"title": "No text"}])
    with pytest.raises(ValueError, match="record 1"):
        build_site(spec, out)

    write_corpus(source, records(("Alpha Page", "second version")))

    def crash_midway(records, html_dir, site_name):
        (html_dir / "wiki").mkdir(parents=True)
        (html_dir / "wiki" / "half.html").write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(sites, "render_corpus_site", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        build_site(spec, out)

    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["wiki"]


def test_zero_record_corpus_builds_an_empty_site(tmp_path):
    spec = SiteSpec(name="empty", kind="corpus", source=write_corpus(tmp_path / "corpus.json", []))
    built = build_site(spec, tmp_path / "sites" / "empty")
    assert built.pages == 0
    assert list((built.directory / "wiki").iterdir()) == []
    root = (built.directory / "index.html").read_text()
    assert "empty: index of all pages" in root
    assert HREF.findall(root) == ["/"]


@pytest.mark.parametrize(
    ("content", "error", "match"),
    [
        ('{"title": "x", "text": "y"}', ValueError, "JSON list"),
        ('[{"title": "x", "text": 3}]', ValueError, "record 0"),
        ('["just a string"]', ValueError, "record 0"),
        ("[not json", json.JSONDecodeError, None),
    ],
)
def test_malformed_corpus_is_rejected(tmp_path, content, error, match):
    source = tmp_path / "corpus.json"
    source.write_text(content)
    with pytest.raises(error, match=match):
        build_site(SiteSpec(name="bad", kind="corpus", source=source), tmp_path / "sites" / "bad")
    assert not (tmp_path / "sites" / "bad").exists()
    assert [p for p in (tmp_path / "sites").iterdir()] == []


def test_missing_corpus_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus file for site 'wiki' not found"):
        build_site(SiteSpec(name="wiki", kind="corpus", source=tmp_path / "nope.json"), tmp_path / "out")


def test_unknown_kind_is_rejected(tmp_path):
    source = write_corpus(tmp_path / "corpus.json", [])
    with pytest.raises(ValueError, match="unknown kind 'pdf'"):
        build_site(SiteSpec(name="x", kind="pdf", source=source), tmp_path / "out")  # type: ignore[arg-type]


def test_static_dir_site_links_the_tree_and_counts_html_pages(tmp_path):
    docs = tmp_path / "docs"
    (docs / "library").mkdir(parents=True)
    (docs / "index.html").write_text("<h1>Docs</h1>")
    (docs / "library" / "os.html").write_text("<h1>os</h1>")
    (docs / "library" / "style.css").write_text("body{}")
    built = build_site(SiteSpec(name="docs", kind="static_dir", source=docs), tmp_path / "sites" / "docs")
    assert built.pages == 2
    assert built.directory.is_symlink() and (built.directory / "library" / "os.html").read_text() == "<h1>os</h1>"

    (docs / "library" / "sys.html").write_text("<h1>sys</h1>")
    assert build_site(SiteSpec(name="docs", kind="static_dir", source=docs), tmp_path / "sites" / "docs").pages == 3


def test_static_dir_without_index_names_the_debian_package(tmp_path):
    source = tmp_path / "python3.11" / "html"
    source.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="apt-get install python3.11-doc"):
        build_site(SiteSpec(name="python-docs", kind="static_dir", source=source), tmp_path / "out")
    plain = tmp_path / "other"
    plain.mkdir()
    with pytest.raises(FileNotFoundError, match="has no index.html") as raised:
        build_site(SiteSpec(name="other", kind="static_dir", source=plain), tmp_path / "out2")
    assert "apt-get" not in str(raised.value)


def test_default_site_specs_mark_only_musique_as_benchmark(tmp_path):
    specs = {spec.name: spec for spec in default_site_specs(tmp_path, python_doc_dir=tmp_path / "py")}
    assert set(specs) == {"python-docs", "wiki", "musique"}
    assert [name for name, spec in specs.items() if spec.benchmark] == ["musique"]
    assert specs["wiki"].source == tmp_path / "wiki2" / "2wikimultihopqa_corpus.json"
    assert specs["python-docs"].kind == "static_dir" and specs["python-docs"].source == tmp_path / "py"
