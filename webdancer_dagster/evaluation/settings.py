"""Where the agent looks for answers during evaluation: the local web, the live web, or nowhere (closed-book).

Benchmarks whose evidence is on the local web (MuSiQue, declared benchmarks with a corpus) always run there. The
question-only sets (WebWalkerQA, Bamboogle, FRAMES, MuSiQue-500, 2Wiki-500, declared JSONL without a corpus) need
the live web: with a live search backend configured they search it and visit live pages; without one they run
closed-book, with the same prompt and tools, whose calls come back as text saying there is nothing to search.
The setting is stored with every run and score, and is part of the run fingerprint, so settings never mix.
"""

from __future__ import annotations

from typing import Literal

from webdancer_dagster.evaluation.benchmarks import BenchmarkSource
from webdancer_dagster.web.errors import ToolInputError
from webdancer_dagster.web.search import TOP_K, SearchHit

Setting = Literal["local_web", "live_web", "closed_book"]
CLOSED_BOOK_MESSAGE = (
    "no search backend is available in this evaluation (closed-book setting); answer from what you already know"
)


def benchmark_setting(source: BenchmarkSource, live_search_available: bool) -> Setting:
    if source.offline:
        return "local_web"
    return "live_web" if live_search_available else "closed_book"


class ClosedBookSearch:
    """A search backend with nothing behind it: every query becomes an observation saying so."""

    name = "closed_book"

    def search(self, query: str, top_k: int = TOP_K) -> list[SearchHit]:
        raise ToolInputError(CLOSED_BOOK_MESSAGE)
