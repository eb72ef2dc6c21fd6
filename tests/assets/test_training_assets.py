"""Training assets: `base_model` from a local folder, `sft_checkpoint` through the real torchrun launcher on a tiny
random Llama with the real tokenizer, its blocking load check, reuse of a finished run, and an empty SFT set."""

import base64
import json
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from scripted_roles import scripted_resources

from webdancer_dagster.assets.training import (
    ENVIRONMENT_FILE,
    base_model,
    rl_checkpoint,
    rl_checkpoint_every_step_trained,
    rl_checkpoint_loads,
    sft_checkpoint,
    sft_checkpoint_loads,
)
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import SEARCH_INDEX_DIR
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.testing.tiny_model import create_tiny_llama
from webdancer_dagster.training.artifacts import (
    prepare_run,
    read_run_record,
    rl_jsonl,
    run_key,
    sft_jsonl,
    write_run_record,
)
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import build_search_index

SFT_COLUMNS = ["id", "qa_id", "source", "kind", "cot_mode", "model", "messages"]
TRAINING_ASSETS = [base_model, sft_checkpoint, sft_checkpoint_loads]
MAX_STEPS = 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return create_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", find_smollm2_gguf())


def _sample_rows(count: int) -> pd.DataFrame:
    """Released WebDancer trajectories in the `sft_dataset` table's shape (messages as JSON text)."""
    lines = (DATA_DIR / "webdancer_samples" / "sample_traj.jsonl").read_text(encoding="utf-8").splitlines()[:count]
    return pd.DataFrame(
        [
            {
                "id": f"sample-{index}",
                "qa_id": f"qa-{index}",
                "source": "webdancer_sample",
                "kind": "reference",
                "cot_mode": "long",
                "model": "webdancer",
                "messages": json.dumps(json.loads(line)["messages"], ensure_ascii=False),
            }
            for index, line in enumerate(lines)
        ]
    )


def _materialize(tiny_model: BaseModel, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        TRAINING_ASSETS,
        resources={"warehouse": Warehouse(), "torchrun": TorchrunLauncher(nproc_per_node=1, device="cpu")},
        run_config={
            "ops": {
                "base_model": {"config": {"source": str(tiny_model.path)}},
                "sft_checkpoint": {
                    "config": {"max_steps": MAX_STEPS, "learning_rate": 1e-3, "warmup_ratio": 0.0, "save_steps": 1}
                },
            }
        },
        instance=instance,
        raise_on_error=False,
    )


def _sft_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dg.MetadataValue]:
    return result.asset_materializations_for_node("sft_checkpoint")[0].metadata


def _check_passed(result: dg.ExecuteInProcessResult) -> bool:
    evaluations = result.get_asset_check_evaluations()
    assert [evaluation.check_name for evaluation in evaluations] == ["sft_checkpoint_loads"]
    return evaluations[0].passed


def test_sft_checkpoint_trains_through_torchrun_passes_its_check_and_is_reused(
    isolated_home: Path, tiny_model: BaseModel
) -> None:
    WarehouseStore(isolated_home).replace_table("sft_dataset", _sample_rows(2))
    instance = dg.DagsterInstance.ephemeral()

    first = _materialize(tiny_model, instance)

    assert first.success
    base = first.asset_materializations_for_node("base_model")[0].metadata
    assert base["sha256"].value == tiny_model.sha256 and base["parameters"].value == tiny_model.parameters
    assert base["tokenizer"].value["chat_template"] is True
    metadata = _sft_metadata(first)
    assert metadata["steps"].value == MAX_STEPS and metadata["reused"].value is False
    history = json.loads(Path(metadata["loss_history_file"].value).read_text())  # a file: metadata stays short
    assert [entry["step"] for entry in history] == [1, 2]
    assert 0 < metadata["final_loss"].value == history[-1]["loss"] < 20
    assert metadata["first_loss"].value == history[0]["loss"]
    assert metadata["lowest_loss"].value == min(entry["loss"] for entry in history)
    streamed = [record.user_message for record in instance.all_logs(first.run_id)]
    assert any(f"step 1/{MAX_STEPS} loss" in message for message in streamed), "rank 0 did not stream its loss"
    prefix = "![SFT loss curve](data:image/png;base64,"
    plot_markdown = metadata["loss_curve"].value
    assert plot_markdown.startswith(prefix) and plot_markdown.endswith(")")
    assert base64.b64decode(plot_markdown[len(prefix) : -1]).startswith(b"\x89PNG\r\n\x1a\n")
    assert Path(metadata["loss_curve_png"].value).read_bytes().startswith(b"\x89PNG")
    assert metadata["tokens_seen"].value > 0 and 0 < metadata["masked_token_share"].value < 1
    assert metadata["examples"].value == metadata["sft_rows"].value == 2
    turns = metadata["assistant_turn_tokens"].value
    assert 0 < turns["p50"] <= turns["p95"] <= turns["max"] and set(metadata["chat_tokens"].value) == set(turns)
    recorded_sft = WarehouseStore(isolated_home).read_table("sft_checkpoint").iloc[0]
    assert recorded_sft["assistant_turn_tokens_p95"] == turns["p95"]  # what evaluation's turn budget follows
    assert metadata["seconds_per_step"].value > 0
    checkpoint = Path(metadata["checkpoint_path"].value)
    assert metadata["checkpoint_sha256"].value == folder_sha256(checkpoint)
    assert metadata["upstream_content_hashes"].value["base_model"] == tiny_model.sha256
    assert _check_passed(first)
    run_dir = checkpoint.parent
    launches = sorted((run_dir / "logs").glob("torchrun-*"))
    assert len(launches) == 1
    # The run saved a resume checkpoint each step; once its record is written they are gone, its weights stay.
    [removed] = [r.user_message for r in instance.all_logs(first.run_id) if "resume checkpoints" in r.user_message]
    assert float(removed.split(": ")[1].split()[0]) > 0, removed
    assert not list(run_dir.glob("checkpoint-*")) and (run_dir / "final" / "model.safetensors").is_file()

    second = _materialize(tiny_model, instance)

    assert second.success
    again = _sft_metadata(second)
    assert again["reused"].value is True
    assert again["run_key"].value == metadata["run_key"].value
    assert again["checkpoint_sha256"].value == metadata["checkpoint_sha256"].value
    assert again["steps"].value == MAX_STEPS
    assert sorted((run_dir / "logs").glob("torchrun-*")) == launches, "the second materialization trained again"
    assert any("reusing the finished run" in record.user_message for record in instance.all_logs(second.run_id))
    assert _check_passed(second)


def test_empty_sft_dataset_fails_naming_the_upstream_asset(isolated_home: Path, tiny_model: BaseModel) -> None:
    empty = pd.DataFrame({column: pd.Series(dtype="string") for column in SFT_COLUMNS})
    WarehouseStore(isolated_home).replace_table("sft_dataset", empty)

    result = _materialize(tiny_model, dg.DagsterInstance.ephemeral())

    assert not result.success
    error = result.failure_data_for_node("sft_checkpoint").error.to_string()
    assert "table sft_dataset has no rows: materialize the sft_dataset asset" in error
    assert not (isolated_home / "sft_checkpoint").exists() or not any((isolated_home / "sft_checkpoint").iterdir())


def test_sft_jsonl_is_ordered_by_id_and_carries_the_stored_messages_text() -> None:
    rows = [
        {"id": "b", "messages": json.dumps([{"role": "user", "content": "2 \u00e9"}], ensure_ascii=False)},
        {"id": "a", "messages": json.dumps([{"role": "user", "content": "1"}])},
    ]

    text = sft_jsonl(rows)
    lines = [json.loads(line) for line in text.splitlines()]

    assert lines == [
        {"id": "a", "messages": [{"role": "user", "content": "1"}]},
        {"id": "b", "messages": [{"role": "user", "content": "2 \u00e9"}]},
    ]
    assert rows[0]["messages"] in text  # the funnel's text as it was stored, not re-encoded
    assert sft_jsonl(rows) == sft_jsonl(list(reversed(rows)))
    with pytest.raises(TypeError, match="stored JSON text"):
        sft_jsonl([{"id": "c", "messages": [{"role": "user", "content": "3"}]}])


def test_run_key_changes_with_each_input_and_only_then() -> None:
    key = run_key("data", "model", {"max_steps": 4})

    assert key == run_key("data", "model", {"max_steps": 4})
    assert len({key, run_key("other", "model", {"max_steps": 4})}) == 2
    assert len({key, run_key("data", "other", {"max_steps": 4})}) == 2
    assert len({key, run_key("data", "model", {"max_steps": 5})}) == 2


def test_run_record_is_trusted_only_while_the_checkpoint_is_unchanged(tmp_path: Path) -> None:
    rows = [{"id": "a", "messages": json.dumps([{"role": "user", "content": "1"}])}]
    run = prepare_run(sft_jsonl(rows), len(rows), "model-sha", {"max_steps": 1}, tmp_path)
    checkpoint = run.output_dir / "final"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    assert read_run_record(run.output_dir) is None

    write_run_record(
        run.output_dir, {"checkpoint_path": str(checkpoint), "checkpoint_sha256": folder_sha256(checkpoint)}
    )
    assert read_run_record(run.output_dir)["checkpoint_sha256"] == folder_sha256(checkpoint)

    (checkpoint / "model.safetensors").write_bytes(b"changed")
    assert read_run_record(run.output_dir) is None
    with pytest.raises(ValueError, match="no training records"):
        prepare_run("", 0, "model-sha", {"max_steps": 1}, tmp_path)


def test_rl_jsonl_lists_every_accepted_answer_in_id_order() -> None:
    rows = [
        {"id": "b", "question": "Q2?", "answer": "Two", "answer_aliases": json.dumps(["2"])},
        {"id": "a", "question": "Q1?", "answer": "One", "answer_aliases": "[]"},
    ]

    lines = [json.loads(line) for line in rl_jsonl(rows).splitlines()]

    assert lines == [
        {"id": "a", "question": "Q1?", "answers": ["One"]},
        {"id": "b", "question": "Q2?", "answers": ["Two", "2"]},
    ]


def _rl_world(home: Path) -> pd.DataFrame:
    """The tables and files `rl_checkpoint` reads: an RL pool, one non-benchmark site and its search index (whose
    documents it returns)."""
    site_dir = home / "sites" / "geo"
    site_dir.mkdir(parents=True)
    (site_dir / "france.html").write_text("<html><body><p>Paris is the capital of France.</p></body></html>")
    store = WarehouseStore(home)
    sites = {"name": "geo", "host": "geo.webdancer.test", "root_url": "http://geo.webdancer.test/",
             "directory": str(site_dir), "pages": 1, "benchmark": False, "source": "test"}  # fmt: skip
    store.replace_table("sites", pd.DataFrame([sites]))
    docs = pd.DataFrame(
        [{"url": "http://geo.webdancer.test/france.html", "title": "France", "text": "Paris is the capital of France.",
          "site": "geo"}]
    )  # fmt: skip
    build_search_index(docs, home / SEARCH_INDEX_DIR)
    pairs = [
        QAPair(question=question, answer="Paris", kind="e2hqa", source="e2hqa")
        for question in ("Which city is the capital of France?", "Where does the French government sit?")
    ]
    store.replace_table("rl_pool", qa_pairs_frame(pairs).assign(reason="unsolved"))
    return docs


def test_rl_checkpoint_runs_dapo_on_the_rl_pool_and_records_its_dynamic_sampling(
    isolated_home: Path, tiny_model: BaseModel
) -> None:
    docs = _rl_world(isolated_home)
    with ScriptedLLMServer(lambda request: "Incorrect") as judge:
        resources = {
            **scripted_resources(isolated_home, judge.base_url, ("judge", "summarizer")),
            "torchrun": TorchrunLauncher(nproc_per_node=1, device="cpu"),
        }
        run_config = {
            "ops": {
                "base_model": {"config": {"source": str(tiny_model.path)}},
                "rl_checkpoint": {
                    "config": {
                        "start_from": "base",
                        "max_steps": 1,
                        "max_turn_tokens": 16,
                        "max_llm_calls": 2,
                        "oversample_factor": 1.0,
                        "max_refill_rounds": 1,
                    }
                },
            }
        }
        assets = [base_model, rl_checkpoint, rl_checkpoint_loads, rl_checkpoint_every_step_trained]
        result = dg.materialize(assets, resources=resources, run_config=run_config)
        # search_index materialized again over the same pages: new segment files, the same documents.
        build_search_index(docs, isolated_home / SEARCH_INDEX_DIR)
        again = dg.materialize(assets, resources=resources, run_config=run_config)

    metadata = result.asset_materializations_for_node("rl_checkpoint")[0].metadata
    # A random model never answers: every group is all-zero, dropped, and kept only as a masked filler.
    assert metadata["steps"].value == 1 and metadata["prompts"].value == 2
    assert metadata["dropped_group_share"].value == 1.0 and metadata["tokens_trained"].value == 0
    assert metadata["groups_sampled"].value == 2, "the sampled group, then the other prompt in the refill round"
    assert metadata["reward_curve"].value.startswith("![DAPO reward curve](data:image/png;base64,")
    history = json.loads(Path(metadata["train_history_file"].value).read_text())
    assert history[0]["dynamic_sampling/dropped_group_share"] == 1.0 and metadata["idle_steps"].value == [1]
    assert "train_history" not in metadata  # a file, not a page-long JSON
    assert metadata["upstream_content_hashes"].value["base_model"] == tiny_model.sha256
    assert metadata["judge"].value == "rules"  # the judge role is not declared capable: rules alone reward answers
    recorded = WarehouseStore(isolated_home).read_table("rl_checkpoint").iloc[0]
    assert recorded["sha256"] == metadata["checkpoint_sha256"].value == folder_sha256(Path(recorded["path"]))
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert set(checks) == {"rl_checkpoint_loads", "rl_checkpoint_every_step_trained"}
    assert checks["rl_checkpoint_loads"].passed
    idle = checks["rl_checkpoint_every_step_trained"]  # a warning: the run still succeeded
    assert not idle.passed and idle.severity == dg.AssetCheckSeverity.WARN
    assert "dynamic sampling dropped every group in 1 of 1 steps" in idle.description
    reused = again.asset_materializations_for_node("rl_checkpoint")[0].metadata
    assert reused["reused"].value is True and reused["checkpoint_sha256"].value == metadata["checkpoint_sha256"].value
    launches = list((Path(recorded["path"]).parent / "logs").glob("torchrun-*"))
    assert len(launches) == 1, "the second materialization trained again"
    # The rollouts search as the web resource says, as evaluation and the teacher do.
    environment = json.loads((Path(recorded["path"]).parent / ENVIRONMENT_FILE).read_text())
    assert environment["search_results_per_query"] == metadata["search_results_per_query"].value == 10


def test_rl_checkpoint_trains_only_on_the_pool_sources_asked_for(isolated_home: Path, tiny_model: BaseModel) -> None:
    """The released pairs need the live web; a profile that leaves them out and finds nothing else is told so."""
    _rl_world(isolated_home)  # its pool holds e2hqa pairs only
    resources = {
        **scripted_resources(isolated_home, "http://127.0.0.1:9/v1", ("judge", "summarizer")),
        "torchrun": TorchrunLauncher(nproc_per_node=1, device="cpu"),
    }
    run_config = {
        "ops": {
            "base_model": {"config": {"source": str(tiny_model.path)}},
            "rl_checkpoint": {"config": {"start_from": "base", "pool_sources": ["crawlqa", "webdancer_sample"]}},
        }
    }
    result = dg.materialize([base_model, rl_checkpoint], resources=resources, run_config=run_config,
                            raise_on_error=False)  # fmt: skip
    error = result.failure_data_for_node("rl_checkpoint").error.to_string()
    assert "holds no pair of the sources ['crawlqa', 'webdancer_sample']" in error
    assert not (isolated_home / "rl_checkpoint").exists() or not any((isolated_home / "rl_checkpoint").iterdir())
