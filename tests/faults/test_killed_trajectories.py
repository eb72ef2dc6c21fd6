"""kill -9 of the process sampling `trajectories` half way: the table keeps its previous version, and the rerun pays
for no model call the killed run already got an answer to (the response cache), and stores each attempt once."""

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest
from fault_helpers import ROLES, build_local_web, llm_assets, llm_run_config, metadata, ops_for, teacher
from scripted_roles import scripted_resources

from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer, ScriptedReply
from webdancer_dagster.warehouse import WarehouseStore

RUNNER = Path(__file__).with_name("trajectories_runner.py")
# Of the killed run's requests (its first pair is cached already): the second pair's three agent turns (its page
# summary is cached too), then the judge's verdicts on the released trajectories, the second of which the kill cuts off.
KILL_AT_REQUEST = 5
REFERENCES = 4


class KillSwitch:
    """The scripted teacher, holding the killed run's KILL_AT_REQUEST-th request until the test has killed it."""

    def __init__(self) -> None:
        self.armed = False
        self.answered: list[dict] = []
        self.held: list[dict] = []
        self.reached, self.release = threading.Event(), threading.Event()

    def __call__(self, request: dict) -> ScriptedReply | str:
        if self.armed and len(self.answered) + 1 == KILL_AT_REQUEST:
            self.armed = False
            self.held.append(request)
            self.reached.set()
            self.release.wait(120)
            return ScriptedReply(drop=True)
        if self.armed:
            self.answered.append(request)
        return teacher(request)


def canonical(request: dict) -> str:
    return json.dumps(request, sort_keys=True)


@pytest.mark.slow
def test_a_killed_trajectories_run_resumes_from_the_cache_and_stores_each_attempt_once(
    small_web, isolated_home, tmp_path
):
    data, docs = small_web
    config = llm_run_config(data, docs, max_pairs=2)
    build_local_web(config, isolated_home)
    switch = KillSwitch()
    with ScriptedLLMServer(switch) as server:
        resources = scripted_resources(
            isolated_home, server.base_url, ROLES, capable_judge=lambda role: role == "judge"
        )

        def run(selection: list[str], run_config: dict) -> dg.ExecuteInProcessResult:
            result = dg.materialize(
                llm_assets(), selection=selection, resources=resources, run_config=run_config,
                instance=dg.DagsterInstance.ephemeral(),
            )  # fmt: skip
            assert result.success
            return result

        run(["e2hqa_pairs"], ops_for(config, ["e2hqa_pairs"]))
        run(["crawlqa_pairs"], ops_for(config, ["crawlqa_pairs"]))
        store = WarehouseStore(isolated_home)
        pair_ids = store.read_table("crawlqa_pairs")["id"].tolist()[:2]
        assert len(pair_ids) == 2
        # The previous version: the first pair only, no released trajectories.
        settings = config["ops"]["trajectories"]["config"]
        first = {"ops": {"trajectories": {"config": {**settings, "max_pairs": 1, "include_reference": False}}}}
        run(["trajectories"], first)
        previous = store.read_table("trajectories")

        switch.armed = True
        log = tmp_path / "killed-run.log"
        command = [sys.executable, str(RUNNER), str(isolated_home), server.base_url]
        with log.open("w") as stderr:
            runner = subprocess.Popen(
                [*command, json.dumps(ops_for(config, ["trajectories"]))], stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            while not switch.reached.wait(0.2):
                assert runner.poll() is None, f"the run ended before the kill: {log.read_text()[-3000:]}"
            os.kill(runner.pid, signal.SIGKILL)
            runner.wait(timeout=60)
        finally:
            switch.release.set()
            if runner.poll() is None:
                runner.kill()
        assert runner.returncode == -signal.SIGKILL and len(switch.answered) == KILL_AT_REQUEST - 1
        assert store.read_table("trajectories").equals(previous)  # nothing half-written

        before = len(server.requests)
        rerun = run(["trajectories"], ops_for(config, ["trajectories"]))
        asked_again = {canonical(request) for request in server.requests[before:]}

    assert not asked_again & {canonical(request) for request in switch.answered}  # every answer came from the cache
    assert canonical(switch.held[0]) in asked_again  # the request the kill cut off is asked again
    assert "Judge whether the predicted answer" in switch.held[0]["messages"][-1]["content"]
    meta = metadata(rerun, "trajectories")
    hits = sum(meta[usage]["cache_hits"] for usage in ("teacher_usage", "judge_usage", "summarizer_usage"))
    assert hits >= len(switch.answered) and meta["judge_usage"]["cache_hits"] >= 1
    assert meta["pairs_sampled"] == 2 and meta["attempts"] == 2
    frame = store.read_table("trajectories")
    sampled = frame[frame["model"] == "scripted"]
    assert sorted(sampled["qa_id"]) == sorted(pair_ids) and sampled["accepted"].all()  # no gap, no duplicate
    assert len(frame) == 2 + REFERENCES and not frame.duplicated("trajectory_id").any()
    assert not frame.duplicated(["qa_id", "sample_index", "model"]).any()
