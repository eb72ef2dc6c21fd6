"""Two materializations of one `benchmark_scores` partition at once, in two processes over one home: the second waits
for the first, then resumes from what it stored, so the warehouse holds each (question, run) once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from webdancer_dagster.evaluation.partition import PartitionEvaluation
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore

RACER = Path(__file__).with_name("eval_racer.py")
QUESTIONS, RUNS = 2, 2


def closed_book_answer(request: dict) -> str:
    return "<think>I cannot search, so I answer from memory.</think>\n<answer>Ada Lovelace</answer>"


@pytest.mark.slow
def test_two_runs_of_one_evaluation_partition_store_each_run_once(isolated_home, tmp_path):
    meet = tmp_path / "meet"
    meet.mkdir()
    config = json.dumps({"max_questions": QUESTIONS, "runs": RUNS, "max_llm_calls": 2})
    with ScriptedLLMServer(closed_book_answer) as policy:
        racers = [
            subprocess.Popen(
                [sys.executable, str(RACER), str(isolated_home), policy.base_url, config, str(meet)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            for _ in range(2)
        ]
        outputs = [racer.communicate(timeout=240) for racer in racers]
    for racer, (_, stderr) in zip(racers, outputs, strict=True):
        assert racer.returncode == 0, stderr[-3000:]
    reports = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]

    wanted = QUESTIONS * RUNS
    assert len(policy.requests) == wanted  # the second run answered nothing again
    assert sorted(report["runs_resumed"] for report in reports) == [0, wanted]
    assert [report["dagster/row_count"] for report in reports] == [wanted, wanted]
    assert reports[0]["pass_at_1"] == reports[1]["pass_at_1"] == 0.0
    store = WarehouseStore(isolated_home)
    runs = store.read_table("eval_runs")
    assert len(runs) == wanted and not runs.duplicated(["question_id", "run"]).any()
    scores = store.read_table("scores")
    assert len(scores) == 1 and scores.loc[0, "questions"] == QUESTIONS


def test_a_run_that_waits_too_long_for_its_partition_is_refused_naming_the_holder(isolated_home):
    store = WarehouseStore(isolated_home)
    labels = {"model": "base", "benchmark": "bamboogle", "setting": "closed_book", "policy": "p", "judge": "rules"}
    partition = "bamboogle|base"
    with PartitionEvaluation.locked(store, partition, "fingerprint", [], RUNS, labels):
        with pytest.raises(TimeoutError) as refused:
            with PartitionEvaluation.locked(store, partition, "fingerprint", [], RUNS, labels, timeout_s=0.2):
                pytest.fail("two runs of one partition held it at once")
    lock = isolated_home / "locks" / "eval-bamboogle.base.lock"
    assert str(refused.value) == (
        f"waited 0.2 s for the lock {lock}, still held by the evaluation of bamboogle|base (pid {os.getpid()})"
    )
