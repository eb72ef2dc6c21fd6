"""Answer every benchmark question k times with an agent, judge each answer, and report each row as it finishes.

Evaluation is long (questions x runs x agent turns) and the model server can die half way, so the loop is
resumable: the caller passes the (question_id, run) pairs it already stored and gets `on_result` for each new
row the moment it is judged, to persist it before the next one starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Literal, cast

from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.metrics import token_f1
from webdancer_dagster.llm.client import ChatResult, LLMEndpoint
from webdancer_dagster.synthesis.judge import JudgeMethod, exact_match, judge_answer

logger = logging.getLogger(__name__)

RunAgent = Callable[[str, int], Trajectory]
ResultCallback = Callable[[dict[str, Any]], None]
JudgeFlag = Literal["", "unparsed", "rejected"]
RETRY_SEPARATOR = "\n\n--- judge retry ---\n\n"
RETRY_TEMPERATURE = 0.6  # the least temperature of a retry: a greedy judge would repeat its unclear reply


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The judgement stored with a run: the rule or `llm` that decided (`none`: no answer). `flag` says why an
    answer the LLM judge could not judge was counted incorrect."""

    correct: bool
    method: JudgeMethod | Literal["none"]
    raw: str = ""
    flag: JudgeFlag = ""
    attempts: int = 0


class _Resampled:
    """The judge endpoint drawing another sample: a retry must neither come back from the response cache nor
    repeat a greedy (temperature 0) reply."""

    def __init__(self, endpoint: LLMEndpoint, sample_index: int) -> None:
        self._endpoint, self._sample_index = endpoint, sample_index
        sampling = endpoint.config.sampling
        self._sampling = sampling.model_copy(update={"temperature": max(sampling.temperature, RETRY_TEMPERATURE)})

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> ChatResult:
        return self._endpoint.chat(messages, sampling=self._sampling, sample_index=self._sample_index, **kwargs)


def judge_with_retry(
    question: str, predicted: str | None, gold_answers: Sequence[str], judge: LLMEndpoint | None
) -> Verdict:
    """`judge_answer` (rules, then `judge` if one is given); an LLM reply holding neither Correct nor Incorrect is
    asked once more, and still none: incorrect, flagged `unparsed`. A rejected request (input the judge cannot
    take) is not retried and is flagged `rejected`. No answer is incorrect without a judge call."""
    if not predicted or not predicted.strip():
        return Verdict(False, "none")
    judgement = judge_answer(question, predicted, gold_answers, judge)
    if judgement.method != "llm" or judge is None:
        return Verdict(bool(judgement.correct), judgement.method)
    if judgement.error:
        return Verdict(False, "llm", judgement.error, "rejected", 1)
    if judgement.correct is not None:
        return Verdict(judgement.correct, "llm", judgement.raw, "", 1)
    retry = judge_answer(question, predicted, gold_answers, cast(LLMEndpoint, _Resampled(judge, 1)))
    raw = judgement.raw + RETRY_SEPARATOR + (retry.raw or retry.error)
    if retry.correct is None:
        return Verdict(False, "llm", raw, "rejected" if retry.error else "unparsed", 2)
    return Verdict(retry.correct, "llm", raw, "", 2)


def run_row(item: BenchmarkQuestion, run: int, trajectory: Trajectory, verdict: Verdict) -> dict[str, Any]:
    """One `eval_runs` row: the answer, its judgement, EM/F1, whether the run was format-valid (the funnel's and the
    RL reward's `check_format`) and what the agent did to get there."""
    answer = trajectory.answer or ""
    actions = action_counts(trajectory)
    format_check = check_format(trajectory)
    return {
        "question_id": item.id,
        "run": run,
        "question": item.question,
        "gold_answers": json.dumps(item.answers, ensure_ascii=False),
        "answer": answer,
        "termination": trajectory.termination,
        "answered": bool(answer.strip()),
        "format_valid": format_check.valid,
        "format_reason": format_check.reason,
        "correct": verdict.correct,
        "judge_method": verdict.method,
        "judge_raw": verdict.raw,
        "judge_flag": verdict.flag,
        "judge_attempts": verdict.attempts,
        "em": bool(answer) and exact_match(answer, item.answers),
        "f1": token_f1(answer, item.answers) if answer else 0.0,
        "searches": actions["search"],
        "visits": actions["visit"],
        "actions": trajectory.tool_calls,
        "format_errors": trajectory.format_errors,
        "llm_calls": trajectory.llm_calls,
        "tokens": trajectory.completion_tokens,
        "prompt_tokens": trajectory.prompt_tokens,
        "latency_s": round(trajectory.latency_s, 3),
        "trajectory": trajectory.model_dump_json(),
    }


def action_counts(trajectory: Trajectory) -> dict[str, int]:
    """Tool calls by tool, failed fetches included: the agent spent the turn on them."""
    counts = {"search": 0, "visit": 0}
    for step in trajectory.steps:
        if step.action in counts and not step.error:
            counts[step.action] += 1
    return counts


def pending_jobs(
    questions: Iterable[BenchmarkQuestion], runs: int, done: Collection[tuple[str, int]]
) -> list[tuple[BenchmarkQuestion, int]]:
    """(question, run) pairs not stored yet, question by question."""
    return [(item, run) for item in questions for run in range(runs) if (item.id, run) not in done]


def evaluate(
    questions: Sequence[BenchmarkQuestion],
    run_agent: RunAgent,
    judge: LLMEndpoint | None,
    *,
    runs: int = 3,
    done: Collection[tuple[str, int]] = frozenset(),
    on_result: ResultCallback | None = None,
    max_workers: int = 1,
) -> list[dict[str, Any]]:
    """Rows for every (question, run) not in `done`; `run_agent(question, run)` runs the agent with sample index
    `run` so each run is a distinct, separately cached sample. The first failure (e.g. the model server died)
    stops the evaluation and raises after the rows already finished were handed to `on_result`."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    jobs = pending_jobs(questions, runs, done)

    def one(job: tuple[BenchmarkQuestion, int]) -> dict[str, Any]:
        item, run = job
        trajectory = run_agent(item.question, run)
        return run_row(item, run, trajectory, judge_with_retry(item.question, trajectory.answer, item.answers, judge))

    rows: list[dict[str, Any]] = []

    def finish(row: dict[str, Any]) -> None:
        rows.append(row)
        if on_result is not None:
            on_result(row)
        logger.info("eval %s run %d: %s (%s)", row["question_id"], row["run"], row["correct"], row["termination"])

    if max_workers <= 1:
        for job in jobs:
            finish(one(job))
        return rows
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(one, job) for job in jobs]
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for future in finished:
                if future.exception() is None:
                    finish(future.result())
            failed = [future for future in finished if future.exception() is not None]
            if failed:
                for future in pending:
                    future.cancel()
                # Rows still running when the first failure came are kept, so a resume does not redo them.
                for future in wait(pending).done:
                    if not future.cancelled() and future.exception() is None:
                        finish(future.result())
                raise failed[0].exception()  # type: ignore[misc]
    return rows
