"""The agent's ``search`` tool: BM25 over the crawled pages (tantivy), or live Google results via Serper."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

import httpx
import pandas as pd
import tantivy

from webdancer_dagster.files import folder_bytes, swap_in_dir
from webdancer_dagster.warehouse import frame_version
from webdancer_dagster.web.errors import FetchError, ToolInputError

logger = logging.getLogger(__name__)

MAX_QUERIES = 3
TOP_K = 10
MAX_RESULTS_PER_QUERY = 100  # Serper's most results a query
SNIPPET_CHARS = 200
QUERY_SEPARATOR = "\n=======\n"
LISTED_ABOVE = "(listed above)"
INDEX_MANIFEST = "webdancer-index.json"
DOC_COLUMNS = ("url", "title", "text", "site")
TITLE_BOOST = 2.0

# Everything tantivy's query grammar gives a meaning to; user queries are plain keywords.
_QUERY_SYNTAX = re.compile(r"""[+\-&|!(){}\[\]^"'~*?:\\/<>=,;`@#$%]""")
_SPACES = re.compile(r"\s+")


class SearchHit(NamedTuple):
    """One search result. A NamedTuple: built ten times per query, it costs a third of a frozen dataclass."""

    title: str
    url: str
    snippet: str
    # Publication date as the live engine reports it ("May 19, 2025"); empty for local pages.
    date: str = ""


class SearchBackend(Protocol):
    name: str

    def search(self, query: str, top_k: int = TOP_K) -> list[SearchHit]: ...


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("url", stored=True, tokenizer_name="raw")
    builder.add_text_field("site", stored=True, tokenizer_name="raw")
    builder.add_text_field("title", stored=True, tokenizer_name="en_stem")
    builder.add_text_field("text", stored=True, tokenizer_name="en_stem")
    return builder.build()


def build_search_index(docs: pd.DataFrame, index_dir: Path) -> dict:
    """Index ``docs`` (url, title, text, site) into ``index_dir``; the old index stays usable until the swap.

    Returns stats: docs, seconds, size_bytes and content_version, a version of the documents in index order (also
    kept in the index's manifest): tantivy names its segment files at random, so two builds of the same documents
    differ byte for byte, and this is what says they are the same index.
    """
    missing = [column for column in DOC_COLUMNS if column not in docs.columns]
    if missing:
        raise ValueError(f"search docs lack columns {missing}; expected {list(DOC_COLUMNS)}")
    started = time.perf_counter()
    index_dir = Path(index_dir)
    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.build-", dir=index_dir.parent))
    writer = None
    try:
        index = tantivy.Index(_schema(), path=str(tmp_dir))
        writer = index.writer(heap_size=128_000_000, num_threads=1)
        frame = docs.loc[:, list(DOC_COLUMNS)].fillna("").astype(str)
        for url, title, text, site in frame.itertuples(index=False, name=None):
            writer.add_document(tantivy.Document(url=url, title=title, text=text, site=site))
        writer.commit()
        writer.wait_merging_threads()
        stats = {
            "docs": len(frame),
            "seconds": round(time.perf_counter() - started, 3),
            "size_bytes": folder_bytes(tmp_dir),
            "content_version": frame_version(frame),
        }
        (tmp_dir / INDEX_MANIFEST).write_text(json.dumps(stats, indent=2))
        swap_in_dir(tmp_dir, index_dir)
    except BaseException:
        # Dropping the writer joins its indexing threads; alive, they would write segments into tmp_dir after
        # it is removed.
        writer = None
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        "search index: %d docs in %.2fs (%d bytes) at %s",
        stats["docs"],
        stats["seconds"],
        stats["size_bytes"],
        index_dir,
    )
    return stats


def index_content_version(index_dir: Path) -> str:
    """The documents' version that ``build_search_index`` recorded in the index's manifest."""
    manifest = Path(index_dir) / INDEX_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"no search index at {index_dir}; build it with build_search_index()")
    content = json.loads(manifest.read_text()).get("content_version")
    if content is None:
        raise LookupError(f"the search index at {index_dir} predates content versions; materialize search_index again")
    return str(content)


def plain_query(query: str) -> str:
    """The query as bare lowercase keywords: no field names, operators, phrases or ranges."""
    return _SPACES.sub(" ", _QUERY_SYNTAX.sub(" ", query)).strip().lower()


class LocalSearch:
    """BM25 over title and text of an index written by ``build_search_index``."""

    name = "local"

    def __init__(self, index_dir: Path) -> None:
        index_dir = Path(index_dir)
        if not (index_dir / INDEX_MANIFEST).is_file():
            raise FileNotFoundError(f"no search index at {index_dir}; build it with build_search_index()")
        self.index_dir = index_dir
        self._index = tantivy.Index.open(str(index_dir))
        self._schema = self._index.schema
        self._searcher = self._index.searcher()

    @property
    def num_docs(self) -> int:
        return self._searcher.num_docs

    def search(self, query: str, top_k: int = TOP_K) -> list[SearchHit]:
        keywords = plain_query(query)
        if not keywords:
            return []
        parsed = self._index.parse_query(keywords, ["title", "text"], field_boosts={"title": TITLE_BOOST})
        result = self._searcher.search(parsed, top_k)
        if not result.hits:
            return []
        snippets = tantivy.SnippetGenerator.create(self._searcher, parsed, self._schema, "text")
        snippets.set_max_num_chars(SNIPPET_CHARS)
        hits = []
        for _score, address in result.hits:
            doc = self._searcher.doc(address)
            snippet = snippets.snippet_from_doc(doc).fragment() or (doc.get_first("text") or "")[:SNIPPET_CHARS]
            # str.split/join: a tenth of the time of a \s+ regex, and this runs for every hit.
            hits.append(
                SearchHit(
                    title=doc.get_first("title") or "",
                    url=doc.get_first("url") or "",
                    snippet=" ".join(snippet.split()),
                )
            )
        return hits


class SerperSearch:
    """Live Google results from a Serper-compatible API (``POST /search`` with ``X-API-KEY``)."""

    name = "serper"

    def __init__(self, api_key: str, base_url: str = "https://google.serper.dev", timeout_s: float = 20) -> None:
        if not api_key:
            raise ValueError("SerperSearch needs an API key (set SERPER_API_KEY)")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"SerperSearch(base_url={self.base_url!r})"

    def close(self) -> None:
        self._client.close()

    def search(self, query: str, top_k: int = TOP_K) -> list[SearchHit]:
        endpoint = f"{self.base_url}/search"
        try:
            response = self._client.post(
                "/search", json={"q": query, "num": top_k}, headers={"X-API-KEY": self._api_key}
            )
        except httpx.TimeoutException as error:
            raise FetchError(endpoint, "timeout", str(error)) from error
        except httpx.HTTPError as error:
            raise FetchError(endpoint, "connect_error", type(error).__name__) from error
        if response.status_code != 200:
            raise FetchError(endpoint, "http_error", f"HTTP {response.status_code}: {response.text[:200]}")
        try:
            payload = response.json()
        except ValueError as error:
            raise FetchError(endpoint, "bad_response", "response is not JSON") from error
        organic = payload.get("organic", []) if isinstance(payload, dict) else None
        if not isinstance(organic, list):
            raise FetchError(endpoint, "bad_response", "response has no list of organic results")
        return [
            SearchHit(
                title=str(item.get("title", "")),
                url=str(item.get("link", "")),
                snippet=str(item.get("snippet", "")),
                date=str(item.get("date", "")),
            )
            for item in organic[:top_k]
            if isinstance(item, dict) and item.get("link")
        ]


class ExcludeHosts:
    """A backend that never returns pages of `blocked_hosts`: synthesis must not see benchmark pages."""

    def __init__(self, backend: SearchBackend, blocked_hosts: Sequence[str]) -> None:
        self.backend = backend
        self.blocked_hosts = frozenset(host.lower() for host in blocked_hosts)
        self.name = f"{backend.name}-excluding-{len(self.blocked_hosts)}-hosts"

    def search(self, query: str, top_k: int = TOP_K) -> list[SearchHit]:
        # Over-fetch so that dropping blocked pages still leaves top_k hits when the rest of the web has them.
        hits = self.backend.search(query, top_k * 3)
        allowed = [hit for hit in hits if (urlsplit(hit.url).hostname or "").lower() not in self.blocked_hosts]
        return allowed[:top_k]


def normalise_queries(query: Sequence[str] | str) -> list[str]:
    """Validate the tool argument: a string or a list of 1..MAX_QUERIES non-empty strings."""
    queries = [query] if isinstance(query, str) else query
    if not isinstance(queries, list | tuple):
        raise ToolInputError(f"search expects 'query' as a list of strings; got {type(query).__name__}")
    if not queries:
        raise ToolInputError("search needs at least one query; got an empty list")
    if len(queries) > MAX_QUERIES:
        raise ToolInputError(f"search accepts at most {MAX_QUERIES} queries; got {len(queries)}")
    cleaned = []
    for position, item in enumerate(queries, start=1):
        if not isinstance(item, str):
            raise ToolInputError(f"search query {position} must be a string; got {type(item).__name__}")
        if not item.strip():
            raise ToolInputError(f"search query {position} is empty; write some keywords")
        cleaned.append(item.strip())
    return cleaned


def format_results(query: str, hits: Sequence[SearchHit], listed_above: Collection[str] = ()) -> str:
    """One query's observation, as WebDancer's recorded Google search observations read. A hit whose URL an
    earlier query of the same call listed keeps its rank, title and URL but not its snippet again: on the local
    web a third of a 3-query call's hits repeat, and every repeated snippet is prompt the policy reads twice."""
    if not hits:
        return f"No results found for '{query}'. Try with a more general query."
    entries = []
    for number, hit in enumerate(hits, start=1):
        if hit.url in listed_above:
            entries.append(f"{number}. [{hit.title}]({hit.url}) {LISTED_ABOVE}")
            continue
        date = f"\nDate published: {hit.date}" if hit.date else ""
        snippet = f"\n{hit.snippet}" if hit.snippet else ""
        entries.append(f"{number}. [{hit.title}]({hit.url}){date}\n{snippet}")
    return f"A Google search for '{query}' found {len(hits)} results:\n\n## Web Results\n" + "\n\n".join(entries)


def search_tool(backend: SearchBackend, query: list[str] | str, results_per_query: int = TOP_K) -> str:
    """The ``search`` tool: run each query (its top ``results_per_query`` hits, WebDancer's 10 by default) and join
    the observations like WebDancer does."""
    if results_per_query < 1:
        raise ValueError(f"results_per_query must be at least 1, got {results_per_query}")
    observations: list[str] = []
    listed: set[str] = set()
    for text in normalise_queries(query):
        hits = backend.search(text, results_per_query)
        observations.append(format_results(text, hits, listed))
        listed.update(hit.url for hit in hits)
    return QUERY_SEPARATOR.join(observations)
