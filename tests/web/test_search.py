"""The search tool: query validation, the local BM25 index, the Serper backend, and WebDancer's format."""

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest
import tantivy

from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.web.errors import FetchError, ToolInputError
from webdancer_dagster.web.search import (
    INDEX_MANIFEST,
    MAX_QUERIES,
    QUERY_SEPARATOR,
    SNIPPET_CHARS,
    TOP_K,
    ExcludeHosts,
    LocalSearch,
    SearchHit,
    SerperSearch,
    build_search_index,
    format_results,
    index_content_version,
    normalise_queries,
    plain_query,
    search_tool,
)

API_KEY = "test-serper-key-0123456789"

# A reply in the shape google.serper.dev returns for POST /search (trimmed to the fields WebDancer reads, plus
# the ones it ignores, so the parser is exercised against the real structure).
SERPER_REPLY = {
    "searchParameters": {"q": "1964 Epsom Derby winner", "type": "search", "num": 10, "engine": "google"},
    "knowledgeGraph": {
        "title": "Santa Claus",
        "type": "Racehorse",
        "description": "Santa Claus was a British-bred, Irish-trained Thoroughbred racehorse and sire.",
    },
    "organic": [
        {
            "title": "Santa Claus (horse) - Wikipedia",
            "link": "https://en.wikipedia.org/wiki/Santa_Claus_(horse)",
            "snippet": "Santa Claus (1961–1970) was a British-bred, Irish-trained Thoroughbred racehorse and "
            "sire. He is most notable for his achievements as a three-year-old in 1964.",
            "sitelinks": [
                {"title": "Racing career", "link": "https://en.wikipedia.org/wiki/Santa_Claus_(horse)#Racing"}
            ],
            "position": 1,
        },
        {
            "title": "Epsom - Santa Claus & Scobie Breasley, 1964 winners of the Derby ...",
            "link": "https://www.facebook.com/EpsomDownsRacecourse/photos/1125573986280394/",
            "snippet": "Santa Claus & Scobie Breasley, 1964 winners of the Derby for Mick Rogers - Christmas in June!.",
            "date": "May 19, 2025",
            "position": 2,
        },
        {"title": "A result without a link is dropped", "snippet": "no link here", "position": 3},
        {
            "title": "1964 Epsom Derby - Wikipedia",
            "link": "https://en.wikipedia.org/wiki/1964_Epsom_Derby",
            "snippet": "The 1964 Epsom Derby was a horse race which took place at Epsom Downs on 3 June 1964.",
            "position": 4,
        },
    ],
    "peopleAlsoAsk": [{"question": "Who won the 1964 Derby?", "snippet": "Santa Claus", "link": "https://x.test/"}],
    "relatedSearches": [{"query": "1965 Epsom Derby winner"}],
    "credits": 1,
}

SERPER_OBSERVATION = """A Google search for '1964 Epsom Derby winner' found 3 results:

## Web Results
1. [Santa Claus (horse) - Wikipedia](https://en.wikipedia.org/wiki/Santa_Claus_(horse))

Santa Claus (1961–1970) was a British-bred, Irish-trained Thoroughbred racehorse and sire. He is most \
notable for his achievements as a three-year-old in 1964.

2. [Epsom - Santa Claus & Scobie Breasley, 1964 winners of the Derby ...](https://www.facebook.com/\
EpsomDownsRacecourse/photos/1125573986280394/)
Date published: May 19, 2025

Santa Claus & Scobie Breasley, 1964 winners of the Derby for Mick Rogers - Christmas in June!.

3. [1964 Epsom Derby - Wikipedia](https://en.wikipedia.org/wiki/1964_Epsom_Derby)

The 1964 Epsom Derby was a horse race which took place at Epsom Downs on 3 June 1964."""

OBSERVATION_HEAD = re.compile(r"^A Google search for '(?P<q>.+)' found (?P<n>\d+) results:\n\n## Web Results\n1\. \[")
ENTRY = re.compile(r"^(?P<i>\d+)\. \[(?P<title>[^\]\n]*)\]\((?P<url>[^)\s]+)\)\n\n(?P<snippet>.+)$", re.M)


# ---------------------------------------------------------------- query validation


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("tom hanks", ["tom hanks"]),
        (["  tom hanks  "], ["tom hanks"]),
        (["a", "b", "c"], ["a", "b", "c"]),
        (("a", "b"), ["a", "b"]),
    ],
)
def test_normalise_queries_accepts(query, expected):
    assert normalise_queries(query) == expected


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ([], "at least one query"),
        ("", "query 1 is empty"),
        (["   "], "query 1 is empty"),
        (["ok", ""], "query 2 is empty"),
        (["a", "b", "c", "d"], f"at most {MAX_QUERIES} queries; got 4"),
        (["ok", 3], "query 2 must be a string; got int"),
        ({"query": "x"}, "list of strings; got dict"),
        (None, "list of strings; got NoneType"),
        (42, "list of strings; got int"),
    ],
)
def test_normalise_queries_rejects(query, match):
    with pytest.raises(ToolInputError, match=re.escape(match)):
        normalise_queries(query)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("foo:bar (baz", "foo bar baz"),
        ('title:"Marie Curie"', "title marie curie"),
        ("cats AND dogs OR NOT mice", "cats and dogs or not mice"),
        ("+must -not ^2 ~fuzzy* [a TO b] {x}", "must not 2 fuzzy a to b x"),
        ("C:\\path/to\\file", "c path to file"),
        ("  many \t\n spaces ", "many spaces"),
        ('":()[]', ""),
    ],
)
def test_plain_query_strips_query_syntax(query, expected):
    assert plain_query(query) == expected


# ---------------------------------------------------------------- observation format


def test_format_results_matches_webdancer_observations():
    hits = [
        SearchHit(
            title="Santa Claus (horse) - Wikipedia",
            url="https://en.wikipedia.org/wiki/Santa_Claus_(horse)",
            snippet="Santa Claus (1961–1970) was a racehorse.",
        ),
        SearchHit(title="Epsom", url="https://epsom.test/1964", snippet="Christmas in June!.", date="May 19, 2025"),
        SearchHit(title="No snippet", url="https://x.test/", snippet=""),
    ]
    assert format_results("1964 horse race", hits) == (
        "A Google search for '1964 horse race' found 3 results:\n\n## Web Results\n"
        "1. [Santa Claus (horse) - Wikipedia](https://en.wikipedia.org/wiki/Santa_Claus_(horse))\n\n"
        "Santa Claus (1961–1970) was a racehorse.\n\n"
        "2. [Epsom](https://epsom.test/1964)\nDate published: May 19, 2025\n\nChristmas in June!.\n\n"
        "3. [No snippet](https://x.test/)\n"
    )


def test_format_results_without_hits():
    assert format_results("zzqx", []) == "No results found for 'zzqx'. Try with a more general query."


class RecordingBackend:
    """A backend that answers from a dict and records the queries it was asked."""

    name = "recording"

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def search(self, query, top_k=TOP_K):
        self.calls.append((query, top_k))
        return self.answers.get(query, [])


def test_search_tool_joins_queries_with_the_separator():
    backend = RecordingBackend({"a": [SearchHit("A", "http://a.test/", "about a")]})
    observation = search_tool(backend, [" a ", "b"])
    assert backend.calls == [("a", TOP_K), ("b", TOP_K)]
    assert observation == (
        "A Google search for 'a' found 1 results:\n\n## Web Results\n1. [A](http://a.test/)\n\nabout a"
        + QUERY_SEPARATOR
        + "No results found for 'b'. Try with a more general query."
    )
    assert QUERY_SEPARATOR == "\n=======\n"


def test_a_hit_an_earlier_query_listed_keeps_its_rank_but_not_its_snippet():
    shared = SearchHit("Hall", "http://w.test/Hall", "G. Stanley Hall was the first president.")
    backend = RecordingBackend(
        {"a": [shared], "b": [SearchHit("APA", "http://w.test/APA", "The APA was founded in 1892."), shared]}
    )
    observation = search_tool(backend, ["a", "b"])
    first, second = observation.split(QUERY_SEPARATOR)
    assert first.endswith("1. [Hall](http://w.test/Hall)\n\nG. Stanley Hall was the first president.")
    assert second == (
        "A Google search for 'b' found 2 results:\n\n## Web Results\n"
        "1. [APA](http://w.test/APA)\n\nThe APA was founded in 1892.\n\n"
        "2. [Hall](http://w.test/Hall) (listed above)"
    )
    assert observation.count("first president") == 1


@pytest.mark.parametrize("query", [[], [""], ["a", "b", "c", "d"]])
def test_search_tool_rejects_bad_input_before_searching(query):
    backend = RecordingBackend({})
    with pytest.raises(ToolInputError):
        search_tool(backend, query)
    assert backend.calls == []


# ---------------------------------------------------------------- local BM25 index


def docs_frame(rows):
    return pd.DataFrame(rows, columns=["url", "title", "text", "site"])


CORPUS = docs_frame(
    [
        (
            "http://wiki.webdancer.test/wiki/Marie_Curie.html",
            "Marie Curie",
            "A Polish physicist and chemist who pioneered research on radioactivity.",
            "wiki",
        ),
        (
            "http://wiki.webdancer.test/wiki/Pierre_Curie.html",
            "Pierre Curie",
            "A French physicist, husband of Marie Curie, who studied crystallography and magnetism.",
            "wiki",
        ),
        (
            "http://wiki.webdancer.test/wiki/Radium.html",
            "Radium",
            "Radium was discovered by Marie Curie and Pierre Curie in 1898. Curie Curie Curie named the "
            "element. Marie Curie isolated radium metal in 1910 with Andre-Louis Debierne.",
            "wiki",
        ),
        (
            "http://wiki.webdancer.test/wiki/Warsaw.html",
            "Warsaw",
            "Warsaw is the capital of Poland and the birthplace of Marie Curie.",
            "wiki",
        ),
        (
            "http://musique.webdancer.test/wiki/Epsom_Derby.html",
            "Epsom Derby",
            "The Epsom Derby is a horse race run at Epsom Downs in June.",
            "musique",
        ),
        ("http://wiki.webdancer.test/wiki/Empty.html", "Polonium isotope", "", "wiki"),
    ]
)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    index_dir = tmp_path_factory.mktemp("search") / "index"
    stats = build_search_index(CORPUS, index_dir)
    assert stats["docs"] == len(CORPUS) and stats["size_bytes"] > 0
    return LocalSearch(index_dir)


def test_index_stats_and_manifest(local):
    assert local.num_docs == len(CORPUS)
    manifest = json.loads((local.index_dir / INDEX_MANIFEST).read_text())
    assert manifest["docs"] == len(CORPUS)


def test_title_hits_rank_first(local):
    hits = local.search("marie curie")
    assert hits[0].title == "Marie Curie"
    assert hits[0].url == "http://wiki.webdancer.test/wiki/Marie_Curie.html"
    assert {h.title for h in hits} >= {"Pierre Curie", "Radium", "Warsaw"}
    assert "Epsom Derby" not in {h.title for h in hits}
    assert local.search("radium")[0].title == "Radium"


def test_snippets_come_from_the_matching_text(local):
    hit = next(h for h in local.search("crystallography") if h.title == "Pierre Curie")
    assert "crystallography" in hit.snippet
    assert len(hit.snippet) <= SNIPPET_CHARS + 10
    assert "<b>" not in hit.snippet and "\n" not in hit.snippet


def test_title_only_match_has_an_empty_snippet(local):
    hits = local.search("polonium")
    assert [(h.title, h.snippet) for h in hits] == [("Polonium isotope", "")]
    assert format_results("polonium", hits).endswith(
        "1. [Polonium isotope](http://wiki.webdancer.test/wiki/Empty.html)\n"
    )


def test_english_stemming(local):
    assert local.search("races")[0].title == "Epsom Derby"


@pytest.mark.parametrize(
    "query",
    [
        '"foo:bar (baz',
        "title:radium",
        "url:http://x",
        "radium AND",
        "OR",
        "(((",
        '"unclosed phrase',
        "a" * 5000,
        "radium^",
        "*",
        "\x00",
        "SELECT * FROM pages; --",
        "радий 镭",
    ],
)
def test_query_syntax_never_crashes(local, query):
    hits = local.search(query)
    assert isinstance(hits, list) and len(hits) <= TOP_K


def test_field_names_in_queries_are_plain_words(local):
    # "title:radium" must search the words "title" and "radium", not a field filter.
    assert local.search("title:radium")[0].title == "Radium"


def test_no_match_and_empty_keywords_give_no_hits(local):
    assert local.search("zzqxv") == []
    assert local.search('":()') == []


def test_at_most_top_k_hits(tmp_path):
    frame = docs_frame(
        [(f"http://wiki.webdancer.test/{i}.html", f"Page {i}", f"common word number {i}", "wiki") for i in range(25)]
    )
    build_search_index(frame, tmp_path / "index")
    search = LocalSearch(tmp_path / "index")
    assert len(search.search("common")) == TOP_K == 10
    assert len(search.search("common", top_k=3)) == 3
    observation = search_tool(search, ["common"])
    assert observation.startswith("A Google search for 'common' found 10 results:\n\n## Web Results\n1. [Page ")
    assert "\n10. [" in observation and "\n11. [" not in observation


def test_the_search_tool_returns_the_results_a_query_it_is_set_to(tmp_path):
    frame = docs_frame(
        [(f"http://wiki.webdancer.test/{i}.html", f"Page {i}", f"common word number {i}", "wiki") for i in range(25)]
    )
    build_search_index(frame, tmp_path / "index")
    search = LocalSearch(tmp_path / "index")
    observation = search_tool(search, ["common", "word"], results_per_query=4)
    first, second = observation.split(QUERY_SEPARATOR)
    assert first.startswith("A Google search for 'common' found 4 results:")
    assert "\n4. [" in first and "\n5. [" not in first
    # The second query finds the same pages: listed again by rank, each without its snippet.
    assert second.startswith("A Google search for 'word' found 4 results:")
    assert second.count("(listed above)") == 4 and "\n5. [" not in second
    with pytest.raises(ValueError, match="results_per_query must be at least 1"):
        search_tool(search, ["common"], results_per_query=0)


def test_search_tool_over_local_index_matches_webdancer_format(local):
    observation = search_tool(local, ["Marie Curie", "epsom horse race", "zzqxv"])
    parts = observation.split(QUERY_SEPARATOR)
    assert len(parts) == 3
    first = OBSERVATION_HEAD.match(parts[0])
    assert first and first["q"] == "Marie Curie" and int(first["n"]) == len(local.search("Marie Curie"))
    entries = list(ENTRY.finditer(parts[0]))
    assert [int(e["i"]) for e in entries] == list(range(1, int(first["n"]) + 1))
    assert entries[0]["title"] == "Marie Curie"
    assert entries[0]["url"] == "http://wiki.webdancer.test/wiki/Marie_Curie.html"
    assert "radioactivity" in entries[0]["snippet"]
    second = OBSERVATION_HEAD.match(parts[1])
    assert second and second["q"] == "epsom horse race"
    assert "[Epsom Derby](http://musique.webdancer.test/wiki/Epsom_Derby.html)" in parts[1]
    assert parts[2] == "No results found for 'zzqxv'. Try with a more general query."


def test_missing_index_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="build it with build_search_index"):
        LocalSearch(tmp_path / "nowhere")


def test_the_content_version_names_the_documents_not_the_build(tmp_path):
    first, second, changed = tmp_path / "first", tmp_path / "second", tmp_path / "changed"
    build_search_index(CORPUS, first)
    build_search_index(CORPUS, second)
    edited = CORPUS.copy()
    edited.loc[0, "text"] += " She won two Nobel Prizes."
    build_search_index(edited, changed)
    assert folder_sha256(first) != folder_sha256(second), "tantivy names its segment files at random"
    assert index_content_version(first) == index_content_version(second) != index_content_version(changed)
    manifest = json.loads((first / INDEX_MANIFEST).read_text())
    del manifest["content_version"]
    (first / INDEX_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(LookupError, match="materialize search_index again"):
        index_content_version(first)
    with pytest.raises(FileNotFoundError, match="no search index"):
        index_content_version(tmp_path / "nowhere")


def test_docs_without_required_columns_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"lack columns \['site'\]"):
        build_search_index(pd.DataFrame({"url": ["u"], "title": ["t"], "text": ["x"]}), tmp_path / "index")
    assert not (tmp_path / "index").exists()


def test_missing_values_are_indexed_as_empty_strings(tmp_path):
    frame = docs_frame([("http://a.test/", None, "text about owls", "wiki"), ("http://b.test/", "Owls", None, None)])
    build_search_index(frame, tmp_path / "index")
    hits = LocalSearch(tmp_path / "index").search("owls")
    assert sorted((h.title, h.url) for h in hits) == [("", "http://a.test/"), ("Owls", "http://b.test/")]


def test_rebuild_replaces_the_index_and_a_failed_build_keeps_the_old_one(tmp_path, monkeypatch):
    index_dir = tmp_path / "index"
    build_search_index(docs_frame([("http://a.test/", "Owls", "night birds", "wiki")]), index_dir)
    build_search_index(docs_frame([("http://b.test/", "Larks", "day birds", "wiki")]), index_dir)
    search = LocalSearch(index_dir)
    assert [h.url for h in search.search("birds")] == ["http://b.test/"]

    real_document = tantivy.Document
    added = []

    def failing_document(**fields):
        added.append(fields["url"])
        if len(added) == 2:
            raise RuntimeError("indexing crashed")
        return real_document(**fields)

    monkeypatch.setattr(tantivy, "Document", failing_document)
    frame = docs_frame([("http://c.test/", "Crows", "birds", "wiki"), ("http://d.test/", "Doves", "birds", "wiki")])
    with pytest.raises(RuntimeError, match="indexing crashed"):
        build_search_index(frame, index_dir)
    monkeypatch.undo()
    assert [h.url for h in LocalSearch(index_dir).search("birds")] == ["http://b.test/"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# ---------------------------------------------------------------- Serper backend against a local fake


class FakeSerperHandler(BaseHTTPRequestHandler):
    server: "FakeSerper"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.requests.append({"path": self.path, "headers": self.headers, "json": json.loads(body)})
        status, content_type, payload = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class FakeSerper(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeSerperHandler)
        self.requests = []
        self.reply = (200, "application/json", json.dumps(SERPER_REPLY).encode())

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def serper(monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    fake = FakeSerper()
    thread = threading.Thread(target=fake.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    backend = SerperSearch(API_KEY, base_url=fake.base_url + "/", timeout_s=5)
    yield fake, backend
    backend.close()
    fake.shutdown()
    fake.server_close()


def test_serper_replays_into_the_webdancer_observation(serper):
    fake, backend = serper
    observation = search_tool(backend, ["1964 Epsom Derby winner"])
    assert observation == SERPER_OBSERVATION
    [request] = fake.requests
    assert request["path"] == "/search"
    assert request["headers"]["X-API-KEY"] == API_KEY
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["json"] == {"q": "1964 Epsom Derby winner", "num": TOP_K}


def test_serper_hits_keep_dates_and_respect_top_k(serper):
    _, backend = serper
    hits = backend.search("1964 Epsom Derby winner", top_k=2)
    assert [(h.title, h.date) for h in hits] == [
        ("Santa Claus (horse) - Wikipedia", ""),
        ("Epsom - Santa Claus & Scobie Breasley, 1964 winners of the Derby ...", "May 19, 2025"),
    ]


def test_serper_skips_malformed_results(serper):
    fake, backend = serper
    organic = ["not a result", None, {"title": "Kept", "link": "https://kept.test/", "snippet": "s"}]
    fake.reply = (200, "application/json", json.dumps({"organic": organic}).encode())
    assert backend.search("x") == [SearchHit(title="Kept", url="https://kept.test/", snippet="s")]


def test_serper_empty_organic_is_no_results(serper):
    fake, backend = serper
    fake.reply = (
        200,
        "application/json",
        json.dumps({"searchParameters": {"q": "x"}, "credits": 1}).encode(),
    )
    assert search_tool(backend, "x") == "No results found for 'x'. Try with a more general query."


@pytest.mark.parametrize(
    ("reply", "reason", "detail"),
    [
        ((500, "application/json", b'{"message": "Internal error"}'), "http_error", 'HTTP 500: {"message"'),
        ((403, "application/json", b'{"message": "Unauthorized."}'), "http_error", "HTTP 403"),
        ((200, "text/html", b"<html>Service Unavailable</html>"), "bad_response", "not JSON"),
        ((200, "application/json", b""), "bad_response", "not JSON"),
        ((200, "application/json", b"[1, 2]"), "bad_response", "no list of organic results"),
        ((200, "application/json", b'{"organic": null}'), "bad_response", "no list of organic results"),
        ((200, "application/json", b'{"organic": {"title": "x"}}'), "bad_response", "no list of organic results"),
    ],
)
def test_serper_failures_are_fetch_errors(serper, reply, reason, detail):
    fake, backend = serper
    fake.reply = reply
    with pytest.raises(FetchError) as raised:
        backend.search("anything")
    assert raised.value.reason == reason
    assert detail in raised.value.detail
    assert raised.value.url == fake.base_url + "/search"
    assert API_KEY not in str(raised.value)


def test_serper_unreachable_is_connect_error():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = SerperSearch(API_KEY, base_url=f"http://127.0.0.1:{port}", timeout_s=2)
    try:
        with pytest.raises(FetchError) as raised:
            backend.search("x")
        assert raised.value.reason == "connect_error"
    finally:
        backend.close()


def test_serper_needs_a_key_and_does_not_show_it():
    with pytest.raises(ValueError, match="API key"):
        SerperSearch("")
    backend = SerperSearch(API_KEY, base_url="http://127.0.0.1:9")
    try:
        assert API_KEY not in repr(backend)
        assert backend.name == "serper"
    finally:
        backend.close()


def test_exclude_hosts_drops_blocked_sites_and_keeps_the_rest(local):
    assert any("musique" in hit.url for hit in local.search("Epsom Derby horse race"))
    filtered = ExcludeHosts(local, ["MUSIQUE.webdancer.test"])
    hits = filtered.search("Epsom Derby horse race Marie Curie")
    assert hits and all("musique.webdancer.test" not in hit.url for hit in hits)
    assert [hit.url for hit in filtered.search("Marie Curie", top_k=2)] == [
        hit.url for hit in local.search("Marie Curie", top_k=2)
    ]
