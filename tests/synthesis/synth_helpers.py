"""Helpers for synthesis tests: a tiny crawl graph, endpoints on the scripted server, trajectory builders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from webdancer_dagster.agent.prompts import system_message, tool_response, user_message
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.synthesis.reference import reference_trajectory
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer

WIKI = "http://wiki.webdancer.test/wiki"
BENCH = "http://musique.webdancer.test/wiki"
ADA = f"{WIKI}/ada_lovelace.html"
BABBAGE = f"{WIKI}/charles_babbage.html"
ENGINE = f"{WIKI}/analytical_engine.html"
STUB = f"{WIKI}/stub.html"
BENCH_PAGE = f"{BENCH}/ada_lovelace.html"

PAGE_TEXT = {
    ADA: "Ada Lovelace was an English mathematician and writer, born in London in 1815. She worked with "
    "Charles Babbage on his proposed mechanical computer and published the first algorithm meant for it.",
    BABBAGE: "Charles Babbage was an English polymath and mechanical engineer, born in 1791 in Walworth. He "
    "originated the concept of a digital programmable computer and designed the Analytical Engine.",
    ENGINE: "The Analytical Engine was a proposed mechanical general-purpose computer designed by Charles "
    "Babbage. It was first described in 1837 and was never completed; Babbage's son built a part of it later.",
    STUB: "Too short.",
    BENCH_PAGE: "Ada Lovelace (benchmark copy) was a mathematician whose notes on the engine were published in "
    "1843. This paragraph belongs to a benchmark and must never be read by synthesis.",
}
TITLES = {ADA: "Ada Lovelace", BABBAGE: "Charles Babbage", ENGINE: "Analytical Engine", STUB: "Stub"}


def endpoint(server: ScriptedLLMServer, role: str = "teacher_short", **overrides: Any) -> LLMEndpoint:
    """An endpoint that fails fast: one try, short timeout, no cache."""
    values: dict[str, Any] = {
        "role": role,
        "base_url": server.base_url,
        "model": f"scripted-{role}",
        "timeout_s": 5.0,
        "max_attempts": 1,
        "backoff_initial_s": 0.0,
        "sampling": SamplingParams(temperature=0.0, max_tokens=2048),
    }
    values.update(overrides)
    return LLMEndpoint(EndpointConfig(**values))


def user_prompt(request: dict[str, Any]) -> str:
    """The last user message of a chat request the scripted server received."""
    return [m["content"] for m in request["messages"] if m["role"] == "user"][-1]


def make_trajectory(
    question: str, turns: Sequence[tuple[str, str | None]], *, sample_index: int = 0, model: str = "scripted"
) -> Trajectory:
    """A trajectory from assistant turns and the observation after each (None after the last turn)."""
    messages = [
        {"role": "system", "content": system_message("2025-01-01")},
        {"role": "user", "content": user_message(question)},
    ]
    for text, observation in turns:
        messages.append({"role": "assistant", "content": text})
        if observation is not None:
            messages.append({"role": "user", "content": tool_response(observation)})
    built = reference_trajectory({"messages": messages, "answer": [["unused"]]}).trajectory
    return built.model_copy(update={"sample_index": sample_index, "model": model, "cot_mode": "short"})


def search_turn(*queries: str) -> str:
    call = json.dumps({"name": "search", "arguments": {"query": list(queries)}})
    return f"<think>I should search.</think>\n<tool_call>\n{call}\n</tool_call>"


def answer_turn(answer: str) -> str:
    return f"<think>I have found it.</think>\n<answer>{answer}</answer>"
