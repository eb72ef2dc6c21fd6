"""Answer every benchmark question k times with an agent, judge each answer, and report each row as it finishes.

Evaluation is long (questions x runs x agent turns) and the model server can die half way, so the loop is
resumable: the caller passes the (question_id, run) pairs it already stored and gets `on_result` for each new
row the moment it is judged, to persist it before the next one starts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Any

from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.metrics import token_f1
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.shared.judge import Judgement, exact_match, judge_answer
from webdancer_dagster.threads import worker_pool

logger = logging.getLogger(__name__)

RunAgent = Callable[[str, int], Trajectory]
ResultCallback = Callable[[dict[str, Any]], None]


def run_row(item: BenchmarkQuestion, run: int, trajectory: Trajectory, judgement: Judgement) -> dict[str, Any]:
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
        "correct": judgement.correct,
        "judge_method": judgement.method,
        "judge_raw": judgement.raw,
        "judge_flag": judgement.flag,
        "judge_attempts": judgement.attempts,
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
        return run_row(item, run, trajectory, judge_answer(item.question, trajectory.answer, item.answers, judge))

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
    with worker_pool(max_workers, thread_name_prefix="eval") as pool:
        futures = [pool.submit(one, job) for job in jobs]
        pending = set(futures)
        while pending:
            # Each row is stored as its run ends (FIRST_EXCEPTION would wait for all of them when none fails, and a
            # killed evaluation would lose every run it had finished).
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
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
