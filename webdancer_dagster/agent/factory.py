"""One way to assemble the web agent (policy, tools, tokenizer, limits, reachable hosts), shared by trajectories,
evaluation, the CLI and the DAPO rollouts."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from webdancer_dagster.agent.grammar import TurnLimits
from webdancer_dagster.agent.loop import AgentConfig, ReactAgent
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import tool_map
from webdancer_dagster.agent.trajectory import CotMode
from webdancer_dagster.agent.visit import VisitTool
from webdancer_dagster.llm.client import ChatModel, LLMEndpoint
from webdancer_dagster.web.scope import WebScope
from webdancer_dagster.web.search import TOP_K, SearchBackend

if TYPE_CHECKING:  # transformers loads in seconds: not when the definitions load
    from transformers import PreTrainedTokenizerBase

# Room past the context limit for the forced-answer request: one more turn plus its own text.
FORCED_ANSWER_MARGIN = 128


def build_web_agent(
    policy: ChatModel,
    summarizer: LLMEndpoint,
    search: SearchBackend,
    scope: WebScope,
    tokenizer: PreTrainedTokenizerBase,
    *,
    n_ctx: int,
    max_llm_calls: int = 20,
    cot_mode: CotMode = "short",
    current_date: dt.date | None = None,
    constrained: bool = False,
    turn_limits: TurnLimits | None = None,
    seed: int | None = None,
    search_results_per_query: int = TOP_K,
) -> ReactAgent:
    """A ReAct agent with WebDancer's `search` (over `search`, less the scope's blocked hosts) and `visit` (the
    scope's hosts) tools whose prompts always fit in `n_ctx` tokens.

    `constrained` samples every turn under the turn grammar (a short-CoT teacher on llama.cpp or vLLM); `seed` makes
    every request's sample reproducible (DAPO rollouts); `search_results_per_query` is what `search` returns a query
    and what the prompt says it returns."""
    max_tokens = policy.config.sampling.max_tokens
    return ReactAgent(
        policy,
        tool_map(SearchTool(scope.search(search), search_results_per_query), VisitTool(summarizer, scope.fetch)),
        tokenizer,
        AgentConfig(
            max_llm_calls=max_llm_calls,
            max_context_tokens=n_ctx - 2 * max_tokens - FORCED_ANSWER_MARGIN,
            cot_mode=cot_mode,
            constrained=constrained,
            **({"current_date": current_date} if current_date is not None else {}),
            **({"turn_limits": turn_limits} if turn_limits is not None else {}),
            seed=seed,
            search_results_per_query=search_results_per_query,
        ),
    )
