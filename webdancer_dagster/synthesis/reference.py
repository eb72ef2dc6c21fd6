"""WebDancer's released samples as QA pairs and trajectories in this project's own contracts.

The release (data/webdancer_samples) holds 200 QA pairs and 200 long-CoT trajectories, tagged `e2hqa` or
`crawlqa`. Loaded as `QAPair(source="webdancer_sample")` and `Trajectory` objects they go through the same funnel
as synthesized data, so SFT has real long trajectories even when the offline teacher is weak.

The trajectories' `functions` field declares the search argument as `queries` but requires `query`, and every
recorded call uses `query`; the ReAct prompt in the messages declares `query`. Tool calls are therefore parsed
against the prompt's schemas (`WEBDANCER_TOOL_SCHEMAS`), not against `functions`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from webdancer_dagster.agent.parser import parse_turn
from webdancer_dagster.agent.prompts import USER_PROMPT
from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, ToolSchemas
from webdancer_dagster.agent.trajectory import ChatMessage, Step, Termination, Trajectory
from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.short_cot import derive_short_cot

logger = logging.getLogger(__name__)

REFERENCE_ENDPOINT = "webdancer release (Alibaba-NLP/WebAgent, WebDancer/datasets)"
REFERENCE_MODEL = "webdancer-release"


@dataclasses.dataclass(frozen=True)
class ReferenceTrajectory:
    qa: QAPair
    trajectory: Trajectory


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not JSON: {error}") from error
    return records


def load_reference_qa(path: Path) -> list[QAPair]:
    """`sample_qa.jsonl` ({question, answer, tag}) as QA pairs of kind `reference`, WebDancer's tag kept."""
    return [
        QAPair(
            question=record["question"].strip(),
            answer=str(record["answer"]).strip(),
            kind="reference",
            source="webdancer_sample",
            reference_tag=record.get("tag"),
        )
        for record in _read_jsonl(path)
    ]


def _flatten(answer: Any) -> list[str]:
    if isinstance(answer, list):
        return [text for item in answer for text in _flatten(item)]
    return [str(answer).strip()] if str(answer).strip() else []


def reference_question(user_content: str) -> str:
    """The question of a trajectory: its first user message is the ReAct prompt followed by the question."""
    if not user_content.startswith(USER_PROMPT):
        raise ValueError(f"the first user message does not start with the ReAct prompt: {user_content[:120]!r}")
    return user_content[len(USER_PROMPT) :].strip()


def _observation(content: str) -> str:
    return content.strip().removeprefix("<tool_response>").removesuffix("</tool_response>").strip()


def reference_trajectory(
    record: Mapping[str, Any], tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS
) -> ReferenceTrajectory:
    """One `sample_traj.jsonl` record as a pair and a trajectory; steps are rebuilt by parsing each turn.

    Timings and token counts were not released and are recorded as 0.
    """
    messages = [ChatMessage(role=m["role"], content=m["content"]) for m in record["messages"]]
    if len(messages) < 3 or messages[1].role != "user":
        raise ValueError(f"a reference trajectory needs system, user and assistant messages; got {len(messages)}")
    question = reference_question(messages[1].content)
    answers = _flatten(record.get("answer"))
    if not answers:
        raise ValueError(f"reference trajectory without an answer: {question[:120]!r}")
    qa = QAPair(
        question=question,
        answer=answers[0],
        answer_aliases=answers[1:],
        kind="reference",
        source="webdancer_sample",
        reference_tag=record.get("tag"),
    )
    steps = []
    for position, message in enumerate(messages):
        if message.role != "assistant" or position < 2:
            continue
        turn = parse_turn(message.content, tool_schemas)
        following = messages[position + 1] if position + 1 < len(messages) else None
        steps.append(
            Step(
                index=len(steps),
                thought=turn.thought,
                action=turn.tool_name if turn.kind == "tool_call" else turn.kind,
                arguments=turn.arguments,
                observation=_observation(following.content) if following and following.role == "user" else None,
                answer=turn.answer,
                error=turn.error,
                format_issues=list(turn.issues),
                llm_latency_s=0.0,
                prompt_tokens=0,
                completion_tokens=0,
                context_tokens=0,
            )
        )
    final = steps[-1] if steps else None
    answered = final is not None and final.action == "answer" and bool(final.answer)
    termination: Termination = "answer" if answered else "no_answer"
    trajectory = Trajectory(
        question=question,
        messages=messages,
        steps=steps,
        answer=final.answer if answered and final is not None else None,
        termination=termination,
        llm_calls=len(steps),
        tool_calls=sum(1 for s in steps if s.action in tool_schemas and s.observation is not None),
        format_errors=sum(1 for s in steps if s.action in ("invalid", "empty")),
        prompt_tokens=0,
        completion_tokens=0,
        cached_calls=0,
        latency_s=0.0,
        endpoint=REFERENCE_ENDPOINT,
        model=REFERENCE_MODEL,
        cot_mode="long",
    )
    return ReferenceTrajectory(qa, trajectory)


def load_reference_trajectories(
    path: Path, tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS
) -> list[ReferenceTrajectory]:
    """Every record of `sample_traj.jsonl`, in file order."""
    loaded = [reference_trajectory(record, tool_schemas) for record in _read_jsonl(path)]
    logger.info("loaded %d reference trajectories from %s", len(loaded), path)
    return loaded


def released_trajectories(
    path: Path, limit: int | None = None, derive_short_cot_words: int | None = None, short_answers: bool = False
) -> list[ReferenceTrajectory]:
    """The first `limit` released trajectories, then, when `derive_short_cot_words` is set, a short-CoT copy of each
    format-valid one (`short_cot.derive_short_cot`, thoughts cut to that many words, answers cut to the answer they
    state with `short_answers`), for an instruct model."""
    released = load_reference_trajectories(path)[:limit]
    if derive_short_cot_words is None:
        return released
    derived = [
        ReferenceTrajectory(
            item.qa, derive_short_cot(item.trajectory, derive_short_cot_words, short_answer=short_answers)
        )
        for item in released
        if check_format(item.trajectory).valid
    ]
    return released + derived
