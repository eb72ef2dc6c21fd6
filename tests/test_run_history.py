"""kill -9 of a run: no model server survives it, and the next run reports the killed one failed."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from webdancer_dagster.pipeline import ensure_dagster_home
from webdancer_dagster.run_history import fail_orphaned_runs, run_process_ids

RUN_THAT_HOLDS_A_MODEL_SERVER = """
import sys, threading, time
import dagster as dg
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.resources.llm import LocalModelServer

@dg.asset
def needs_a_model(llm_server: LocalModelServer) -> None:
    servers = []  # started lazily from a worker thread, as a role's first request does
    worker = threading.Thread(target=lambda: servers.append(llm_server.ensure_running()))
    worker.start(); worker.join()
    print(servers[0]._process.pid, flush=True)
    time.sleep(300)

server = LocalModelServer(model_path=str(find_smollm2_gguf()), n_ctx=512, n_threads=1)
with dg.DagsterInstance.get() as instance:
    dg.materialize([needs_a_model], resources={"llm_server": server}, instance=instance)
"""


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals and /proc are Linux's")
def test_a_killed_run_leaves_no_model_server_and_the_next_run_reports_it_failed(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("llama_cpp")
    dagster_home = ensure_dagster_home(tmp_path / "dagster")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    run = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RUN_THAT_HOLDS_A_MODEL_SERVER)], stdout=subprocess.PIPE, env=env
    )
    server_pid = int(run.stdout.readline())
    assert _running(server_pid)

    run.send_signal(signal.SIGKILL)
    run.wait()
    deadline = time.monotonic() + 10
    while _running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = _running(server_pid)
    if survived:
        os.killpg(server_pid, signal.SIGKILL)
    assert not survived, "the llama.cpp server outlived the killed run"

    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        (killed,) = instance.get_runs()
        assert killed.status == dg.DagsterRunStatus.STARTED  # nothing was left to end it
        assert fail_orphaned_runs(instance) == [killed.run_id]
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        assert fail_orphaned_runs(instance) == []


def test_a_run_whose_process_lives_is_left_alone() -> None:
    swept: list[list[str]] = []
    seen: list[set[int]] = []

    @dg.asset
    def still_running(context: dg.AssetExecutionContext) -> None:
        seen.append(run_process_ids(context.instance, context.run_id))
        swept.append(fail_orphaned_runs(context.instance))

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([still_running], instance=instance)

    assert result.success and seen == [{os.getpid()}] and swept == [[]]
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
