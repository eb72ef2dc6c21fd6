"""The whole agent with the real offline model: llama.cpp serving SmolLM2, real search and visit on a tiny web."""

from __future__ import annotations

import pytest
from scripted_turns import TEST_DATE

from webdancer_dagster.agent.loop import AgentConfig, ReactAgent
from webdancer_dagster.agent.prompts import system_message, user_message
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import tool_map
from webdancer_dagster.agent.trajectory import TERMINATIONS, Trajectory
from webdancer_dagster.agent.visit import VisitTool
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.web.search import LocalSearch

pytestmark = pytest.mark.slow


def test_smollm2_runs_the_agent_end_to_end(tiny_web, tokenizer, tmp_path):
    config = ModelServerConfig(model_path=str(find_smollm2_gguf()), n_ctx=4096, log_path=str(tmp_path / "llama.log"))
    with ModelServer(config) as server:

        def endpoint(role: str, max_tokens: int) -> LLMEndpoint:
            sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
            return LLMEndpoint(
                EndpointConfig(
                    role=role, base_url=server.base_url, model=server.model, sampling=sampling, timeout_s=120
                )
            )

        tools = tool_map(
            SearchTool(LocalSearch(tiny_web.index_dir)),
            VisitTool(endpoint("summarizer", 128), tiny_web.policy(), max_page_chars=2000),
        )
        agent = ReactAgent(
            endpoint("policy", 160),
            tools,
            tokenizer,
            AgentConfig(max_llm_calls=3, max_context_tokens=3000, current_date=TEST_DATE),
        )
        trajectory = agent.run("When was Ada Lovelace born?")

    assert trajectory.termination in TERMINATIONS
    assert trajectory.model == server.model == "SmolLM2-135M-Instruct.Q4_1"
    assert 1 <= trajectory.llm_calls <= 3
    assert len(trajectory.steps) == trajectory.llm_calls
    assert trajectory.completion_tokens > 0 and trajectory.prompt_tokens > 700  # the tool prompt is in every call
    messages = trajectory.messages
    assert (messages[0].content, messages[1].content) == (
        system_message(TEST_DATE),
        user_message("When was Ada Lovelace born?"),
    )
    roles = [m.role for m in messages[2:]]
    assert roles[0::2] == ["assistant"] * len(roles[0::2]) and roles[1::2] == ["user"] * len(roles[1::2])
    assert all(m.content.startswith("<tool_response>\n") for m in messages[3::2])
    if trajectory.termination in ("answer", "context_limit_forced_answer"):
        assert trajectory.answer
    else:
        assert trajectory.answer is None
    assert all(step.context_tokens > 700 and step.llm_latency_s > 0 for step in trajectory.steps)
    assert Trajectory.model_validate_json(trajectory.model_dump_json()) == trajectory
