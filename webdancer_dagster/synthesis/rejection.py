"""Rejection sampling: up to k agent runs per QA pair, each judged by the funnel's first two stages, and the
`trajectories` table that stores every attempt with its verdicts.

A pair stops at its first attempt that is (a) valid and (b) correct (`funnel.check_validity`,
`funnel.check_correctness`); rejected attempts are kept too, so a reader sees what the teacher got wrong and a
resumed run rewrites the same rows (`trajectory_id`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, ToolSchemas
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.shared.hashing import stable_id
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.funnel import StageVerdict, check_correctness, check_validity
from webdancer_dagster.threads import worker_pool

logger = logging.getLogger(__name__)

RunAgent = Callable[[str, int], Trajectory]


def trajectory_id(qa_id: str, trajectory: Trajectory) -> str:
    """Stable per (pair, model, CoT mode, sample): a resumed sampling run rewrites the same rows."""
    return stable_id(qa_id, trajectory.model, trajectory.cot_mode, str(trajectory.sample_index), prefix="traj-")


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One sampled trajectory for one QA pair with its validity and (if valid) correctness verdicts."""

    qa: QAPair
    trajectory: Trajectory
    validity: StageVerdict
    correctness: StageVerdict | None = None

    @property
    def id(self) -> str:
        return trajectory_id(self.qa.id, self.trajectory)

    @property
    def accepted(self) -> bool:
        """Valid and correct: what rejection sampling stops at."""
        return self.validity.passed and self.correctness is not None and self.correctness.passed


def assess_attempt(
    qa: QAPair,
    trajectory: Trajectory,
    judge: LLMEndpoint | None,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> Attempt:
    """Stages (a) and (b); the judge is only asked about valid trajectories."""
    validity = check_validity(trajectory, tool_schemas)
    correctness = check_correctness(qa, trajectory, judge) if validity.passed else None
    return Attempt(qa, trajectory, validity, correctness)


def rejection_sample(
    pairs: Sequence[QAPair],
    run_agent: RunAgent,
    judge: LLMEndpoint | None,
    *,
    k: int,
    max_workers: int = 1,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> list[Attempt]:
    """Up to `k` runs per pair (`run_agent(question, sample_index)`), stopping at the first accepted one.

    Pairs run in parallel on `max_workers` threads, attempts of one pair in order. Every attempt is returned,
    pair by pair in input order, so the caller stores rejected samples too.
    """
    if k < 1:
        raise ValueError(f"rejection sampling needs k >= 1, got {k}")

    def sample(qa: QAPair) -> list[Attempt]:
        attempts = []
        for sample_index in range(k):
            attempt = assess_attempt(qa, run_agent(qa.question, sample_index), judge, tool_schemas)
            attempts.append(attempt)
            if attempt.accepted:
                break
        return attempts

    if not pairs:
        return []
    with worker_pool(min(max_workers, len(pairs)), thread_name_prefix="rejection") as pool:
        per_pair = list(pool.map(sample, pairs))
    attempts = [attempt for group in per_pair for attempt in group]
    solved = sum(any(a.accepted for a in group) for group in per_pair)
    logger.info("rejection sampling: %d pairs, %d attempts, %d pairs solved", len(pairs), len(attempts), solved)
    return attempts


def attempts_frame(attempts: Sequence[Attempt]) -> pd.DataFrame:
    """The `trajectories` table: every attempt with its verdicts; nested data as JSON text."""
    rows = []
    for attempt in attempts:
        trajectory, correctness = attempt.trajectory, attempt.correctness
        rows.append(
            {
                "trajectory_id": attempt.id,
                "qa_id": attempt.qa.id,
                "sample_index": trajectory.sample_index,
                "cot_mode": trajectory.cot_mode,
                "constrained": trajectory.constrained,
                "model": trajectory.model,
                "endpoint": trajectory.endpoint,
                "termination": trajectory.termination,
                "steps": len(trajectory.steps),
                "tool_calls": trajectory.tool_calls,
                "prompt_tokens": trajectory.prompt_tokens,
                "completion_tokens": trajectory.completion_tokens,
                "accepted": attempt.accepted,
                "validity_reason": attempt.validity.reason,
                "correctness_reason": correctness.reason if correctness else "",
                "judge_raw": correctness.raw if correctness else "",
                "validity": json.dumps(dataclasses.asdict(attempt.validity)),
                "correctness": json.dumps(dataclasses.asdict(correctness)) if correctness else "",
                "trajectory": trajectory.model_dump_json(),
            }
        )
    return pd.DataFrame(rows)


def attempts_from_frame(frame: pd.DataFrame, pairs: Mapping[str, QAPair]) -> list[Attempt]:
    """Read `attempts_frame` output back; `pairs` maps QA id to pair (a missing id raises KeyError)."""
    attempts = []
    for row in frame.to_dict("records"):
        correctness = StageVerdict(**json.loads(row["correctness"])) if row["correctness"] else None
        attempts.append(
            Attempt(
                qa=pairs[row["qa_id"]],
                trajectory=Trajectory.model_validate_json(row["trajectory"]),
                validity=StageVerdict(**json.loads(row["validity"])),
                correctness=correctness,
            )
        )
    return attempts
