"""Search tool latency: `search_tool(LocalSearch, [q])` vs the bare tantivy call on one index and query set.

The index holds the shipped 2Wiki + MuSiQue corpora (~8,000 paragraphs). Two baselines on the same index:
`bare` is what any BM25 lookup must do (`index.parse_query` + `searcher.search` + reading the top-10 documents);
`bare_snippets` adds tantivy's own snippet generator, so it returns what the tool returns (title, URL, snippet).
Tool overhead (query cleaning, WebDancer's observation text) is measured against `bare_snippets`.
Targets: tool p50 <= 1.2x the `bare_snippets` p50, tool p50 < 10 ms; the ratio to `bare` is reported too.

    .venv/bin/python benchmarks/bench_search.py [--queries 300] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import tantivy

from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.web.search import SNIPPET_CHARS, TITLE_BOOST, TOP_K, LocalSearch, build_search_index, search_tool

RESULTS = Path(__file__).resolve().parent / "results"
CORPORA = [("wiki", "wiki2/2wikimultihopqa_corpus.json"), ("musique", "musique/musique_corpus.json")]
WORD = re.compile(r"[A-Za-z][A-Za-z0-9]+")
TARGET_RATIO = 1.2
TARGET_P50_MS = 10.0


def load_pages() -> pd.DataFrame:
    rows = []
    for site, relative in CORPORA:
        for i, doc in enumerate(json.loads((DATA_DIR / relative).read_text(encoding="utf-8"))):
            rows.append(
                {
                    "url": f"http://{site}.webdancer.test/p/{i}.html",
                    "title": doc["title"],
                    "text": doc["text"],
                    "site": site,
                }
            )
    return pd.DataFrame(rows)


def make_queries(pages: pd.DataFrame, count: int, seed: int) -> list[str]:
    """Plain-keyword queries (valid tantivy syntax as they are): a third titles, a third title + a word of the
    text, a third 2-4 words of a paragraph; so both paths get byte-identical query strings."""
    rng = random.Random(seed)
    queries = []
    while len(queries) < count:
        title, text = pages.sample(1, random_state=rng.randrange(2**31))[["title", "text"]].iloc[0]
        title_words, text_words = WORD.findall(title), WORD.findall(text)
        if not title_words or len(text_words) < 4:
            continue
        kind = len(queries) % 3
        if kind == 0:
            words = title_words
        elif kind == 1:
            words = title_words + [rng.choice(text_words)]
        else:
            words = rng.sample(text_words, rng.randint(2, 4))
        queries.append(" ".join(words).lower())
    return queries


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pages = load_pages()
    queries = make_queries(pages, args.queries, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        stats = build_search_index(pages, Path(tmp) / "index")
        backend = LocalSearch(Path(tmp) / "index")
        # The baseline opens the same index files on its own, as a caller without our wrapper would.
        index = tantivy.Index.open(str(Path(tmp) / "index"))
        searcher = index.searcher()

        def bare(query: str) -> list[tuple[str, str, str]]:
            parsed = index.parse_query(query, ["title", "text"], field_boosts={"title": TITLE_BOOST})
            docs = [searcher.doc(address) for _score, address in searcher.search(parsed, TOP_K).hits]
            return [(d.get_first("title"), d.get_first("url"), d.get_first("text")) for d in docs]

        def bare_snippets(query: str) -> list[tuple[str, str, str]]:
            parsed = index.parse_query(query, ["title", "text"], field_boosts={"title": TITLE_BOOST})
            hits = searcher.search(parsed, TOP_K).hits
            if not hits:
                return []
            snippets = tantivy.SnippetGenerator.create(searcher, parsed, index.schema, "text")
            snippets.set_max_num_chars(SNIPPET_CHARS)
            docs = [searcher.doc(address) for _score, address in hits]
            return [(d.get_first("title"), d.get_first("url"), snippets.snippet_from_doc(d).fragment()) for d in docs]

        def tool(query: str) -> str:
            return search_tool(backend, [query])

        for query in queries:  # warm-up: page the index in, fill caches
            bare(query)
            bare_snippets(query)
            tool(query)
        bare_ms: list[float] = []
        snippet_ms: list[float] = []
        tool_ms: list[float] = []
        empty = 0
        for repeat in range(args.repeats):
            for i, query in enumerate(queries):
                # Alternate which path goes first so neither always runs on a cache the other warmed.
                order = [(bare, bare_ms), (bare_snippets, snippet_ms), (tool, tool_ms)]
                if (i + repeat) % 2:
                    order.reverse()
                for function, sink in order:
                    started = time.perf_counter_ns()
                    result = function(query)
                    sink.append((time.perf_counter_ns() - started) / 1e6)
                    if function is bare and repeat == 0 and not result:
                        empty += 1

    bare_p50, bare_p95 = statistics.median(bare_ms), percentile(bare_ms, 0.95)
    snippet_p50, snippet_p95 = statistics.median(snippet_ms), percentile(snippet_ms, 0.95)
    tool_p50, tool_p95 = statistics.median(tool_ms), percentile(tool_ms, 0.95)
    ratio = tool_p50 / snippet_p50
    summary = {
        "benchmark": "search",
        "docs": stats["docs"],
        "index_build_s": stats["seconds"],
        "queries": len(queries),
        "queries_without_hits": empty,
        "repeats": args.repeats,
        "seed": args.seed,
        "bare_p50_ms": round(bare_p50, 4),
        "bare_p95_ms": round(bare_p95, 4),
        "bare_snippets_p50_ms": round(snippet_p50, 4),
        "bare_snippets_p95_ms": round(snippet_p95, 4),
        "tool_p50_ms": round(tool_p50, 4),
        "tool_p95_ms": round(tool_p95, 4),
        "ratio_p50": round(ratio, 3),
        "ratio_p95": round(tool_p95 / snippet_p95, 3),
        "ratio_p50_vs_bare_lookup": round(tool_p50 / bare_p50, 3),
        "target_ratio": TARGET_RATIO,
        "target_p50_ms": TARGET_P50_MS,
        "meets_ratio_target": ratio <= TARGET_RATIO,
        "meets_p50_target": tool_p50 < TARGET_P50_MS,
        "sample_queries": queries[:5],
    }
    print(
        f"search over {stats['docs']} docs, {len(queries)} queries x {args.repeats}: "
        f"bare tantivy p50 {bare_p50:.3f} ms p95 {bare_p95:.3f} ms; "
        f"bare tantivy + snippets p50 {snippet_p50:.3f} ms p95 {snippet_p95:.3f} ms; "
        f"search_tool p50 {tool_p50:.3f} ms p95 {tool_p95:.3f} ms "
        f"-> ratio {ratio:.2f}x vs bare+snippets, {tool_p50 / bare_p50:.2f}x vs bare lookup "
        f"(target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'}; "
        f"p50 target < {TARGET_P50_MS:g} ms: {'met' if tool_p50 < TARGET_P50_MS else 'MISSED'})"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
