"""The WebDancer ReAct loop: think, call a tool or answer, read the observation, repeat within limits.

The loop is the same for trajectory sampling (a teacher endpoint), RL rollouts and evaluation (the policy):
only the endpoint and the CoT mode change, and in rejection sampling the short-CoT teacher may write every turn
under the turn grammar (`constrained`, see `webdancer_dagster.agent.grammar`); evaluation never does. It never
crashes on model output or tool failures; it returns a `Trajectory` with a termination label (see
`webdancer_dagster.agent.trajectory`), or raises `LLMEndpointError` naming the endpoint when the model server
itself fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, model_validator

from webdancer_dagster.agent.grammar import TurnLimits, turn_grammar
from webdancer_dagster.agent.parser import ParsedTurn, parse_turn
from webdancer_dagster.agent.prompts import FORCED_ANSWER_PROMPT, system_message, tool_response, user_message
from webdancer_dagster.agent.tools import Tool, ToolOutput
from webdancer_dagster.agent.trajectory import ChatMessage, CotMode, Step, Termination, Trajectory
from webdancer_dagster.llm.client import ChatModel, ChatResult
from webdancer_dagster.threads import worker_pool
from webdancer_dagster.web.errors import FetchError, ToolInputError
from webdancer_dagster.web.search import TOP_K

if TYPE_CHECKING:  # importing transformers takes seconds; the agent only calls the tokenizer it is given
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

StepCallback = Callable[[Step], None]
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)


class AgentConfig(BaseModel):
    """Limits and format settings of one agent; the defaults follow WebDancer's released inference code."""

    model_config = ConfigDict(frozen=True)

    max_llm_calls: int = Field(20, ge=1, description="assistant turns per question, forced answer included")
    max_context_tokens: int = Field(
        31 * 1024 - 500, ge=64, description="prompt tokens (model tokenizer) past which an answer is forced"
    )
    max_consecutive_format_errors: int = Field(3, ge=1, description="unusable turns in a row before giving up")
    cot_mode: CotMode = "short"
    current_date: dt.date = Field(
        default_factory=dt.date.today, description="date in the system prompt; pin it for reproducible reruns"
    )
    stop: tuple[str, ...] = ("\n<tool_response>", "<tool_response>")
    constrained: bool = Field(
        False,
        description="sample every turn under the turn grammar (short CoT; an endpoint that takes a grammar): "
        "the teacher in rejection sampling, never evaluation",
    )
    turn_limits: TurnLimits = Field(default_factory=TurnLimits, description="length bounds of constrained turns")
    search_results_per_query: int = Field(
        TOP_K, ge=1, description="hits the search tool returns a query, as the prompt tells the model (WebDancer: 10)"
    )
    seed: int | None = Field(
        None, description="sampling seed of every request (request seed = seed + sample_index); None: the endpoint's"
    )

    @model_validator(mode="after")
    def _check_constrained(self) -> AgentConfig:
        if self.constrained and self.cot_mode != "short":
            raise ValueError("constrained decoding is for short CoT: a long-CoT teacher's reasoning is not the turn")
        return self


def strip_thoughts(content: str) -> str:
    """An assistant turn without its <think> block: what a reasoning teacher sees of its own past turns."""
    return _THINK_BLOCK.sub("", content).strip()


class ReactAgent:
    """Runs questions through the loop against one endpoint and a set of tools. Safe to share across threads."""

    def __init__(
        self,
        llm: ChatModel,
        tools: Mapping[str, Tool],
        tokenizer: PreTrainedTokenizerBase,
        config: AgentConfig | None = None,
    ) -> None:
        self.llm = llm
        self.tools = dict(tools)
        self.tokenizer = tokenizer
        self.config = config or AgentConfig()
        self._tool_schemas = {name: tool.parameters for name, tool in self.tools.items()}
        self._sampling = llm.config.sampling.model_copy(
            update={
                "stop": tuple(dict.fromkeys((*llm.config.sampling.stop, *self.config.stop))),
                **({"seed": self.config.seed} if self.config.seed is not None else {}),
            }
        )
        self._tokenizer_lock = threading.Lock()  # HF fast tokenizers are not safe for concurrent calls
        self._grammar: str | None = None
        self._answer_grammar: str | None = None
        if self.config.constrained:
            if not getattr(llm, "supports_grammar", False):
                raise ValueError(
                    f"{llm.config.describe()} cannot sample under a grammar (server kind "
                    f"{getattr(llm.config, 'server_kind', 'unknown')!r}): set constrained=False"
                )
            self._grammar = turn_grammar(self._tool_schemas, self.config.turn_limits)
            self._answer_grammar = turn_grammar({}, self.config.turn_limits)  # the forced-answer reply

    def count_tokens(self, messages: Sequence[Mapping[str, str]]) -> int:
        """Prompt size as the model sees it: its own chat template plus the generation prompt."""
        with self._tokenizer_lock:
            ids = self.tokenizer.apply_chat_template(
                list(messages), tokenize=True, add_generation_prompt=True, return_dict=False
            )
        return len(ids)

    def run(self, question: str, *, sample_index: int = 0, on_step: StepCallback | None = None) -> Trajectory:
        """Answer one question; `sample_index` draws (and caches) a distinct sample for rejection sampling."""
        return _Run(self, question, sample_index, on_step).execute()

    def _view(self, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """What the endpoint is sent: in long-CoT mode the teacher sees past actions, not past thoughts."""
        if self.config.cot_mode == "short":
            return messages
        return [
            {"role": m["role"], "content": strip_thoughts(m["content"])} if m["role"] == "assistant" else m
            for m in messages
        ]

    def _turn_text(self, result: ChatResult) -> str:
        """The assistant turn to record; in long-CoT mode the teacher's reasoning becomes the thought."""
        if self.config.cot_mode == "long" and result.reasoning_content:
            return f"<think>\n{result.reasoning_content.strip()}\n</think>\n{strip_thoughts(result.content)}"
        return result.content

    def _call_tool(self, name: str, arguments: dict) -> tuple[str, str | None]:
        """Run a tool; bad input and unreachable pages become text for the model, never exceptions."""
        tool = self.tools[name]
        try:
            output = tool.call(arguments)
        except (ToolInputError, FetchError) as error:
            logger.info("tool %s failed: %s", name, error)
            return f"Error: {name} failed: {error}", str(error)
        if not isinstance(output, ToolOutput):
            raise TypeError(f"tool {name!r} returned {type(output).__name__}, expected ToolOutput")
        return output.text, "; ".join(output.errors) or None


class _Run:
    """State of one question's run; keeps `ReactAgent.run` readable."""

    def __init__(self, agent: ReactAgent, question: str, sample_index: int, on_step: StepCallback | None) -> None:
        self.agent = agent
        self.question = question
        self.sample_index = sample_index
        self.on_step = on_step
        self.messages: list[dict[str, str]] = [
            {"role": "system", "content": system_message(agent.config.current_date)},
            {"role": "user", "content": user_message(question, agent.config.search_results_per_query)},
        ]
        self.steps: list[Step] = []
        self.results: list[ChatResult] = []
        self.forced_at_tokens: int | None = None
        self.started = time.perf_counter()

    def execute(self) -> Trajectory:
        config = self.agent.config
        consecutive_errors = 0
        context_tokens = self.agent.count_tokens(self.messages)
        if context_tokens > config.max_context_tokens:
            raise ValueError(
                f"the prompt for this question is {context_tokens} tokens, over max_context_tokens="
                f"{config.max_context_tokens}: raise the limit"
            )
        for call_index in range(config.max_llm_calls):
            if context_tokens > config.max_context_tokens:
                return self._forced_answer(context_tokens)
            parsed, result, llm_latency = self._generate(self.agent._grammar)
            step = self._step(parsed, result, llm_latency, context_tokens)
            if parsed.kind == "empty":
                return self._finish(step, "no_answer")
            self.messages.append({"role": "assistant", "content": parsed.text})
            if parsed.kind == "answer":
                return self._finish(step, "answer" if parsed.answer else "no_answer")
            if parsed.kind == "invalid":
                consecutive_errors += 1
                step.error = parsed.error
                if consecutive_errors >= config.max_consecutive_format_errors:
                    return self._finish(step, "format_error")
                step.observation = parsed.error
            else:
                consecutive_errors = 0
                if call_index == config.max_llm_calls - 1:
                    return self._finish(step, "max_llm_calls")  # no turn left to read the observation
                started = time.perf_counter()
                step.observation, step.error = self.agent._call_tool(parsed.tool_name, parsed.arguments)
                step.tool_latency_s = time.perf_counter() - started
            self.messages.append({"role": "user", "content": tool_response(step.observation)})
            self._emit(step)
            context_tokens = self.agent.count_tokens(self.messages)
        return self._finish(None, "max_llm_calls")

    def _generate(self, grammar: str | None) -> tuple[ParsedTurn, ChatResult, float]:
        started = time.perf_counter()
        constraint = {"grammar": grammar} if grammar is not None else {}  # only endpoints that take one see it
        result = self.agent.llm.chat(
            self.agent._view(self.messages), sampling=self.agent._sampling, sample_index=self.sample_index, **constraint
        )
        latency = time.perf_counter() - started
        self.results.append(result)
        return parse_turn(self.agent._turn_text(result), self.agent._tool_schemas), result, latency

    def _step(self, parsed: ParsedTurn, result: ChatResult, latency: float, context_tokens: int) -> Step:
        action = parsed.tool_name if parsed.kind == "tool_call" else parsed.kind
        return Step(
            index=len(self.steps),
            thought=parsed.thought,
            action=action,
            arguments=parsed.arguments,
            answer=parsed.answer,
            format_issues=list(parsed.issues),
            llm_latency_s=latency,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            context_tokens=context_tokens,
            finish_reason=result.finish_reason,
            cached=result.cached,
        )

    def _emit(self, step: Step) -> None:
        self.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)

    def _forced_answer(self, context_tokens: int) -> Trajectory:
        """WebDancer's recovery: replace the last observation with a request for the final answer."""
        self.forced_at_tokens = context_tokens
        logger.info("context %d > %d tokens: forcing an answer", context_tokens, self.agent.config.max_context_tokens)
        self.messages[-1] = {"role": "user", "content": FORCED_ANSWER_PROMPT}
        context_tokens = self.agent.count_tokens(self.messages)
        parsed, result, latency = self._generate(self.agent._answer_grammar)
        step = self._step(parsed, result, latency, context_tokens)
        step.forced = True
        if parsed.kind == "empty":
            return self._finish(step, "no_answer")
        self.messages.append({"role": "assistant", "content": parsed.text})
        if parsed.kind != "answer":
            step.error = "no <answer> in the reply to the forced-answer request"
            return self._finish(step, "format_error")
        return self._finish(step, "context_limit_forced_answer" if parsed.answer else "no_answer")

    def _finish(self, last_step: Step | None, termination: Termination) -> Trajectory:
        if last_step is not None:
            self._emit(last_step)
        answer = last_step.answer if last_step is not None and last_step.answer else None
        llm = self.agent.llm.config
        return Trajectory(
            question=self.question,
            messages=[ChatMessage(**m) for m in self.messages],
            steps=self.steps,
            answer=answer if termination in ("answer", "context_limit_forced_answer") else None,
            termination=termination,
            llm_calls=len(self.results),
            tool_calls=sum(1 for s in self.steps if s.action in self.agent.tools and s.observation is not None),
            format_errors=sum(1 for s in self.steps if s.action in ("invalid", "empty")),
            prompt_tokens=sum(r.prompt_tokens for r in self.results),
            completion_tokens=sum(r.completion_tokens for r in self.results),
            cached_calls=sum(1 for r in self.results if r.cached),
            latency_s=time.perf_counter() - self.started,
            endpoint=llm.describe(),
            model=llm.model,
            cot_mode=self.agent.config.cot_mode,
            sample_index=self.sample_index,
            forced_at_tokens=self.forced_at_tokens,
            constrained=self.agent.config.constrained,
        )


def run_agents(
    agent: ReactAgent,
    questions: Sequence[str],
    *,
    samples_per_question: int = 1,
    max_workers: int | None = None,
    on_step: Callable[[int, Step], None] | None = None,
) -> list[Trajectory]:
    """Run many questions at once (threads), bounded by the endpoint's concurrency limit.

    Returns trajectories in job order: question 0 samples 0..k-1, then question 1, and so on. `on_step`
    receives the job index with each step. The first `LLMEndpointError` cancels the jobs not yet started.
    """
    jobs = [(question, sample) for question in questions for sample in range(samples_per_question)]
    if not jobs:
        return []
    workers = min(len(jobs), max_workers or agent.llm.max_concurrency)

    def job(index: int) -> Trajectory:
        question, sample = jobs[index]
        callback = None if on_step is None else (lambda step: on_step(index, step))
        return agent.run(question, sample_index=sample, on_step=callback)

    with worker_pool(workers, thread_name_prefix="agent") as pool:
        futures = [pool.submit(job, index) for index in range(len(jobs))]
        try:
            return [future.result() for future in futures]
        except Exception:  # an interrupt cancels them in worker_pool
            for future in futures:
                future.cancel()
            raise
