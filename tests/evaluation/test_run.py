"""The evaluation loop: rows judged against a scripted local endpoint, and resuming after a failure."""

import threading

import pytest

from webdancer_dagster.agent.trajectory import ChatMessage, Step, Trajectory
from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion
from webdancer_dagster.evaluation.run import evaluate
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.shared.judge import RETRY_SEPARATOR
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer

QUESTIONS = [
    BenchmarkQuestion(id="q1", question="Who founded the journal?", answers=["G. Stanley Hall", "Stanley Hall"]),
    BenchmarkQuestion(id="q2", question="Which kingdom?", answers=["Lotharingia"]),
]
GOLD = {item.question: item.answers[0] for item in QUESTIONS}


def trajectory(answer: str | None, actions=("search",)) -> Trajectory:
    steps = [
        Step(index=i, thought="", action=a, observation="obs", llm_latency_s=0.0, prompt_tokens=5, completion_tokens=3,
             context_tokens=5)
        for i, a in enumerate(actions)
    ]  # fmt: skip
    return Trajectory(
        question="q", messages=[ChatMessage(role="user", content="q")], steps=steps, answer=answer,
        termination="answer" if answer else "no_answer", llm_calls=len(steps) + 1, tool_calls=len(steps),
        format_errors=0, prompt_tokens=10, completion_tokens=7, cached_calls=0, latency_s=0.1, endpoint="x",
        model="m", cot_mode="short",
    )  # fmt: skip


def endpoint(server: ScriptedLLMServer) -> LLMEndpoint:
    sampling = SamplingParams(temperature=0.0, max_tokens=64)
    config = EndpointConfig(role="judge", base_url=server.base_url, model="scripted", max_attempts=1, sampling=sampling)
    return LLMEndpoint(config)


def test_a_row_keeps_the_whole_judgement():
    """Method, raw replies, flag and attempts of the one judge, retry included, are columns of `eval_runs`."""
    with ScriptedLLMServer(["Hmm, hard to say.", "Correct"]) as server:
        (row,) = evaluate(QUESTIONS[1:], lambda question, run: trajectory("Lothair's realm"), endpoint(server), runs=1)
    judged = (row["correct"], row["judge_method"], row["judge_flag"], row["judge_attempts"], row["em"])
    assert judged == (True, "llm", "", 2, False)
    assert row["judge_raw"] == f"Hmm, hard to say.{RETRY_SEPARATOR}Correct"


def test_rows_and_resume_after_a_failure():
    answers: dict[tuple[str, int], str | None] = {
        ("Who founded the journal?", 0): "Stanley Hall",
        ("Who founded the journal?", 1): None,
    }
    calls: list[tuple[str, int]] = []
    server_down = [True]

    def run_agent(question: str, run: int) -> Trajectory:
        calls.append((question, run))
        if question == "Which kingdom?" and run == 1 and server_down[0]:
            raise RuntimeError("model server died")
        return trajectory(answers.get((question, run), GOLD[question]), actions=("search", "visit", "search"))

    stored: list[dict] = []
    with ScriptedLLMServer([]) as server:  # every answer is an exact match or empty: no judge call
        judge = endpoint(server)
        with pytest.raises(RuntimeError, match="model server died"):
            evaluate(QUESTIONS, run_agent, judge, runs=3, on_result=stored.append)
        assert [(r["question_id"], r["run"]) for r in stored] == [("q1", 0), ("q1", 1), ("q1", 2), ("q2", 0)]
        done = {(r["question_id"], r["run"]) for r in stored}
        calls.clear()
        server_down[0] = False
        rows = evaluate(QUESTIONS, run_agent, judge, runs=3, done=done, on_result=stored.append)
        assert not server.requests
    assert calls == [("Which kingdom?", 1), ("Which kingdom?", 2)]
    assert [(r["question_id"], r["run"]) for r in rows] == [("q2", 1), ("q2", 2)]
    first = stored[0]
    assert (first["correct"], first["judge_method"], first["em"], first["f1"]) == (True, "exact", True, 1.0)
    assert (first["searches"], first["visits"], first["actions"], first["tokens"]) == (2, 1, 3, 7)
    assert (stored[1]["correct"], stored[1]["judge_method"], stored[1]["termination"]) == (False, "none", "no_answer")


def test_parallel_evaluation_stores_every_row():
    stored: list[dict] = []
    rows = evaluate(QUESTIONS, lambda q, r: trajectory(GOLD[q]), None, runs=2, on_result=stored.append,
                    max_workers=3)  # fmt: skip
    assert sorted((r["question_id"], r["run"]) for r in rows) == [("q1", 0), ("q1", 1), ("q2", 0), ("q2", 1)]
    assert len(stored) == 4


def test_parallel_evaluation_stores_each_row_while_other_runs_are_still_going():
    """A killed evaluation keeps the runs it finished: rows are stored as their runs end, not when the last one does
    (they once waited for all 300 runs of a partition)."""
    stored: list[dict] = []
    some_row_stored = threading.Event()
    slow_run_saw_a_stored_row: list[bool] = []

    def run_agent(question: str, run: int):
        if (question, run) == (QUESTIONS[0].question, 0):
            slow_run_saw_a_stored_row.append(some_row_stored.wait(timeout=10))
        return trajectory(GOLD[question])

    def store(row: dict) -> None:
        stored.append(row)
        some_row_stored.set()

    evaluate(QUESTIONS, run_agent, None, runs=2, on_result=store, max_workers=2)

    assert slow_run_saw_a_stored_row == [True] and len(stored) == 4
