"""The agent's pluggable tool interface and the JSON schemas of WebDancer's two tools.

A tool is any object with a `name`, a `description`, a JSON-schema `parameters` mapping and a `call` method;
the agent looks tools up by name, so a live search backend, a local BM25 index or a test fake plug in the same way.
Tools raise `ToolInputError` / `FetchError` for bad input and unreachable pages; the agent turns those into
observation text the model can read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

# The schemas exactly as the ReAct user prompt declares them (tests/agent/test_prompts.py checks this).
SEARCH_DESCRIPTION = (
    "Performs batched web searches: supply an array 'query'; the tool retrieves the top 10 results for each "
    "query in one call."
)
_TOP_RESULTS = "the top {} results for each query"

SEARCH_PARAMETERS: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "query": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Array of query strings. Include multiple complementary search queries in a single call.",
        }
    },
    "required": ["query"],
}
VISIT_DESCRIPTION = "Visit webpage(s) and return the summary of the content."
VISIT_PARAMETERS: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "url": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The URL(s) of the webpage(s) to visit. Can be a single URL or an array of URLs.",
        },
        "goal": {"type": "string", "description": "The specific information goal for visiting webpage(s)."},
    },
    "required": ["url", "goal"],
}

ToolSchemas = Mapping[str, Mapping[str, Any]]
# The tools WebDancer's ReAct prompt declares, with the argument names the recorded calls use: what the funnel and
# the reference loader check trajectories against when no live tools exist.
WEBDANCER_TOOL_SCHEMAS: ToolSchemas = {"search": SEARCH_PARAMETERS, "visit": VISIT_PARAMETERS}


def search_description(results_per_query: int) -> str:
    """WebDancer's description of `search` for a tool that returns `results_per_query` hits a query, not 10: the
    prompt must not promise results the observation does not hold."""
    return SEARCH_DESCRIPTION.replace(_TOP_RESULTS.format(10), _TOP_RESULTS.format(results_per_query), 1)


@dataclasses.dataclass(frozen=True)
class ToolOutput:
    """What a tool call produced: the observation text, plus problems worth counting (e.g. pages that failed)."""

    text: str
    errors: tuple[str, ...] = ()


@runtime_checkable
class Tool(Protocol):
    """Anything the agent can call by name with JSON arguments validated against `parameters`."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    def call(self, arguments: Mapping[str, Any]) -> ToolOutput: ...


def tool_map(*tools: Tool) -> dict[str, Tool]:
    """Index tools by name, refusing duplicates (a second `search` would silently shadow the first)."""
    mapping: dict[str, Tool] = {}
    for tool in tools:
        if tool.name in mapping:
            raise ValueError(f"two tools are named {tool.name!r}")
        mapping[tool.name] = tool
    return mapping
