"""The one meaning of a format-valid trajectory, for every stage that asks.

The funnel's validity stage keeps only format-valid trajectories for SFT, DAPO pays its 0.1 format reward for one,
and evaluation reports the share of runs that were one. All three call `check_format`, so "valid" cannot drift
apart between the data a model is trained on, the reward it is trained with and the score it is given.

Valid means: the system prompt and the question, then alternating assistant turns and `<tool_response>`
observations; every assistant turn parses cleanly (`<think>` then exactly one tool call or answer, no repaired
JSON, no stray text); every tool call names a real tool with valid arguments; a non-empty answer ends it; and no
answer was forced by the context limit (the forced-answer request is not part of the format).
"""

from __future__ import annotations

import dataclasses

from webdancer_dagster.agent.parser import OBSERVATION_TAG, ParsedTurn, parse_turn
from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, ToolSchemas
from webdancer_dagster.agent.trajectory import Trajectory

OBSERVATION_OPEN, OBSERVATION_CLOSE = OBSERVATION_TAG, "</tool_response>"


@dataclasses.dataclass(frozen=True)
class FormatCheck:
    """When the trajectory is not valid, `reason` says why (`forced_answer`, `bad_structure`, `format_error`,
    `unknown_tool`, `invalid_arguments` or `no_answer`) and `detail` says where, for a person to read."""

    valid: bool
    reason: str = ""
    detail: str = ""


def parsed_turns(
    trajectory: Trajectory, tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS
) -> list[tuple[ParsedTurn, str | None]]:
    """Each assistant turn after the question, parsed, with the observation text that follows it (None after the
    last turn), without its `<tool_response>` wrapper."""
    messages = trajectory.messages
    turns = []
    for position, message in enumerate(messages):
        if message.role != "assistant" or position < 2:
            continue
        following = messages[position + 1].content if position + 1 < len(messages) else None
        observation = None
        if following is not None:
            observation = following.strip().removeprefix(OBSERVATION_OPEN).removesuffix(OBSERVATION_CLOSE).strip()
        turns.append((parse_turn(message.content, tool_schemas), observation))
    return turns


def check_format(trajectory: Trajectory, tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS) -> FormatCheck:
    """Whether the whole conversation is exactly WebDancer's format; the first problem found says why not."""

    def fail(reason: str, detail: str) -> FormatCheck:
        return FormatCheck(False, reason, detail)

    if trajectory.termination == "context_limit_forced_answer" or trajectory.forced_at_tokens is not None:
        return fail("forced_answer", f"the answer was forced at {trajectory.forced_at_tokens} context tokens")
    messages = trajectory.messages
    if [m.role for m in messages[:2]] != ["system", "user"] or len(messages) < 3:
        return fail("bad_structure", "expected the system prompt, the question, then at least one assistant turn")
    for position, message in enumerate(messages[2:], start=2):
        expected = "assistant" if position % 2 == 0 else "user"
        if message.role != expected:
            return fail("bad_structure", f"message {position} is from {message.role}, expected {expected}")
    if messages[-1].role != "assistant":
        return fail("no_answer", f"the conversation ends with a {messages[-1].role} message, not an answer")
    turns = parsed_turns(trajectory, tool_schemas)
    for number, (turn, _observation) in enumerate(turns, start=1):
        if turn.kind == "empty":
            return fail("format_error", f"turn {number} is empty")
        if turn.kind == "invalid":
            if turn.tool_name is not None and turn.tool_name not in tool_schemas:
                return fail("unknown_tool", f"turn {number} calls {turn.tool_name!r}")
            reason = "invalid_arguments" if turn.tool_name is not None else "format_error"
            return fail(reason, f"turn {number}: {turn.error}")
        if turn.issues:
            return fail("format_error", f"turn {number}: {'; '.join(turn.issues)}")
        last = number == len(turns)
        if turn.kind == "answer":
            if not last:
                return fail("bad_structure", f"turn {number} answers, but the conversation goes on")
            if not turn.answer:
                return fail("no_answer", f"turn {number} has an empty <answer>")
        elif last:
            return fail("no_answer", "the conversation ends with a tool call instead of an answer")
        elif not messages[2 * number + 1].content.lstrip().startswith(OBSERVATION_OPEN):
            return fail("bad_structure", f"the reply to turn {number}'s tool call is not a <tool_response>")
    return FormatCheck(True)
