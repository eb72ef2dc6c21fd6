"""Green over empty: a stage that produced nothing, or trained on nothing, gets a non-blocking warning whose words say
what is empty and where to look; the same checks pass on a stage that did its work. Training checks read the
asset's latest materialization metadata, reported here without a training run."""

import json
import re

import dagster as dg
import pandas as pd
import pytest
from corpus_helpers import materialize, run_config
from scripted_roles import scripted_resources

from webdancer_dagster.assets import evaluation, qa, training, trajectories
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.shared.qa import qa_pairs_frame
from webdancer_dagster.synthesis.reference import REFERENCE_MODEL
from webdancer_dagster.synthesis.short_cot import DERIVED_SUFFIX
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore

WARN = dg.AssetCheckSeverity.WARN
DEAD_URL = "http://127.0.0.1:9/v1"  # no call may reach it


def _evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}


def _warned(evaluation: dg.AssetCheckEvaluation, *words: str) -> None:
    """A failed warning whose description, and its `summary` metadata, hold every one of `words`."""
    assert not evaluation.passed and evaluation.severity == WARN
    assert evaluation.metadata["summary"].value == evaluation.description
    for word in words:
        assert word in evaluation.description, f"{word!r} not in {evaluation.description!r}"


def _crawlqa(home, teacher, instance) -> dict[str, dg.AssetCheckEvaluation]:
    with ScriptedLLMServer(teacher) as server:
        result = dg.materialize(
            [qa.crawlqa_pairs, qa.crawlqa_leakage, qa.crawlqa_not_empty],
            resources=scripted_resources(home, server.base_url, ("teacher_short",)),
            run_config={
                "ops": {
                    "crawlqa_pairs": {
                        "config": {"clusters": 1, "subpages": 2, "min_page_chars": 20, "json_format": "none"}
                    }
                }
            },
            instance=instance,
        )
    assert result.success, "a warning must not stop the pipeline"
    return _evaluations(result)


def grounded_teacher(request: dict) -> str:
    prompt = request["messages"][-1]["content"]
    labels = re.findall(r"^\[(Page \d+)\]\nURL: \S+", prompt, flags=re.MULTILINE)
    return json.dumps({"question": "Which kingdom did these people rule?", "answer": "Lotharingia",
                       "source_pages": labels})  # fmt: skip


def test_crawlqa_warns_when_the_teacher_wrote_no_usable_question_and_passes_when_it_did(small_web, isolated_home):
    data, docs = small_web
    config = run_config(data, docs)
    materialize(["web_sites"], config, isolated_home)
    materialize(["crawl_pages"], config, isolated_home, partition_key="wiki")
    instance = dg.DagsterInstance.ephemeral()

    empty = _crawlqa(isolated_home, lambda request: "not json at all", instance)

    assert len(WarehouseStore(isolated_home).read_table("crawlqa_pairs")) == 0
    check = empty["crawlqa_pairs_are_not_empty"]
    _warned(check, "crawlqa_pairs holds 0 pairs", "the teacher wrote no usable question", "not_json",
            "drops_by_reason", "qa_drops")  # fmt: skip
    assert check.metadata["pairs"].value == 0 and check.metadata["drops_by_reason"].value["not_json"] >= 1
    leakage = empty["crawlqa_pairs_do_not_leak_benchmarks"]
    assert leakage.passed and leakage.description.startswith("checked 0 pairs: nothing to leak")
    assert leakage.metadata["summary"].value == leakage.description

    kept = _crawlqa(isolated_home, grounded_teacher, instance)

    check = kept["crawlqa_pairs_are_not_empty"]
    assert check.passed and check.description.startswith("crawlqa_pairs holds 1 pairs")
    leakage = kept["crawlqa_pairs_do_not_leak_benchmarks"]
    assert leakage.passed and re.match(r"checked 1 pair against \d+ benchmark questions", leakage.description)


def test_empty_pairs_problems_say_when_no_attempt_was_made():
    assert qa.empty_pairs_problems("e2hqa_pairs", 3, pd.Series(["not_json"])) == []
    [words] = qa.empty_pairs_problems("e2hqa_pairs", 0, pd.Series([], dtype=str))
    assert "nothing was dropped: no attempt was made" in words
    [words] = qa.empty_pairs_problems("e2hqa_pairs", 0, pd.Series(["ungrounded", "not_json", "not_json"]))
    assert "3 drops, top reasons: not_json 2, ungrounded 1" in words and "(asset = 'e2hqa_pairs')" in words


def test_trajectories_and_sft_set_of_released_trajectories_only_warn(isolated_home):
    """No synthesized pair: trajectories holds only WebDancer's released ones, and so does the SFT set."""
    store = WarehouseStore(isolated_home)
    for table in ("crawlqa_pairs", "e2hqa_pairs", "reference_qa_pairs"):
        store.replace_table(table, qa_pairs_frame([]))
    roles = ("teacher_short", "teacher_long", "summarizer", "judge")
    result = dg.materialize(
        [trajectories.trajectories, trajectories.funnel, trajectories.trajectories_has_accepted_samples,
         trajectories.sft_dataset_has_enough_chats],
        resources=scripted_resources(isolated_home, DEAD_URL, roles),
        run_config={"ops": {"trajectories": {"config": {"max_reference": 4}}}},
        instance=dg.DagsterInstance.ephemeral(),
    )  # fmt: skip

    assert result.success
    checks = _evaluations(result)
    _warned(checks["trajectories_has_accepted_samples"], "0 QA pairs were sampled",
            "only the 4 released reference trajectories", "_are_not_empty")  # fmt: skip
    assert checks["trajectories_has_accepted_samples"].metadata["reference_trajectories"].value == 4
    sft = store.read_table("sft_dataset")
    assert 0 < len(sft) < trajectories.MIN_SFT_CHATS
    sft_check = checks["sft_dataset_has_enough_chats"]
    _warned(sft_check, f"holds {len(sft)} chats, fewer than 10", f"none of the {len(sft)} chats was sampled",
            REFERENCE_MODEL)  # fmt: skip
    assert sft_check.metadata["teacher_sampled"].value == 0
    assert sft_check.metadata["by_model"].value == {REFERENCE_MODEL: len(sft)}


def _attempts(*rows: tuple[str, bool, str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["model", "accepted", "validity_reason", "termination"])
    return frame.assign(qa_id=[f"qa-{index // 2}" for index in range(len(frame))])


def test_trajectories_problems_name_why_no_sample_was_accepted():
    released = (REFERENCE_MODEL, True, "", "answer")
    accepted = _attempts(("teacher", False, "format", "format_error"), ("teacher", True, "", "answer"), released)
    assert trajectories.trajectories_problems(accepted) == []
    rejected = _attempts(
        ("teacher", False, "format", "format_error"), ("teacher", False, "format", "format_error"),
        ("teacher", False, "", "max_llm_calls"), released, (REFERENCE_MODEL + DERIVED_SUFFIX, True, "", "answer"),
    )  # fmt: skip
    [words] = trajectories.trajectories_problems(rejected)
    assert "no sampled attempt was accepted: 3 attempts on 2 QA pairs" in words
    assert "invalid: format 2" in words and "endings: format_error 2, max_llm_calls 1" in words


def test_sft_dataset_problems_pass_a_set_with_enough_teacher_samples():
    chats = pd.DataFrame({"source": ["crawlqa"] * 2 + ["webdancer_sample"] * 8,
                          "model": ["teacher"] * 2 + [REFERENCE_MODEL] * 8})  # fmt: skip
    assert trajectories.sft_dataset_problems(chats) == []
    [words] = trajectories.sft_dataset_problems(chats.iloc[2:].assign(model=REFERENCE_MODEL + DERIVED_SUFFIX), 5)
    assert words.startswith("none of the 8 chats was sampled from the teacher")


def _check_alone(asset, check, metadata: dict | None, resources: dict) -> dg.AssetCheckEvaluation:
    """Run `check` by itself after reporting a materialization of its asset with `metadata` (none: never)."""
    instance = dg.DagsterInstance.ephemeral()
    if metadata is not None:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset.key, metadata=metadata))
    result = dg.materialize(
        [asset, check], selection=dg.AssetSelection.checks(check), resources=resources, instance=instance
    )
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


SFT_RECORD = {"examples": 20, "labelled_tokens": 900, "dropped": {}, "shortened": {"observations_shortened": 3},
              "hyperparameters": {"max_length": 2048}}  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({}, None),
        ({"shortened": {"observations_shortened": 20}},
         ["dropped 0 and shortened 20 of 20 chats", "max_length=2048", "observations_shortened 20"]),
        ({"examples": 2, "dropped": {"too_long": 3}, "shortened": {}}, ["dropped 3 and shortened 0 of 5 chats"]),
        ({"labelled_tokens": 0}, ["0 labelled (assistant) tokens"]),
    ],
)  # fmt: skip
def test_sft_checkpoint_check_reads_what_training_dropped_and_shortened(isolated_home, changes, words):
    metadata = {**SFT_RECORD, **changes}
    resources = {
        "warehouse": scripted_resources(isolated_home, DEAD_URL, ())["warehouse"],
        "torchrun": TorchrunLauncher(),
    }
    reported = {
        key: dg.MetadataValue.json(value) if isinstance(value, dict) else value for key, value in metadata.items()
    }

    check = _check_alone(training.sft_checkpoint, training.sft_checkpoint_trained_on_its_chats, reported, resources)

    if words is None:
        assert check.passed and check.description == "trained on 20 chats (900 labelled tokens)"
    else:
        _warned(check, *words)


def test_training_checks_warn_before_any_materialization(isolated_home):
    resources = {
        "warehouse": scripted_resources(isolated_home, DEAD_URL, ())["warehouse"],
        "torchrun": TorchrunLauncher(),
    }
    check = _check_alone(training.sft_checkpoint, training.sft_checkpoint_trained_on_its_chats, None, resources)
    _warned(check, "sft_checkpoint has no materialization yet")


def _rl_record(*shares: float) -> dict:
    history = [{"step": step, "loss": 0.0, "dynamic_sampling/dropped_group_share": share}
               for step, share in enumerate(shares, start=1)]  # fmt: skip
    return {"steps": len(shares), "idle_steps": dg.MetadataValue.json(training.idle_steps(history))}


def test_rl_checkpoint_check_counts_the_steps_that_trained_on_nothing(isolated_home):
    roles = ("judge", "summarizer")
    resources = {**scripted_resources(isolated_home, DEAD_URL, roles), "torchrun": TorchrunLauncher()}
    asset, check_def = training.rl_checkpoint, training.rl_checkpoint_every_step_trained

    idle = _check_alone(asset, check_def, _rl_record(0.5, 1.0, 1.0), resources)
    _warned(idle, "dropped every group in 2 of 3 steps (step 2, 3)", "(loss 0)", "see train_history_file")
    assert idle.metadata["steps_trained_on_nothing"].value == 2 and idle.metadata["idle_steps"].value == [2, 3]

    # A materialization from before `idle_steps` was metadata: its whole history is read instead.
    history = [{"step": step, "dynamic_sampling/dropped_group_share": share} for step, share in [(1, 1.0), (2, 0.5)]]
    older = _check_alone(asset, check_def, {"steps": 2, "train_history": dg.MetadataValue.json(history)}, resources)
    assert not older.passed and older.metadata["idle_steps"].value == [1]

    busy = _check_alone(asset, check_def, _rl_record(0.0, 0.5), resources)
    assert busy.passed and busy.description == "every one of 2 steps trained on at least one group"


def _score_row(partition: str, answered_rate: float, **terminations: int) -> dict:
    model, benchmark = partition.split("|")
    row = {
        "partition": partition,
        "model": model,
        "benchmark": benchmark,
        "questions": 3,
        "runs_per_question": 3,
        "answered_rate": answered_rate,
        "format_valid_rate": 0.0,
        "pass_at_1": 0.0,
        "exact_match": 0.0,
        "f1": 0.0,
    }
    return {**row, **{f"termination_{name}": count for name, count in terminations.items()}}  # fmt: skip


def test_benchmark_check_names_each_partition_in_which_no_run_answered(isolated_home):
    resources = scripted_resources(isolated_home, DEAD_URL, ("policy", "summarizer", "judge"))
    asset, check_def = evaluation.benchmark_scores, evaluation.benchmark_partitions_answered
    _warned(_check_alone(asset, check_def, None, resources), "no scored partitions yet")
    store = WarehouseStore(isolated_home)
    scores = [
        _score_row("base|musique", 0.0, max_llm_calls=6, format_error=3, answer=0),
        _score_row("sft|musique", 0.5, answer=5, max_llm_calls=4),
    ]
    store.replace_table("scores", pd.DataFrame(scores))

    check = _check_alone(asset, check_def, None, resources)

    _warned(check, "no run answered in base|musique: all 9 runs ended without an answer (max_llm_calls 6, "
            "format_error 3)")  # fmt: skip
    assert "sft|musique" not in check.description
    assert check.metadata["unanswered_partitions"].value == ["base|musique"]

    store.replace_table("scores", pd.DataFrame(scores[1:]))
    check = _check_alone(asset, check_def, None, resources)
    assert check.passed and check.description == "every one of the 1 scored partitions has answered runs"
