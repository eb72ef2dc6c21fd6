"""The `search` tool: WebDancer's batched web search over any `SearchBackend` (local BM25 or a live API)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from webdancer_dagster.agent.tools import SEARCH_DESCRIPTION, SEARCH_PARAMETERS, ToolOutput
from webdancer_dagster.web.search import SearchBackend, search_tool


class SearchTool:
    """`search(query: list[str])`: up to 3 queries, top 10 hits each, formatted as WebDancer's observations."""

    name = "search"
    description = SEARCH_DESCRIPTION
    parameters: Mapping[str, Any] = SEARCH_PARAMETERS

    def __init__(self, backend: SearchBackend) -> None:
        self.backend = backend

    def call(self, arguments: Mapping[str, Any]) -> ToolOutput:
        return ToolOutput(search_tool(self.backend, arguments["query"]))
