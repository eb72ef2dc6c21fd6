"""One (model, benchmark) evaluation kept in the warehouse, so a killed or failed run resumes where it stopped.

Each finished run is appended to `eval_runs` before the next starts. Rows carry the fingerprint of the agent and
judge settings that produced them: a changed setting drops the partition's old rows instead of mixing them in.
A stored verdict the judge's current rules would give otherwise is judged again (`rejudge`), the answer kept: the
rules get stricter over time, and a run judged by older rules must not count under the new ones.
`finish` scores what is stored for the wanted questions and replaces the partition's row of `scores`. Two runs of
one partition at once take turns (`PartitionEvaluation.locked`): the second resumes from what the first stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd

from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.metrics import Scores, score_runs
from webdancer_dagster.evaluation.settings import Setting
from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.shared.judge import Judgement, rules_judge_otherwise
from webdancer_dagster.warehouse import TableWrite, WarehouseStore

RUNS_TABLE, SCORES_TABLE = "eval_runs", "scores"
Judge = Callable[[str, str, list[str]], Judgement]  # (question, answer, gold answers) -> judgement
# How long a second run of a partition waits for the first to finish before it gives up, naming the holder.
EVALUATION_LOCK_TIMEOUT_S = 3600.0


def run_fingerprint(
    agent_settings: Mapping[str, Any], policy: EndpointConfig, judge: EndpointConfig | None, setting: Setting
) -> str:
    """Rows from another agent or judge setting are not this evaluation's: resuming must not mix them in.
    Endpoints count by model and sampling, not URL: the local server takes a new free port on every start.
    A checkpoint's served name carries its sha256, so a retrained checkpoint starts afresh."""
    settings = {
        **agent_settings,
        "policy": [policy.model, policy.sampling.model_dump()],
        "judge": [judge.model, judge.sampling.model_dump()] if judge is not None else "rules",
    }
    if setting != "local_web":  # the default is left out so fingerprints stored before settings existed still match
        settings["setting"] = setting
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class PartitionScores:
    """What `finish` stored: the scores and their `scores` row, the runs behind them, and every partition's scores
    for the comparison."""

    scores: Scores
    row: dict[str, Any]
    runs: pd.DataFrame
    all_scores: pd.DataFrame
    scores_write: TableWrite


class PartitionEvaluation:
    """The stored runs of one `benchmark_scores` partition under one fingerprint.

    `labels` (model, benchmark, setting, policy, judge) go into every run and score row."""

    def __init__(
        self,
        store: WarehouseStore,
        partition: str,
        fingerprint: str,
        questions: Sequence[BenchmarkQuestion],
        runs_per_question: int,
        labels: Mapping[str, Any],
    ) -> None:
        self.store, self.partition, self.fingerprint = store, partition, fingerprint
        self.runs_per_question, self.labels = runs_per_question, dict(labels)
        self.wanted = {(item.id, run) for item in questions for run in range(runs_per_question)}
        self.dropped = self._drop_other_fingerprints()
        stored = self._stored_runs()
        self.done = {(row.question_id, int(row.run)) for row in stored.itertuples()}
        self.resumed = len(self.done & self.wanted)
        self.rejudged = 0

    @classmethod
    @contextmanager
    def locked(
        cls,
        store: WarehouseStore,
        partition: str,
        *args: Any,
        timeout_s: float = EVALUATION_LOCK_TIMEOUT_S,
        **kwargs: Any,
    ) -> Iterator[PartitionEvaluation]:
        """The partition's evaluation, read, run and scored under the partition's lock in the home.

        Without it two runs of one partition would both read the same stored runs, both answer the missing ones and
        append each (question, run) twice. With it the second waits, then finds those runs stored and resumes."""
        # Model and benchmark names never hold a '.', so the joined name is unique.
        name = "eval-" + partition.replace("|", ".")
        with store.lock(name, timeout_s=timeout_s, holder=f"the evaluation of {partition}"):
            yield cls(store, partition, *args, **kwargs)

    def summary(self, scores: Scores) -> str:
        """One log line: the scores, and what resuming kept or dropped."""
        return (
            f"{self.labels['setting']}: Pass@1 {scores.pass_at_1:.3f} Pass@k {scores.pass_at_k:.3f} Cons@k "
            f"{scores.cons_at_k:.3f} over {scores.questions} questions ({self.resumed} runs resumed, {self.dropped} "
            f"dropped for changed settings, {self.rejudged} judged again under the current rules)"
        )

    @property
    def pending(self) -> int:
        """Runs still to answer."""
        return len(self.wanted - self.done)

    def store_run(self, row: Mapping[str, Any]) -> None:
        """Append one finished run (an `evaluation.run.run_row`), so it survives whatever happens next."""
        frame = pd.DataFrame([{
            "partition": self.partition, "model": self.labels["model"], "benchmark": self.labels["benchmark"], **row,
            "fingerprint": self.fingerprint, "policy": self.labels["policy"], "judge": self.labels["judge"],
            "setting": self.labels["setting"], "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        }])  # fmt: skip
        self.store.write_tables(appends={RUNS_TABLE: frame})

    def rejudge(self, judge: Judge) -> int:
        """Judge again, with `judge`, each stored run whose verdict the current rules would not give: one they now
        decide otherwise, or one they decided before and now leave open. Returns how many were judged again."""
        stored = self._stored_runs()
        if stored.empty:
            return 0
        stale = [
            index
            for index, row in stored.iterrows()
            if row["judge_method"] != "none"
            and rules_judge_otherwise(row["answer"], json.loads(row["gold_answers"]), row["judge_method"])
        ]
        for index in stale:
            row = stored.loc[index]
            judgement = judge(row["question"], row["answer"], json.loads(row["gold_answers"]))
            stored.loc[index, ["correct", "judge_method", "judge_raw", "judge_flag", "judge_attempts"]] = [
                judgement.correct, judgement.method, judgement.raw, judgement.flag, judgement.attempts,
            ]  # fmt: skip
        if stale:
            self.store.write_tables(
                partition=("partition", self.partition), partition_replacements={RUNS_TABLE: stored}
            )
        self.rejudged = len(stale)
        return self.rejudged

    def finish(self, **columns: Any) -> PartitionScores:
        """Score the stored runs of the wanted questions and replace this partition's `scores` row (with `columns`)."""
        runs = self._stored_runs()
        wanted = [(qid, int(run)) in self.wanted for qid, run in zip(runs["question_id"], runs["run"], strict=True)]
        runs = runs[wanted]
        scores = score_runs(runs, self.runs_per_question)
        row = pd.DataFrame([{
            "partition": self.partition, "model": self.labels["model"], "benchmark": self.labels["benchmark"],
            **scores.as_row(), **columns, "setting": self.labels["setting"], "policy": self.labels["policy"],
            "judge": self.labels["judge"], "fingerprint": self.fingerprint,
            "scored_at": dt.datetime.now(dt.UTC).isoformat(),
        }])  # fmt: skip
        writes = self.store.write_tables(
            partition=("partition", self.partition), partition_replacements={SCORES_TABLE: row}
        )
        all_scores = self.store.read_table(SCORES_TABLE)
        return PartitionScores(scores, row.iloc[0].to_dict(), runs, all_scores, writes[SCORES_TABLE])

    def _stored_runs(self) -> pd.DataFrame:
        if not self.store.table_exists(RUNS_TABLE):
            return pd.DataFrame(columns=["question_id", "run", "fingerprint"])
        return self.store.read_table(RUNS_TABLE, '"partition" = ?', [self.partition])

    def _drop_other_fingerprints(self) -> int:
        stored = self._stored_runs()
        stale = stored["fingerprint"] != self.fingerprint
        if stale.any():
            kept = stored[~stale]
            self.store.write_tables(partition=("partition", self.partition), partition_replacements={RUNS_TABLE: kept})
        return int(stale.sum())
