"""The monitoring split through Dagster: the funnel keeps its pairs out of SFT and the RL pool, a blocking check stops
training when one got in anyway, and `synth_monitor` scores exactly those pairs."""

import dagster as dg
import pytest
from synth_helpers import answer_turn, make_trajectory, search_turn

from webdancer_dagster.assets import evaluation, trajectories
from webdancer_dagster.evaluation.benchmarks import BENCHMARKS, all_benchmark_questions
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.llm import LLMEndpointResource, LocalModelServer
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame
from webdancer_dagster.shared.split import is_monitor, monitor_pairs, training_pairs
from webdancer_dagster.synthesis.rejection import assess_attempt, attempts_frame
from webdancer_dagster.warehouse import WarehouseStore

PAIRS = [
    QAPair(
        question=f"In which year was the painter number {i} born?", answer=str(1800 + i), kind="e2hqa", source="e2hqa"
    )
    for i in range(20)
]
MONITORED = {pair.id for pair in monitor_pairs(PAIRS)}


def solved(pair: QAPair):
    """An attempt that searches, reads the answer and gives it: every funnel stage keeps it."""
    observation = f"1. [Painter](http://wiki.webdancer.test/wiki/p.html)\nThe painter was born in {pair.answer}."
    trajectory = make_trajectory(
        pair.question, [(search_turn("painter born"), observation), (answer_turn(pair.answer), None)]
    )
    return assess_attempt(pair, trajectory, None)


def store_with_attempts(home) -> WarehouseStore:
    store = WarehouseStore(home)
    empty = qa_pairs_frame([])
    store.write_tables(
        replacements={
            "e2hqa_pairs": qa_pairs_frame(PAIRS),
            "crawlqa_pairs": empty,
            "reference_qa_pairs": empty,
            trajectories.RELEASED_PAIRS_TABLE: empty,
            "trajectories": attempts_frame([solved(pair) for pair in PAIRS]),  # as an older run might hold
        }
    )
    return store


def resources(home):
    warehouse = Warehouse(home=str(home))
    server = LocalModelServer(mode="external", base_url="http://127.0.0.1:9/v1", served_model_name="unused")
    teacher = LLMEndpointResource(role="teacher_short", server=server, warehouse=warehouse)  # no LLM grade: unused
    return {"warehouse": warehouse, "teacher_short": teacher}


def test_the_funnel_keeps_monitoring_pairs_out_of_sft_and_the_rl_pool(tmp_path):
    assert MONITORED and len(MONITORED) < len(PAIRS)  # both sides present, or the test says nothing
    store = store_with_attempts(tmp_path)
    result = dg.materialize(
        [trajectories.funnel, trajectories.funnel_excludes_monitor_pairs],
        resources=resources(tmp_path),
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"funnel": {"config": {"held_out_share": 0.3}}}},
    )
    assert result.success
    sft, rl = store.read_table("sft_dataset"), store.read_table("rl_pool")
    assert set(sft["qa_id"]) | set(rl["id"]) == {pair.id for pair in training_pairs(PAIRS)}
    assert not MONITORED & (set(sft["qa_id"]) | set(rl["id"]))
    assert set(rl["rl_reason"]) == {"held_out"}  # every training pair was solved; some moved to RL
    [rl_event] = result.asset_materializations_for_node("funnel")[1:]
    assert rl_event.metadata["monitor_pairs_excluded"].value == len(MONITORED)
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert set(checks) == {"sft_dataset_excludes_monitor_pairs", "rl_pool_excludes_monitor_pairs"}
    assert all(check.passed for check in checks.values())


def test_a_monitoring_pair_in_the_rl_pool_fails_the_blocking_check(tmp_path):
    store = store_with_attempts(tmp_path)
    leaked = next(pair for pair in PAIRS if pair.id in MONITORED)
    store.write_tables(
        replacements={
            "sft_dataset": store.query("SELECT '' AS qa_id, 'e2hqa' AS source WHERE false"),
            "rl_pool": qa_pairs_frame([leaked]).assign(rl_reason="unsolved"),
        }
    )
    results = {
        r.check_name: r for r in trajectories.funnel_excludes_monitor_pairs(warehouse=Warehouse(home=str(tmp_path)))
    }
    assert results["sft_dataset_excludes_monitor_pairs"].passed
    failed = results["rl_pool_excludes_monitor_pairs"]
    assert not failed.passed and leaked.id in failed.description
    assert all(spec.blocking for spec in trajectories.funnel_excludes_monitor_pairs.check_specs)


def test_synth_monitor_scores_the_monitoring_pairs_and_is_no_benchmark_to_guard(tmp_path):
    store = store_with_attempts(tmp_path)
    questions = evaluation.benchmark_questions("synth_monitor", DATA_DIR, store)
    assert [q.id for q in questions] == sorted(MONITORED)
    assert all(q.answers == [next(p.answer for p in PAIRS if p.id == q.id)] for q in questions)
    assert all(is_monitor(q.id, "e2hqa") for q in questions)
    # The leakage guard compares synthesized pairs with benchmarks: not with the synthesized pairs themselves.
    guarded = all_benchmark_questions(DATA_DIR, BENCHMARKS)
    assert not {q.question for q in questions} & set(guarded) and guarded

    store.write_tables(replacements={"e2hqa_pairs": qa_pairs_frame(training_pairs(PAIRS))})
    with pytest.raises(LookupError, match="synth_monitor has no questions"):
        evaluation.benchmark_questions("synth_monitor", DATA_DIR, store)
