"""The `search` tool: WebDancer's batched web search over any `SearchBackend` (local BM25 or a live API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webdancer_dagster.agent.tools import SEARCH_PARAMETERS, ToolOutput, search_description
from webdancer_dagster.web.search import TOP_K, SearchBackend, search_tool


class SearchTool:
    """`search(query: list[str])`: up to 3 queries, the top `results_per_query` hits of each (WebDancer's 10),
    formatted as WebDancer's observations."""

    name = "search"
    parameters: Mapping[str, Any] = SEARCH_PARAMETERS

    def __init__(self, backend: SearchBackend, results_per_query: int = TOP_K) -> None:
        if results_per_query < 1:
            raise ValueError(f"results_per_query must be at least 1, got {results_per_query}")
        self.backend = backend
        self.results_per_query = results_per_query
        self.description = search_description(results_per_query)

    def call(self, arguments: Mapping[str, Any]) -> ToolOutput:
        return ToolOutput(search_tool(self.backend, arguments["query"], self.results_per_query))
