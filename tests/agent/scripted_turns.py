"""Building blocks for agent tests: a tiny site, scripted model turns, fast-failing endpoint settings."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from webdancer_dagster.agent.parser import ParsedTurn
from webdancer_dagster.llm.client import EndpointConfig, SamplingParams
from webdancer_dagster.testing.scripted_llm import ScriptedReply
from webdancer_dagster.web.visit import FetchPolicy

HOST = "tiny.webdancer.test"
PAGES = {
    "Ada_Lovelace": (
        "Ada Lovelace",
        "Ada Lovelace was an English mathematician born on 10 December 1815 in London. She wrote the first "
        "published algorithm intended for Charles Babbage's Analytical Engine.",
    ),
    "Charles_Babbage": (
        "Charles Babbage",
        "Charles Babbage was an English polymath who designed the Analytical Engine, a mechanical "
        "general-purpose computer. He was born in 1791 in London.",
    ),
    "Analytical_Engine": (
        "Analytical Engine",
        "The Analytical Engine was a proposed mechanical computer designed by Charles Babbage. Ada Lovelace "
        "published notes on it in 1843.",
    ),
}
EXTRACTOR_MARKER = "Read the webpage content below"
TEST_DATE = dt.date(2025, 7, 18)


def page_url(slug: str) -> str:
    return f"http://{HOST}/wiki/{slug}.html"


@dataclasses.dataclass(frozen=True)
class TinyWeb:
    site_dir: Path
    index_dir: Path
    proxy_url: str

    def policy(self) -> FetchPolicy:
        return FetchPolicy(allowed_hosts=frozenset({HOST}), proxy_url=self.proxy_url, timeout_s=2.0)


def write_site(root: Path) -> pd.DataFrame:
    """The HTML pages plus the docs frame the search index is built from."""
    (root / "wiki").mkdir(parents=True)
    rows = []
    for slug, (title, text) in PAGES.items():
        html = (
            f"<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1><p>{text}</p></body></html>"
        )
        (root / "wiki" / f"{slug}.html").write_text(html, encoding="utf-8")
        rows.append({"url": page_url(slug), "title": title, "text": text, "site": "tiny"})
    (root / "wiki" / "Empty.html").write_text("<html><head><title>Empty</title></head><body></body></html>")
    (root / "index.html").write_text("<html><body><a href='/wiki/Ada_Lovelace.html'>Ada</a></body></html>")
    return pd.DataFrame(rows)


def tool_call(name: str, arguments: dict[str, Any], thought: str = "I need more information.") -> str:
    return (
        f"<think>\n{thought}\n</think>\n<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"
    )


def answer(text: str, thought: str = "I have found the answer.") -> str:
    return f"<think>\n{thought}\n</think>\n<answer>\n{text}\n</answer>"


def extraction(evidence: str, summary: str) -> str:
    return json.dumps({"rational": "it is relevant", "evidence": evidence, "summary": summary})


class Script:
    """Responder for one scripted server shared by the policy and the summarizer.

    Policy turns are replayed in order; extraction requests (recognised by the extractor prompt) are answered by
    `summarize(prompt)`, so parallel page visits cannot reorder the policy's script.
    """

    def __init__(
        self, turns: list[ScriptedReply | str], summarize: Callable[[str], ScriptedReply | str] | None = None
    ) -> None:
        self.turns = list(turns)
        self.summarize = summarize or (lambda prompt: extraction("Born on 10 December 1815.", "Ada was born in 1815."))
        self.policy_requests: list[dict[str, Any]] = []
        self.summarizer_requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> ScriptedReply | str:
        prompt = request["messages"][-1]["content"]
        if prompt.startswith(EXTRACTOR_MARKER):
            self.summarizer_requests.append(request)
            return self.summarize(prompt)
        self.policy_requests.append(request)
        if not self.turns:
            raise StopIteration
        return self.turns.pop(0)


def endpoint_config(base_url: str, role: str = "policy", **overrides: Any) -> EndpointConfig:
    """Fast-failing settings: tests must never wait on backoff or long timeouts."""
    values: dict[str, Any] = {
        "role": role,
        "base_url": base_url,
        "model": "scripted-model",
        "timeout_s": 2.0,
        "max_attempts": 2,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
        "sampling": SamplingParams(temperature=0.0, max_tokens=512),
    }
    values.update(overrides)
    return EndpointConfig(**values)


def well_formed(turn: ParsedTurn) -> bool:
    """A clean think + valid tool call, or think + non-empty answer: a turn `check_format` lets through."""
    if turn.issues or turn.kind not in ("tool_call", "answer"):
        return False
    return turn.kind == "tool_call" or bool(turn.answer)
