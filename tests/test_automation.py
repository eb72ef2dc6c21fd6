"""Automation from crawl to score, evaluated as the daemon would (no daemon): a stage follows the stage before it
only when that stage's data version changed; training only with $WEBDANCER_AUTOMATE_TRAINING=1.

Materializations are reported straight into a run history with their data versions (what a run records), so the
conditions are tested without running a crawl or a training."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from automation_ticks import Ticks, record, record_everything

from webdancer_dagster.assets.automation import AUTOMATE_TRAINING_ENV, automate_training
from webdancer_dagster.definitions import defs

REPO = Path(__file__).parents[1]
ON_WITH_THE_SWITCH = """
import dagster as dg
from automation_ticks import Ticks, record, record_everything
from webdancer_dagster.definitions import defs

with dg.instance_for_test() as instance:
    record_everything(instance, defs)
    ticks = Ticks(defs, instance)
    assert ticks.tick() == {}
    record(instance, "sft_dataset", "v2")
    assert ticks.tick() == {"sft_checkpoint": {"None"}}, "sft_checkpoint did not follow sft_dataset"
    record(instance, "sft_checkpoint", "new-sha256")
    requested = ticks.tick()
    assert requested == {"rl_checkpoint": {"None"}, "benchmark_scores": {"musique|sft", "synth_monitor|sft"}}, requested
    record(instance, "sft_checkpoint", "new-sha256")  # the same weights again: nothing to do
    assert ticks.tick() == {}
print("ok")
"""


@pytest.fixture
def ticks():
    with dg.instance_for_test() as instance:
        record_everything(instance, defs)
        ticks = Ticks(defs, instance)
        assert ticks.tick() == {}  # everything materialized, no version changed: nothing to do
        yield ticks


def test_an_unchanged_crawl_requests_nothing(ticks):
    record(ticks.instance, "crawl_pages", "v1", "wiki")  # a re-crawl that found every page as it was

    assert ticks.tick() == {}
    assert ticks.tick() == {}


def test_a_changed_crawl_refreshes_the_index_and_the_qa_pairs_then_trajectories_follow(ticks):
    record(ticks.instance, "crawl_pages", "v2", "wiki")

    assert ticks.tick() == {"search_index": {"None"}, "crawlqa_pairs": {"None"}, "e2hqa_pairs": {"None"}}
    assert ticks.tick() == {}  # requested once, not again while nothing new happened

    # The run that the tick requested wrote new QA pairs (same index content): trajectories follow, not the QA pairs.
    for asset in ("search_index", "crawlqa_pairs", "e2hqa_pairs"):
        record(ticks.instance, asset, "v2" if asset != "search_index" else "v1")
    assert ticks.tick() == {"trajectories": {"None"}}

    record(ticks.instance, "trajectories", "v2")
    assert ticks.tick() == {"sft_dataset": {"None"}, "rl_pool": {"None"}}

    record(ticks.instance, "sft_dataset", "v2")  # training automation is off by default
    record(ticks.instance, "rl_pool", "v2")
    assert ticks.tick() == {}


def test_qa_pairs_rewritten_with_the_same_content_request_nothing(ticks):
    record(ticks.instance, "crawlqa_pairs", "v1")
    record(ticks.instance, "e2hqa_pairs", "v1")

    assert ticks.tick() == {}


@pytest.mark.parametrize(("checkpoint", "model"), [("sft_checkpoint", "sft"), ("rl_checkpoint", "rl")])
def test_a_new_checkpoint_is_scored_on_the_default_benchmarks_and_nothing_trains(ticks, checkpoint, model):
    record(ticks.instance, checkpoint, "new-sha256")

    # The local-web benchmarks: MuSiQue and the monitoring split of the synthesized pairs.
    assert ticks.tick() == {"benchmark_scores": {f"musique|{model}", f"synth_monitor|{model}"}}
    assert ticks.tick() == {}


def test_the_training_switch_reads_the_environment():
    assert automate_training({}) is False
    assert automate_training({AUTOMATE_TRAINING_ENV: "1"}) is True
    assert automate_training({AUTOMATE_TRAINING_ENV: "off"}) is False
    with pytest.raises(ValueError, match=AUTOMATE_TRAINING_ENV):
        automate_training({AUTOMATE_TRAINING_ENV: "maybe"})


def test_with_the_switch_on_training_follows_its_inputs(tmp_path):
    environment = {
        **os.environ,
        AUTOMATE_TRAINING_ENV: "1",  # read when the definitions load: a fresh interpreter
        "DAGSTER_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", ON_WITH_THE_SWITCH],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_every_condition_is_named_in_the_ui():
    graph = defs.resolve_asset_graph()
    labels = {
        key.to_user_string(): graph.get(key).automation_condition.get_label()
        for key in graph.get_all_asset_keys()
        if graph.get(key).automation_condition is not None
    }
    assert labels == {
        "search_index": "rebuild_when_content_changes",
        "crawlqa_pairs": "refresh_when_crawl_changes",
        "e2hqa_pairs": "refresh_when_crawl_changes",
        "trajectories": "follow_qa_pairs",
        "sft_dataset": "follow_trajectories",
        "rl_pool": "follow_trajectories",
        "sft_checkpoint": f"training automation off: set {AUTOMATE_TRAINING_ENV}=1 where the UI starts to turn it on",
        "rl_checkpoint": f"training automation off: set {AUTOMATE_TRAINING_ENV}=1 where the UI starts to turn it on",
        "benchmark_scores": "score_new_checkpoints",
    }


def test_the_automation_sensor_and_the_recrawl_schedules_run_by_default():
    sensor = defs.resolve_sensor_def("webdancer_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert all(schedule.default_status == dg.DefaultScheduleStatus.RUNNING for schedule in defs.schedules or [])
