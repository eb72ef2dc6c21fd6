"""The Definitions object loads and holds the asset graph the README promises."""

import datetime
import subprocess
import sys

import dagster as dg

from webdancer_dagster.definitions import defs


def test_definitions_load_with_expected_assets_and_checks():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {
        "web_sites", "crawl_pages", "search_index", "crawlqa_pairs", "e2hqa_pairs", "reference_qa_pairs",
        "trajectories", "sft_dataset", "rl_pool", "base_model", "sft_checkpoint",
        "benchmark_scores",
    } <= keys  # fmt: skip
    checks = {key.name for key in graph.asset_check_keys}
    assert {
        "crawl_pages_are_consistent", "search_index_finds_pages",
        "crawlqa_pairs_do_not_leak_benchmarks", "e2hqa_pairs_do_not_leak_benchmarks", "sft_checkpoint_loads",
        "benchmark_scores_are_sound", "benchmark_judge_credits_are_supported", "benchmark_turn_budget_fits_training",
        "crawlqa_pairs_are_not_empty", "e2hqa_pairs_are_not_empty", "trajectories_has_accepted_samples",
        "sft_dataset_has_enough_chats", "sft_checkpoint_trained_on_its_chats", "rl_checkpoint_every_step_trained",
        "benchmark_partitions_answered",
    } <= checks  # fmt: skip
    assert graph.get(dg.AssetKey("crawl_pages")).partitions_def.get_partition_keys() == [
        "python-docs",
        "wiki",
        "musique",
    ]


def test_lineage_runs_from_sites_to_index():
    graph = defs.resolve_asset_graph()
    assert dg.AssetKey("web_sites") in graph.get(dg.AssetKey("crawl_pages")).parent_keys
    assert dg.AssetKey("crawl_pages") in graph.get(dg.AssetKey("search_index")).parent_keys


def test_daily_recrawl_schedule_requests_every_site():
    schedule = defs.get_schedule_def("daily_recrawl")
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime.datetime(2026, 1, 2, 3), repository_def=defs.get_repository_def()
    )
    requests = list(schedule.evaluate_tick(context).run_requests)
    assert sorted(r.partition_key for r in requests) == ["musique", "python-docs", "wiki"]
    assert len({r.run_key for r in requests}) == 3


MAX_ASSET_FUNCTION_LINES = 40


def test_every_asset_and_check_function_is_thin():
    """An asset reads its inputs, calls domain functions, writes and reports (CONTRIBUTING): at most 40 lines from
    `def` to its last line, signature and docstring included."""
    import ast
    from pathlib import Path

    import webdancer_dagster.assets as assets_package

    too_long = []
    for path in sorted(Path(assets_package.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            decorated = isinstance(node, ast.FunctionDef) and any(
                "asset" in ast.unparse(decorator) for decorator in node.decorator_list
            )
            if decorated and node.end_lineno - node.lineno + 1 > MAX_ASSET_FUNCTION_LINES:
                too_long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert too_long == []


def test_the_missing_question_only_partitions_are_explained_on_the_assets_page():
    """15 of the 18 benchmark_scores partitions stay missing after `webdancer materialize`: the UI says why and how
    to fill one, rather than leaving them looking broken."""
    from webdancer_dagster.assets.evaluation import QUESTION_ONLY_BENCHMARKS

    node = defs.resolve_asset_graph().get(dg.AssetKey("benchmark_scores"))
    assert {"musique_500", "2wiki_500", "bamboogle", "frames", "webwalkerqa"} <= set(QUESTION_ONLY_BENCHMARKS)
    assert f"Missing partitions of {', '.join(QUESTION_ONLY_BENCHMARKS)} are expected" in node.description
    assert "webdancer eval --model base --benchmark musique_500" in node.description
    assert node.metadata["question_only"].value == QUESTION_ONLY_BENCHMARKS


def test_loading_the_definitions_imports_neither_torch_nor_transformers_nor_openai() -> None:
    """Every Dagster run loads the code twice (run worker, step process), and the UI's code server once more: torch
    and transformers take seconds to import, openai's types most of one: only the steps that need them import them."""
    heavy = "{'torch', 'transformers', 'trl', 'openai'}"
    probe = f"import sys, webdancer_dagster.definitions; print(sorted({heavy} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
