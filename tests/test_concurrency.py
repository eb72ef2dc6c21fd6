"""The run history the CLI creates holds a run queue and the pools' limit; the heavy assets claim their pools; a pool
slot held by a run killed with kill -9 is given back once the run is reported failed."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from webdancer_dagster.concurrency import DAGSTER_YAML, LLM_POOL, TRAINING_POOL
from webdancer_dagster.definitions import defs
from webdancer_dagster.pipeline import ensure_dagster_home
from webdancer_dagster.run_history import fail_orphaned_runs


@pytest.fixture
def dagster_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "dagster"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_the_created_run_history_has_a_run_queue_and_pool_limits(dagster_home):
    ensure_dagster_home(dagster_home)

    with dg.DagsterInstance.get() as instance:
        config = instance.get_concurrency_config()
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert config.run_queue_config is not None and config.run_queue_config.max_concurrent_runs == 1
        assert config.pool_config.default_pool_limit == 1
        assert config.pool_config.pool_granularity is not None
        assert config.pool_config.pool_granularity.value == "op"
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 30
        assert instance.get_settings("telemetry") == {"enabled": False}
        for pool in (TRAINING_POOL, LLM_POOL):
            assert instance.event_log_storage.get_concurrency_info(pool).limit == 1


def test_the_config_is_written_once_and_an_edited_one_is_kept(dagster_home):
    config = ensure_dagster_home(dagster_home) / "dagster.yaml"
    assert config.read_text() == DAGSTER_YAML
    edited = DAGSTER_YAML.replace("max_concurrent_runs: 1", "max_concurrent_runs: 8")
    config.write_text(edited)

    ensure_dagster_home(dagster_home)

    assert config.read_text() == edited


def test_the_default_an_earlier_version_wrote_is_brought_up_to_date(dagster_home):
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")

    ensure_dagster_home(dagster_home)

    assert (dagster_home / "dagster.yaml").read_text() == DAGSTER_YAML


def test_training_and_the_llm_heavy_assets_claim_their_pools():
    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    training = {"sft_checkpoint", "rl_checkpoint"}
    assert {name for name, claimed in pools.items() if claimed == {TRAINING_POOL}} == training
    llm_heavy = {"crawlqa_pairs", "e2hqa_pairs", "trajectories", "sft_dataset", "rl_pool", "benchmark_scores"}
    assert {name for name, claimed in pools.items() if claimed == {LLM_POOL}} == llm_heavy


RUN_THAT_HOLDS_THE_TRAINING_POOL = """
import pathlib, sys, time
import dagster as dg

@dg.asset(pool="training")
def trains() -> None:
    pathlib.Path(sys.argv[1]).write_text("holding the training slot")
    time.sleep(300)

with dg.DagsterInstance.get() as instance:
    dg.materialize([trains], instance=instance)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run_history reads /proc")
def test_a_slot_held_by_a_killed_run_is_freed_when_the_run_is_reported_failed(dagster_home, tmp_path):
    ensure_dagster_home(dagster_home)
    started = tmp_path / "started"
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUN_THAT_HOLDS_THE_TRAINING_POOL), str(started)])
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started.exists(), "the run never reached its training step"
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()

    with dg.DagsterInstance.get() as instance:
        (killed,) = instance.get_runs()
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).active_run_ids == {killed.run_id}

        assert fail_orphaned_runs(instance) == [killed.run_id]

        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        info = instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
        assert info.active_slot_count == 0 and info.pending_step_count == 0

        # The next training step gets the slot (it would wait forever on a slot nobody gives back).
        @dg.asset(pool=TRAINING_POOL)
        def trains_next() -> None:
            return None

        assert dg.materialize([trains_next], instance=instance).success


def test_reporting_a_killed_run_failed_does_not_by_itself_give_its_slot_back(dagster_home):
    """Why `fail_orphaned_runs` frees the slots: Dagster leaves them to the daemon's run monitoring."""
    ensure_dagster_home(dagster_home)
    with dg.DagsterInstance.get() as instance:
        run = instance.create_run_for_job(dg.GraphDefinition("killed").to_job(), status=dg.DagsterRunStatus.STARTED)
        instance.event_log_storage.initialize_concurrency_limit_to_default(TRAINING_POOL)
        assert instance.event_log_storage.claim_concurrency_slot(TRAINING_POOL, run.run_id, "trains").is_claimed

        instance.report_run_failed(run, message="killed")

        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).active_run_ids == {run.run_id}
        fail_orphaned_runs(instance)
        assert instance.event_log_storage.get_concurrency_info(TRAINING_POOL).active_slot_count == 0
