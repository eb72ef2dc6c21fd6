"""The record one agent run leaves behind: chat messages for training, per-step details for analysis.

Termination labels (exactly one per trajectory):

- `answer`: an assistant turn produced `<answer>` with non-empty text, within the LLM-call budget.
- `context_limit_forced_answer`: the conversation passed `max_context_tokens`; the last observation was replaced
  by the forced-answer request (WebDancer's wording) and the reply held a non-empty `<answer>`.
- `max_llm_calls`: `max_llm_calls` assistant turns were generated without a final answer.
- `format_error`: `max_consecutive_format_errors` turns in a row could not be acted on (no tool call or answer,
  unrepairable JSON, unknown tool, invalid arguments), or the reply to the forced-answer request held no
  `<answer>` tag.
- `no_answer`: the model ended the conversation without an answer: an empty completion, or an `<answer>` whose
  text is empty (also after the forced-answer request).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Termination = Literal["answer", "context_limit_forced_answer", "max_llm_calls", "format_error", "no_answer"]
TERMINATIONS: tuple[Termination, ...] = (
    "answer",
    "context_limit_forced_answer",
    "max_llm_calls",
    "format_error",
    "no_answer",
)
CotMode = Literal["short", "long"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class Step(BaseModel):
    """One assistant turn and what followed it."""

    index: int
    thought: str
    action: Literal["search", "visit", "answer", "invalid", "empty"] | str = Field(
        description="tool name for tool calls, else the turn kind"
    )
    arguments: dict[str, Any] | None = None
    observation: str | None = Field(None, description="text returned to the model (without <tool_response> tags)")
    answer: str | None = None
    error: str | None = Field(None, description="why the turn or its tool call failed, if it did")
    format_issues: list[str] = Field(default_factory=list)
    forced: bool = Field(False, description="this turn answered the forced-answer request")
    llm_latency_s: float
    tool_latency_s: float = 0.0
    prompt_tokens: int
    completion_tokens: int
    context_tokens: int = Field(description="prompt tokens by the model's own tokenizer before this turn")
    finish_reason: str | None = None
    cached: bool = False


class Trajectory(BaseModel):
    """A complete agent run, serialisable with `model_dump_json()` for the warehouse."""

    question: str
    messages: list[ChatMessage]
    steps: list[Step]
    answer: str | None
    termination: Termination
    llm_calls: int
    tool_calls: int
    format_errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_calls: int
    latency_s: float
    endpoint: str
    model: str
    cot_mode: CotMode
    sample_index: int = 0
    forced_at_tokens: int | None = Field(
        None, description="context size that triggered the forced-answer request, if it was sent"
    )
    constrained: bool = Field(False, description="every turn was sampled under the turn grammar")
