"""The `visit` tool: fetch each page, have the summarizer extract evidence for the goal, format it as WebDancer.

The observation for one page reads "The useful information in {url} for user goal {goal} as follows: ..."
with the page's evidence and summary; several pages are joined by "\\n=======\\n", as in the sample
trajectories. A page that cannot be fetched or summarised still yields a readable entry in the same layout,
so the model learns to move on rather than the run crashing. A summarizer that is down (after its retries) is
not a page problem: that `LLMEndpointError` propagates, so no trajectory is built from fallback texts alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import json_repair

from webdancer_dagster.agent.prompts import (
    EXTRACTOR_PROMPT,
    VISIT_FAILED_EVIDENCE,
    VISIT_FAILED_SUMMARY,
    VISIT_OBSERVATION,
    VISIT_PAGE_SEPARATOR,
)
from webdancer_dagster.agent.tools import VISIT_DESCRIPTION, VISIT_PARAMETERS, ToolOutput
from webdancer_dagster.llm.client import LLMEndpoint, LLMRequestRejected
from webdancer_dagster.web.errors import FetchError, ToolInputError
from webdancer_dagster.web.visit import FetchPolicy, fetch_page

logger = logging.getLogger(__name__)

JSON_OBJECT_FORMAT = {"type": "json_object"}


class ExtractionError(ValueError):
    """The summarizer's reply held no usable {evidence, summary} object."""


@dataclasses.dataclass(frozen=True)
class PageEvidence:
    rational: str
    evidence: str
    summary: str


def parse_extraction(reply: str) -> PageEvidence:
    """Read the summarizer's JSON leniently (code fences, trailing commas, cut-off replies via json-repair)."""
    data = json_repair.loads(reply.strip())
    if isinstance(data, list):  # json-repair returns a list when it finds several objects
        data = next((item for item in data if isinstance(item, dict)), None)
    if not isinstance(data, dict):
        raise ExtractionError(f"summarizer reply is not a JSON object: {reply[:200]!r}")

    def text(field: str) -> str:
        value = data.get(field, "")
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    evidence, summary = text("evidence").strip(), text("summary").strip()
    if not evidence and not summary:
        raise ExtractionError(f"summarizer reply has neither evidence nor summary: {reply[:200]!r}")
    return PageEvidence(rational=text("rational").strip(), evidence=evidence, summary=summary)


def extract_evidence(summarizer: LLMEndpoint, page_text: str, goal: str, *, json_mode: bool = True) -> PageEvidence:
    """Ask the summarizer which parts of `page_text` serve `goal`; raises ExtractionError or LLMEndpointError."""
    prompt = EXTRACTOR_PROMPT.format(webpage_content=page_text, goal=goal)
    result = summarizer.chat(
        [{"role": "user", "content": prompt}], response_format=JSON_OBJECT_FORMAT if json_mode else None
    )
    return parse_extraction(result.content)


def visit_observation(url: str, goal: str, evidence: str, summary: str) -> str:
    return VISIT_OBSERVATION.format(url=url, goal=goal, evidence=evidence, summary=summary).strip()


class VisitTool:
    """`visit(url: list[str], goal: str)`: fetched over HTTP, summarised by the `summarizer` endpoint."""

    name = "visit"
    description = VISIT_DESCRIPTION
    parameters: Mapping[str, Any] = VISIT_PARAMETERS

    def __init__(
        self,
        summarizer: LLMEndpoint,
        policy: FetchPolicy,
        *,
        http_client: httpx.Client | None = None,
        max_page_chars: int = 12_000,
        max_parallel: int = 3,
        json_mode: bool = True,
    ) -> None:
        self.summarizer = summarizer
        self.policy = policy
        self.http_client = http_client
        self.max_page_chars = max_page_chars
        self.max_parallel = max_parallel
        self.json_mode = json_mode

    def call(self, arguments: Mapping[str, Any]) -> ToolOutput:
        urls = arguments["url"]
        urls = [urls] if isinstance(urls, str) else list(urls)
        goal = str(arguments["goal"]).strip()
        if not urls:
            raise ToolInputError("visit needs at least one URL")
        if not goal:
            raise ToolInputError("visit needs a non-empty goal")
        with ThreadPoolExecutor(max_workers=min(len(urls), self.max_parallel)) as pool:
            pages = list(pool.map(lambda url: self._visit_one(url, goal), urls))
        text = VISIT_PAGE_SEPARATOR.join(observation for observation, _ in pages)
        return ToolOutput(text=text, errors=tuple(error for _, error in pages if error))

    def _visit_one(self, url: str, goal: str) -> tuple[str, str | None]:
        """One page's observation, and what went wrong if it is the fallback text."""
        try:
            page = fetch_page(url, self.policy, self.http_client)
        except FetchError as error:
            return self._fallback(url, goal, error.reason, error)
        if not page.text.strip():
            return self._fallback(url, goal, "the page has no readable text", None)
        try:
            found = extract_evidence(self.summarizer, page.text[: self.max_page_chars], goal, json_mode=self.json_mode)
        except ExtractionError as error:
            return self._fallback(url, goal, "the page summary could not be read", error)
        except LLMRequestRejected as error:  # e.g. page plus prompt over the summarizer's context
            return self._fallback(url, goal, "the summarizer refused this page", error)
        return visit_observation(url, goal, found.evidence, found.summary), None

    @staticmethod
    def _fallback(url: str, goal: str, reason: str, error: Exception | None) -> tuple[str, str]:
        logger.info("visit %s failed: %s (%s)", url, reason, error)
        evidence = VISIT_FAILED_EVIDENCE.format(reason=reason)
        return visit_observation(url, goal, evidence, VISIT_FAILED_SUMMARY), f"{url}: {error or reason}"
