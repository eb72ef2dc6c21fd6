"""One benchmark partition kept in a real warehouse: resuming, dropping other settings' runs, scoring what is wanted."""

from pathlib import Path

from test_run import QUESTIONS, trajectory

from webdancer_dagster.evaluation.partition import RUNS_TABLE, SCORES_TABLE, PartitionEvaluation, run_fingerprint
from webdancer_dagster.evaluation.run import run_row
from webdancer_dagster.llm.client import EndpointConfig, SamplingParams
from webdancer_dagster.shared.judge import Judgement, judge_answer
from webdancer_dagster.warehouse import WarehouseStore

LABELS = {"model": "base", "benchmark": "musique", "setting": "local_web", "policy": "m @ x", "judge": "rules"}
AGENT = {"max_llm_calls": 8, "n_ctx": 8192, "cot_mode": "short", "tokenizer": None}


def endpoint(port: int, temperature: float = 0.6) -> EndpointConfig:
    sampling = SamplingParams(temperature=temperature)
    return EndpointConfig(role="policy", base_url=f"http://127.0.0.1:{port}/v1", model="m", sampling=sampling)


def test_the_fingerprint_ignores_the_local_server_port_but_not_sampling_or_setting():
    def fingerprint(policy: EndpointConfig, setting: str = "local_web") -> str:
        return run_fingerprint(AGENT, policy, endpoint(1, 0.0), setting)  # type: ignore[arg-type]

    assert fingerprint(endpoint(1)) == fingerprint(endpoint(2))
    assert fingerprint(endpoint(1)) != fingerprint(endpoint(1, temperature=0.0))
    assert fingerprint(endpoint(1)) != fingerprint(endpoint(1), "closed_book")
    assert run_fingerprint({**AGENT, "max_llm_calls": 3}, endpoint(1), None, "local_web") != run_fingerprint(
        AGENT, endpoint(1), None, "local_web"
    )


def partition(store: WarehouseStore, fingerprint: str, runs: int = 2) -> PartitionEvaluation:
    return PartitionEvaluation(store, "base|musique", fingerprint, QUESTIONS, runs, LABELS)


def store_runs(evaluation: PartitionEvaluation, answers: dict[tuple[str, int], str]) -> None:
    for item in QUESTIONS:
        for run in range(evaluation.runs_per_question):
            if (item.id, run) in answers and (item.id, run) not in evaluation.done:
                correct = answers[(item.id, run)] in item.answers
                verdict = Judgement(correct, "exact" if correct else "unmatched")
                evaluation.store_run(run_row(item, run, trajectory(answers[(item.id, run)]), verdict))


def test_a_partition_resumes_its_stored_runs_and_scores_only_the_wanted_ones(tmp_path: Path):
    store = WarehouseStore(tmp_path)
    first = partition(store, "fp-1")
    assert (first.pending, first.resumed, first.dropped) == (4, 0, 0)
    store_runs(first, {("q1", 0): "G. Stanley Hall", ("q1", 1): "Wundt"})

    resumed = partition(store, "fp-1")
    assert (resumed.pending, resumed.resumed, resumed.dropped) == (2, 2, 0)
    assert resumed.done == {("q1", 0), ("q1", 1)}
    store_runs(resumed, {("q2", 0): "Lotharingia", ("q2", 1): "Lotharingia"})
    result = resumed.finish(search_backend="local")

    assert result.scores.questions == 2 and result.scores.pass_at_1 == 0.75
    assert result.row["search_backend"] == "local" and result.row["fingerprint"] == "fp-1"
    assert len(store.read_table(SCORES_TABLE)) == 1 and len(result.runs) == 4
    # One run a question is wanted now: the second runs stay stored but are not scored.
    fewer = partition(store, "fp-1", runs=1).finish(search_backend="local")
    assert len(fewer.runs) == 2 and fewer.scores.pass_at_1 == 1.0
    assert len(store.read_table(SCORES_TABLE)) == 1  # the partition's row is replaced, not appended


def test_runs_of_other_settings_are_dropped_not_mixed_in(tmp_path: Path):
    store = WarehouseStore(tmp_path)
    store_runs(partition(store, "old"), {("q1", 0): "G. Stanley Hall", ("q2", 0): "Lotharingia"})

    changed = partition(store, "new")

    assert (changed.dropped, changed.resumed, changed.pending) == (2, 0, 4)
    assert store.read_table(RUNS_TABLE).empty


def test_stored_verdicts_the_current_rules_would_not_give_are_judged_again_answers_kept(tmp_path: Path):
    store = WarehouseStore(tmp_path)
    evaluation = partition(store, "fp-1")
    q1, q2 = QUESTIONS
    stored = [
        # What rules before the "and" rule said: the gold answer is among the words, so "contains".
        (q1, 0, "G. Stanley Hall and Wilhelm Wundt", Judgement(True, "contains")),
        (q1, 1, "G. Stanley Hall", Judgement(True, "exact")),
        (q2, 0, "the Frankish kingdom of Lotharingia", Judgement(True, "contains")),
        (q2, 1, "a middle kingdom", Judgement(True, "llm", raw="Correct")),  # open to the rules: the judge decided
    ]
    for item, run, answer, verdict in stored:
        evaluation.store_run(run_row(item, run, trajectory(answer), verdict))
    asked: list[str] = []

    def judge(question: str, answer: str, gold: list[str]) -> Judgement:
        asked.append(answer)
        return judge_answer(question, answer, gold, None)

    assert evaluation.rejudge(judge) == 1 and asked == ["G. Stanley Hall and Wilhelm Wundt"]
    runs = store.read_table(RUNS_TABLE).set_index(["question_id", "run"])
    assert (runs.loc[("q1", 0), "judge_method"], bool(runs.loc[("q1", 0), "correct"])) == ("hedged", False)
    assert runs.loc[("q1", 0), "answer"] == "G. Stanley Hall and Wilhelm Wundt"  # the run itself is kept
    assert runs.loc[("q2", 1), "judge_method"] == "llm" and runs.loc[("q2", 1), "judge_raw"] == "Correct"
    assert evaluation.finish(search_backend="local").scores.pass_at_1 == 0.75
    assert partition(store, "fp-1").rejudge(judge) == 0 and len(asked) == 1  # nothing left to judge again
