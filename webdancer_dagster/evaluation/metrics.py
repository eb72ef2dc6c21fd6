"""Scores from a table of agent runs: Pass@1, Pass@k, Cons@k and the behaviour numbers beside them.

Pure functions over a pandas DataFrame with one row per (question_id, run), so the same numbers come out of a
fresh evaluation, a resumed one, or the stored `eval_runs` table read back later.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pandas as pd

from webdancer_dagster.agent.trajectory import TERMINATIONS
from webdancer_dagster.shared.answers import normalize_answer

REQUIRED_COLUMNS = ("question_id", "run", "correct")


@dataclasses.dataclass(frozen=True)
class Scores:
    """One model on one benchmark. Rates are shares in [0, 1]; `runs_per_question` is the k of Pass@k/Cons@k."""

    questions: int
    runs_per_question: int
    pass_at_1: float
    pass_at_k: float
    cons_at_k: float
    mean_actions: float
    mean_searches: float
    mean_visits: float
    format_error_rate: float
    format_valid_rate: float
    answered_rate: float
    mean_tokens: float
    judge_flagged: int
    exact_match: float
    f1: float
    terminations: dict[str, int]

    def as_row(self) -> dict[str, Any]:
        """Flat columns for the `scores` table (terminations as one count column each)."""
        row = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "terminations"}
        row.update({f"termination_{name}": self.terminations.get(name, 0) for name in TERMINATIONS})
        return row


def token_f1(predicted: str, gold_answers: Sequence[str]) -> float:
    """SQuAD token F1 after normalisation, the best over the gold answers: partial credit EM cannot see."""
    predicted_tokens = normalize_answer(predicted).split()
    best = 0.0
    for gold in gold_answers:
        gold_tokens = normalize_answer(gold).split()
        common = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
        if common:
            precision, recall = common / len(predicted_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def correct_counts(runs: pd.DataFrame, runs_per_question: int) -> pd.Series:
    """Correct runs per question; raises when a question has other than `runs_per_question` runs, because
    Pass@k over unequal run counts would compare questions on different footing."""
    missing = [column for column in REQUIRED_COLUMNS if column not in runs.columns]
    if missing:
        raise ValueError(f"runs table lacks columns {missing}")
    if runs.empty:
        raise ValueError("no runs to score")
    if runs.duplicated(["question_id", "run"]).any():
        duplicated = runs.loc[runs.duplicated(["question_id", "run"]), ["question_id", "run"]].iloc[0].tolist()
        raise ValueError(f"duplicate run {duplicated} in the runs table")
    grouped = runs.groupby("question_id")["correct"]
    sizes = grouped.size()
    uneven = sizes[sizes != runs_per_question]
    if len(uneven):
        raise ValueError(
            f"{len(uneven)} question(s) have other than {runs_per_question} runs, e.g. {uneven.index[0]!r} with "
            f"{int(uneven.iloc[0])}"
        )
    return grouped.sum().astype(int)


def pass_at_1(runs: pd.DataFrame, runs_per_question: int = 3) -> float:
    """Mean accuracy over the runs (per question first, then over questions)."""
    return float((correct_counts(runs, runs_per_question) / runs_per_question).mean())


def pass_at_k(runs: pd.DataFrame, runs_per_question: int = 3) -> float:
    """Share of questions answered correctly in at least one run."""
    return float((correct_counts(runs, runs_per_question) >= 1).mean())


def cons_at_k(runs: pd.DataFrame, runs_per_question: int = 3) -> float:
    """Share of questions answered correctly in a majority of runs (2 of 3)."""
    return float((correct_counts(runs, runs_per_question) >= runs_per_question // 2 + 1).mean())


def score_runs(runs: pd.DataFrame, runs_per_question: int = 3) -> Scores:
    """Every score of one model on one benchmark. Needs the `eval_runs` columns: correct, searches, visits,
    format_errors, format_valid, answered, termination, tokens, judge_flag, em, f1.

    `format_valid_rate` is the share of runs that `check_format` accepts (what SFT data and the RL format reward
    require); `format_error_rate` the share with at least one turn that could not be acted on, which shows a weak
    policy's format trouble before it turns into `format_error` terminations; `answered_rate` the share that
    ended with a non-empty answer.
    """
    counts = correct_counts(runs, runs_per_question)
    return Scores(
        questions=len(counts),
        runs_per_question=runs_per_question,
        pass_at_1=float((counts / runs_per_question).mean()),
        pass_at_k=float((counts >= 1).mean()),
        cons_at_k=float((counts >= runs_per_question // 2 + 1).mean()),
        mean_actions=float((runs["searches"] + runs["visits"]).mean()),
        mean_searches=float(runs["searches"].mean()),
        mean_visits=float(runs["visits"].mean()),
        format_error_rate=float((runs["format_errors"] > 0).mean()),
        format_valid_rate=float(runs["format_valid"].astype(bool).mean()),
        answered_rate=float(runs["answered"].astype(bool).mean()),
        mean_tokens=float(runs["tokens"].mean()),
        judge_flagged=int((runs["judge_flag"] != "").sum()),
        exact_match=float(runs["em"].astype(bool).mean()),
        f1=float(runs["f1"].mean()),
        terminations={str(k): int(v) for k, v in runs["termination"].value_counts().sort_index().items()},
    )


RATE_COLUMNS = (
    "pass_at_1", "pass_at_k", "cons_at_k", "format_error_rate", "format_valid_rate", "answered_rate", "exact_match",
    "f1",
)  # fmt: skip


def audit_scores(scores: pd.DataFrame, runs: pd.DataFrame, max_flagged_share: float) -> pd.DataFrame:
    """Problems with stored scores, one row per (partition, problem): a question without exactly k runs, fewer
    complete questions than scored, judge replies left unreadable above `max_flagged_share`, a rate outside
    [0, 1] or Pass@1 / Cons@k above Pass@k. Runs count when they carry the score's fingerprint."""
    problems: list[dict[str, Any]] = []
    for score in scores.itertuples(index=False):
        mine = runs[(runs["partition"] == score.partition) & (runs["fingerprint"] == score.fingerprint)]
        k = int(score.runs_per_question)

        def problem(kind: str, detail: str, partition: str = score.partition) -> None:
            problems.append({"partition": partition, "problem": kind, "detail": detail})

        per_question = mine.groupby("question_id").size()
        wrong = per_question[per_question != k]
        if len(wrong):
            problem("runs_per_question", f"{len(wrong)} questions without {k} runs, e.g. {wrong.index[0]}")
        if int((per_question == k).sum()) < int(score.questions):
            problem("questions", f"{int((per_question == k).sum())} complete questions, {score.questions} scored")
        flagged = float((mine["judge_flag"].fillna("") != "").mean()) if len(mine) else 0.0
        if flagged > max_flagged_share:
            problem("judge_unreadable", f"{flagged:.1%} of judgements unreadable (threshold {max_flagged_share:.0%})")
        for column in RATE_COLUMNS:
            value = float(getattr(score, column, float("nan")))  # NaN: a rate scored before it existed
            if value == value and not 0.0 <= value <= 1.0:
                problem("out_of_range", f"{column} = {value}")
        if score.pass_at_1 > score.pass_at_k + 1e-9 or score.cons_at_k > score.pass_at_k + 1e-9:
            problem(
                "inconsistent", f"Pass@1 {score.pass_at_1}, Cons@k {score.cons_at_k} above Pass@k {score.pass_at_k}"
            )
    return pd.DataFrame(problems, columns=["partition", "problem", "detail"])


def credits_without_overlap(
    scores: pd.DataFrame, runs: pd.DataFrame, min_credits: int, max_share: float
) -> pd.DataFrame:
    """Per scored partition: the answers the LLM judge accepted (`llm_credited`), how many of them share no word
    with any gold answer (`no_word_in_common`, token F1 = 0), and `doubtful` when there are at least `min_credits`
    and more than `max_share` of them have no word in common.

    A few such credits are paraphrases ("USA" for "United States"); a high share means the judge says "Correct" to
    unrelated answers, so its Pass@k says more about the judge than the model (SmolLM2-135M as judge credited "1973"
    for "James K. Polk" on MuSiQue). Runs count when they carry the score's fingerprint."""
    rows = []
    for score in scores.itertuples(index=False):
        mine = runs[(runs["partition"] == score.partition) & (runs["fingerprint"] == score.fingerprint)]
        credited = mine[(mine["judge_method"] == "llm") & mine["correct"].fillna(False).astype(bool)]
        unsupported = int((credited["f1"].fillna(0.0) <= 0.0).sum())
        share = round(unsupported / len(credited), 4) if len(credited) else 0.0
        rows.append({
            "partition": score.partition,
            "llm_credited": len(credited),
            "no_word_in_common": unsupported,
            "share": share,
            "doubtful": len(credited) >= min_credits and share > max_share,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["partition", "llm_credited", "no_word_in_common", "share", "doubtful"])


def turn_budget_shortfalls(scores: pd.DataFrame) -> pd.DataFrame:
    """Scored partitions whose policy could write fewer tokens a turn (`max_turn_tokens`) than the p95 assistant turn
    of the SFT set behind the checkpoint they score: such a budget cuts turns the model learned to write, and the
    cut turns count as format errors against it. Partitions without a trained checkpoint are not compared."""
    columns = ["partition", "max_turn_tokens", "trained_turn_tokens_p95"]
    compared = scores.reindex(columns=columns).dropna(subset=["max_turn_tokens", "trained_turn_tokens_p95"])
    short = compared[compared["max_turn_tokens"] < compared["trained_turn_tokens_p95"]]
    return short.astype({"max_turn_tokens": int, "trained_turn_tokens_p95": int}).reset_index(drop=True)


def unanswered_partitions(scores: pd.DataFrame) -> pd.DataFrame:
    """Scored partitions in which no run ended with an answer (`answered_rate` 0), with their run count and how the
    runs ended (`endings`, from the `termination_*` columns): their zero scores say the policy never answered, not
    what it knows. Rows scored before `answered_rate` existed are not judged."""
    rows = []
    for score in scores.to_dict("records"):
        answered = score.get("answered_rate")
        if answered is None or pd.isna(answered) or answered > 0:
            continue
        endings = {
            column.removeprefix("termination_"): int(count)
            for column, count in score.items()
            if column.startswith("termination_") and not pd.isna(count) and count > 0
        }
        rows.append({
            "partition": score["partition"],
            "runs": int(score["questions"]) * int(score["runs_per_question"]),
            "endings": ", ".join(f"{name} {count}" for name, count in endings.items()) or "unknown",
        })  # fmt: skip
    return pd.DataFrame(rows, columns=["partition", "runs", "endings"])
