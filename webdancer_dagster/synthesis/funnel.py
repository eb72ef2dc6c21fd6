"""WebDancer's three-stage funnel from sampled trajectories to SFT data and the RL pool.

A trajectory must be (a) valid, i.e. every turn is in WebDancer's format, every tool call names a real tool with
valid arguments and an answer ends it, and (b) correct per the judge; rejection sampling (`rejection.py`) draws
attempts until one passes both. Accepted attempts then face (c) quality: cheap rules first (too many or too few
actions, the same call repeated, an answer no observation supports), then an LLM grade on four criteria. What
survives is SFT data; QA pairs that no trajectory got through, plus a configurable held-out share, form the RL
pool. Every stage is a pure function over plain data; a drop always keeps stage and reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, ToolSchemas
from webdancer_dagster.agent.trajectory import CotMode, Trajectory
from webdancer_dagster.agent.validity import check_format, parsed_turns
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.shared.answers import content_words, normalize_answer
from webdancer_dagster.shared.judge import judge_answer
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.shared.split import id_fraction
from webdancer_dagster.synthesis.replies import JSON_FORMAT_HELP, JsonFormat, ask_json
from webdancer_dagster.threads import worker_pool

if TYPE_CHECKING:  # rejection sampling builds attempts from the stages here; the funnel only reads them
    from webdancer_dagster.synthesis.rejection import Attempt

logger = logging.getLogger(__name__)

Stage = Literal["validity", "correctness", "quality"]
STAGES: tuple[Stage, ...] = ("validity", "correctness", "quality")
_YES_NO = frozenset({"yes", "no"})


class FunnelConfig(BaseModel):
    """Thresholds of the quality stage (validity and correctness have none to tune)."""

    model_config = ConfigDict(frozen=True)

    min_actions: int = Field(1, ge=0, description="fewer tool calls: the answer did not come from the web")
    max_actions: int = Field(10, ge=1, description="more tool calls: a wandering search")
    max_identical_calls: int = Field(1, ge=1, description="times one exact call (tool and arguments) may occur")
    min_answer_support: float = Field(
        0.5, ge=0, le=1, description="share of the answer's content words not in the question that observations hold"
    )
    min_grade_mean: float = Field(3.0, ge=1, le=5, description="mean of the four 1-5 LLM grades to keep")
    min_grade_each: float = Field(2.0, ge=1, le=5, description="lowest single grade to keep")
    thought_chars: int = Field(1500, ge=50, description="thought text shown to the grader per step")
    observation_chars: int = Field(1500, ge=50, description="observation text shown to the grader per step")
    json_format: JsonFormat = Field("object", description=JSON_FORMAT_HELP)


@dataclasses.dataclass(frozen=True)
class StageVerdict:
    """One stage's decision on one trajectory; `raw` is the judge's or grader's reply as received. Stored as JSON in
    the `trajectories` table (`rejection.attempts_frame`), so its field names are part of that table."""

    stage: Stage
    passed: bool
    reason: str = ""
    detail: str = ""
    raw: str = ""
    method: str = ""
    scores: Mapping[str, float] | None = None


def _passed(stage: Stage, detail: str = "", **extra: Any) -> StageVerdict:
    return StageVerdict(stage, True, detail=detail, **extra)


def check_validity(trajectory: Trajectory, tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS) -> StageVerdict:
    """Stage (a): the conversation is exactly WebDancer's format (`agent.validity.check_format`, the one meaning
    of valid that the RL format reward and evaluation also use), so SFT teaches nothing malformed.

    Reasons: `forced_answer`, `bad_structure`, `format_error`, `unknown_tool`, `invalid_arguments`, `no_answer`.
    """
    check = check_format(trajectory, tool_schemas)
    return StageVerdict("validity", check.valid, check.reason, check.detail)


def check_correctness(qa: QAPair, trajectory: Trajectory, judge: LLMEndpoint | None) -> StageVerdict:
    """Stage (b): `judge_answer` finds the trajectory's answer equivalent to the gold answer (or one of its
    aliases): by rule, or by `judge` where the rules leave it open and a capable judge is given.

    Reasons: `no_answer`, `incorrect`, `judge_unreadable` (no verdict in the reply nor in the retry's),
    `judge_rejected` (the endpoint refused the request).
    """
    if not trajectory.answer:
        return StageVerdict("correctness", False, "no_answer", f"termination {trajectory.termination}")
    judgement = judge_answer(qa.question, trajectory.answer, qa.answers, judge)
    common = {"raw": judgement.raw, "method": judgement.method}
    if judgement.flag == "rejected":
        return StageVerdict("correctness", False, "judge_rejected", judgement.last_reply, **common)
    if judgement.flag == "unparsed":
        detail = f"no Correct/Incorrect in {judgement.attempts} replies"
        return StageVerdict("correctness", False, "judge_unreadable", detail, **common)
    if not judgement.correct:
        detail = f"{trajectory.answer[:200]!r} vs {qa.answer!r}"
        return StageVerdict("correctness", False, "incorrect", detail, **common)
    return _passed("correctness", **common)


def answer_support(question: str, predicted: str, gold_answers: Sequence[str], observations: Sequence[str]) -> float:
    """How much of the answer the observations contain: the best share, over the predicted and gold answers,
    of content words that the question does not already contain and some observation does.

    Yes/no answers and answers made only of question words cannot be checked by words and count as supported.
    """
    if any(normalize_answer(gold) in _YES_NO for gold in gold_answers):
        return 1.0
    seen = set(content_words(" ".join(observations)))
    asked = set(content_words(question))
    best = 0.0
    for answer in (predicted, *gold_answers):
        new_words = [word for word in content_words(answer) if word not in asked]
        if not new_words:
            return 1.0
        best = max(best, sum(word in seen for word in new_words) / len(new_words))
    return best


def _canonical(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.lower().split())
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in sorted(value.items())}
    return value


def check_quality_rules(
    qa: QAPair,
    trajectory: Trajectory,
    config: FunnelConfig,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> StageVerdict:
    """Stage (c), rules: `too_few_actions`, `too_many_actions`, `repeated_call`, `unsupported_answer`.

    Unknown tools never reach this stage: validity drops them as `unknown_tool`.
    """

    def fail(reason: str, detail: str) -> StageVerdict:
        return StageVerdict("quality", False, reason, detail, method="rules")

    turns = parsed_turns(trajectory, tool_schemas)
    calls = [turn for turn, _ in turns if turn.kind == "tool_call"]
    if len(calls) < config.min_actions:
        return fail("too_few_actions", f"{len(calls)} tool calls < {config.min_actions}")
    if len(calls) > config.max_actions:
        return fail("too_many_actions", f"{len(calls)} tool calls > {config.max_actions}")
    repeats = Counter(
        (turn.tool_name, json.dumps(_canonical(turn.arguments), sort_keys=True, ensure_ascii=False)) for turn in calls
    )
    if repeats:
        (tool, arguments), times = repeats.most_common(1)[0]
        if times > config.max_identical_calls:
            return fail("repeated_call", f"{tool} {arguments} made {times} times")
    observations = [observation for turn, observation in turns if turn.kind == "tool_call" and observation]
    support = answer_support(qa.question, trajectory.answer or "", qa.answers, observations)
    if support < config.min_answer_support:
        return fail("unsupported_answer", f"support {support:.2f} < {config.min_answer_support}")
    return _passed("quality", f"answer support {support:.2f}", method="rules")


GRADE_PROMPT = """You review a web agent's trajectory before it is used as training data.

{trajectory}

Rate the trajectory from 1 (bad) to 5 (excellent) on each criterion:
- information_redundancy: 5 = no redundant or repeated searches and visits; 1 = mostly redundant actions.
- goal_consistency: 5 = every action serves the question's goal; 1 = the actions drift away from it.
- logical_reasoning: 5 = every thought follows from the observations before it; 1 = leaps or contradictions.
- accuracy: 5 = thoughts and final answer state only what the observations support, and the final answer \
matches the gold answer; 1 = wrong or invented facts.

Reply with one JSON object: {{"information_redundancy": n, "goal_consistency": n, "logical_reasoning": n, \
"accuracy": n}}"""


class QualityGrade(BaseModel):
    information_redundancy: float = Field(ge=1, le=5)
    goal_consistency: float = Field(ge=1, le=5)
    logical_reasoning: float = Field(ge=1, le=5)
    accuracy: float = Field(ge=1, le=5)


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def render_for_grading(
    qa: QAPair,
    trajectory: Trajectory,
    config: FunnelConfig,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> str:
    """The trajectory as the grader reads it: thoughts, actions and clipped observations, then the answer."""
    lines = [f"Question: {qa.question}", f"Gold answer: {qa.answer}"]
    for number, (turn, observation) in enumerate(parsed_turns(trajectory, tool_schemas), start=1):
        lines.append(f"\nStep {number}\nThought: {_clip(turn.thought, config.thought_chars)}")
        if turn.kind == "answer":
            lines.append(f"Final answer: {turn.answer}")
        else:
            lines.append(f"Action: {turn.tool_name} {json.dumps(turn.arguments, ensure_ascii=False)}")
            lines.append(f"Observation: {_clip(observation or '', config.observation_chars)}")
    return "\n".join(lines)


def grade_quality(
    qa: QAPair,
    trajectory: Trajectory,
    grader: LLMEndpoint,
    config: FunnelConfig,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> StageVerdict:
    """Stage (c), LLM grade: four 1-5 scores; `low_grade` below the mean or single-score threshold.

    Unusable grader replies drop as `grade_not_json`, `grade_empty`, `grade_wrong_schema` or
    `grade_request_rejected`: an ungraded trajectory is not known to be good.
    """
    prompt = GRADE_PROMPT.format(trajectory=render_for_grading(qa, trajectory, config, tool_schemas))
    reply = ask_json(grader, [{"role": "user", "content": prompt}], QualityGrade, json_format=config.json_format)
    if reply.value is None:
        return StageVerdict("quality", False, f"grade_{reply.reason}", reply.detail, reply.raw, method="llm")
    scores = reply.value.model_dump()
    mean = sum(scores.values()) / len(scores)
    if mean < config.min_grade_mean or min(scores.values()) < config.min_grade_each:
        lowest = min(scores.values())
        detail = f"mean {mean:.2f} (min {config.min_grade_mean}), lowest {lowest} (min {config.min_grade_each})"
        return StageVerdict("quality", False, "low_grade", detail, reply.raw, method="llm", scores=scores)
    return _passed("quality", f"mean {mean:.2f}", raw=reply.raw, method="llm", scores=scores)


def check_quality(
    qa: QAPair,
    trajectory: Trajectory,
    grader: LLMEndpoint | None,
    config: FunnelConfig,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> StageVerdict:
    """Stage (c): rules, then the LLM grade when a grader is configured (rules only without one)."""
    verdict = check_quality_rules(qa, trajectory, config, tool_schemas)
    if not verdict.passed or grader is None:
        return verdict
    return grade_quality(qa, trajectory, grader, config, tool_schemas)


@dataclasses.dataclass(frozen=True)
class FunnelRecord:
    """An attempt after the funnel: `quality` is None when stage (a) or (b) already dropped it."""

    attempt: Attempt
    quality: StageVerdict | None = None

    @property
    def verdicts(self) -> list[StageVerdict]:
        return [v for v in (self.attempt.validity, self.attempt.correctness, self.quality) if v is not None]

    @property
    def kept(self) -> bool:
        return self.quality is not None and self.quality.passed

    @property
    def drop(self) -> StageVerdict | None:
        """The verdict that dropped it, None when kept."""
        return next((v for v in self.verdicts if not v.passed), None)


@dataclasses.dataclass(frozen=True)
class FunnelResult:
    records: list[FunnelRecord]

    @property
    def kept(self) -> list[FunnelRecord]:
        return [record for record in self.records if record.kept]

    def stage_table(self) -> pd.DataFrame:
        """In, kept and dropped per stage: the funnel a user reads in the UI."""
        rows = []
        for stage in STAGES:
            verdicts = [v for r in self.records for v in r.verdicts if v.stage == stage]
            passed = sum(v.passed for v in verdicts)
            rows.append({"stage": stage, "in": len(verdicts), "kept": passed, "dropped": len(verdicts) - passed})
        return pd.DataFrame(rows, columns=["stage", "in", "kept", "dropped"])

    def drop_table(self) -> pd.DataFrame:
        """Drops by stage and reason, in stage order, most frequent first."""
        counts = Counter((r.drop.stage, r.drop.reason) for r in self.records if r.drop is not None)
        rows = [{"stage": s, "reason": reason, "count": n} for (s, reason), n in counts.items()]
        frame = pd.DataFrame(rows, columns=["stage", "reason", "count"])
        frame["order"] = frame["stage"].map(STAGES.index)
        return frame.sort_values(["order", "count", "reason"], ascending=[True, False, True]).drop(columns="order")

    def records_frame(self) -> pd.DataFrame:
        """One row per trajectory: where it was dropped and why, with the judge's and grader's raw replies."""
        rows = []
        for record in self.records:
            attempt, drop = record.attempt, record.drop
            correctness, quality = attempt.correctness, record.quality
            rows.append(
                {
                    "trajectory_id": attempt.id,
                    "qa_id": attempt.qa.id,
                    "sample_index": attempt.trajectory.sample_index,
                    "cot_mode": attempt.trajectory.cot_mode,
                    "model": attempt.trajectory.model,
                    "kept": record.kept,
                    "stage": drop.stage if drop else "",
                    "reason": drop.reason if drop else "",
                    "detail": drop.detail if drop else "",
                    "judge_method": correctness.method if correctness else "",
                    "judge_raw": correctness.raw if correctness else "",
                    "grade_scores": json.dumps(dict(quality.scores)) if quality and quality.scores else "",
                    "grade_raw": quality.raw if quality else "",
                }
            )
        return pd.DataFrame(rows)


def run_funnel(
    attempts: Sequence[Attempt],
    grader: LLMEndpoint | None,
    config: FunnelConfig | None = None,
    *,
    max_workers: int = 1,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
) -> FunnelResult:
    """Stage (c) over the accepted attempts (graded in parallel); every attempt gets a record, in input order."""
    config = config or FunnelConfig()

    def review(attempt: Attempt) -> FunnelRecord:
        if not attempt.accepted:
            return FunnelRecord(attempt)
        return FunnelRecord(attempt, check_quality(attempt.qa, attempt.trajectory, grader, config, tool_schemas))

    if not attempts:
        return FunnelResult([])
    with worker_pool(min(max_workers, len(attempts)), thread_name_prefix="funnel") as pool:
        records = list(pool.map(review, attempts))
    result = FunnelResult(records)
    logger.info("funnel: %d in, %d kept", len(records), len(result.kept))
    return result


def is_held_out(qa_id: str, share: float, seed: int = 0) -> bool:
    """Deterministic per id: the same pairs stay held out however the pair list is ordered or grows."""
    return share > 0 and id_fraction(qa_id, str(seed)) < share


@dataclasses.dataclass(frozen=True)
class RLPool:
    """QA pairs for RL, each with why it is there: `unsolved` (nothing passed the funnel) or `held_out`."""

    pairs: list[QAPair]
    reasons: dict[str, Literal["unsolved", "held_out"]]

    @property
    def held_out_ids(self) -> frozenset[str]:
        return frozenset(qa_id for qa_id, reason in self.reasons.items() if reason == "held_out")


def select_rl_pool(
    pairs: Sequence[QAPair], result: FunnelResult, *, held_out_share: float = 0.0, seed: int = 0
) -> RLPool:
    """As in WebDancer, RL trains on the pairs SFT has no trajectory for; `held_out_share` of the solved pairs
    also moves to RL (and out of SFT, see `sft_records`) so RL sees some questions the policy can solve.

    The candidates are `pairs` and then every question the funnel saw an attempt for: a released trajectory's
    question is a QA pair too (WebDancer's sample trajectories answer other questions than its sample QA pairs)."""
    if not 0.0 <= held_out_share < 1.0:
        raise ValueError(f"held_out_share must be in [0, 1), got {held_out_share}")
    solved = {record.attempt.qa.id for record in result.kept}
    candidates = {pair.id: pair for pair in pairs}
    for record in result.records:
        candidates.setdefault(record.attempt.qa.id, record.attempt.qa)
    chosen, reasons = [], {}
    for pair in candidates.values():
        if pair.id not in solved:
            reasons[pair.id] = "unsolved"
        elif is_held_out(pair.id, held_out_share, seed):
            reasons[pair.id] = "held_out"
        else:
            continue
        chosen.append(pair)
    return RLPool(chosen, reasons)


def sft_records(
    result: FunnelResult,
    held_out_ids: frozenset[str] = frozenset(),
    cot_modes: Collection[CotMode] = ("short", "long"),
) -> list[dict[str, Any]]:
    """Kept trajectories in the chat format SFT consumes (`messages`), minus pairs held out for RL, of the CoT modes
    the model should learn (WebDancer trains instruct models on short CoT, reasoning models on long CoT)."""
    unknown = set(cot_modes) - set(get_args(CotMode))
    if unknown:
        raise ValueError(f"CoT modes are {', '.join(get_args(CotMode))}; got {sorted(unknown)}")
    records = []
    for record in result.kept:
        attempt = record.attempt
        if attempt.qa.id in held_out_ids or attempt.trajectory.cot_mode not in cot_modes:
            continue
        records.append(
            {
                "id": attempt.id,
                "qa_id": attempt.qa.id,
                "source": attempt.qa.source,
                "kind": attempt.qa.kind,
                "cot_mode": attempt.trajectory.cot_mode,
                "model": attempt.trajectory.model,
                "messages": [message.model_dump() for message in attempt.trajectory.messages],
            }
        )
    return records
