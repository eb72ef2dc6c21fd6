"""The leakage checks fail when they should: a teacher that writes a benchmark's question into a CRAWLQA pair gets
the pair stored by the asset and stopped by its blocking check."""

import json
import re

import dagster as dg
from corpus_helpers import materialize, run_config
from scripted_roles import scripted_resources

from webdancer_dagster.assets import qa
from webdancer_dagster.evaluation.benchmarks import all_benchmark_questions
from webdancer_dagster.evaluation.registry import default_registry
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore

ANSWER = "Lotharingia"  # on the wiki pages, so the pair is grounded and survives synthesis


def test_a_crawlqa_pair_that_repeats_a_benchmark_question_fails_the_blocking_check(small_web, isolated_home):
    questions = all_benchmark_questions(DATA_DIR, default_registry().benchmarks)  # what the check reads
    benchmark_question = next(q for q in questions if len(q.split()) >= 8 and ANSWER not in q and "'" not in q)
    leaking = f"Based on these pages, {benchmark_question[0].lower()}{benchmark_question[1:]}"

    def teacher(request: dict) -> str:
        prompt = request["messages"][-1]["content"]
        labels = re.findall(r"^\[(Page \d+)\]\nURL: \S+", prompt, flags=re.MULTILINE)
        return json.dumps({"question": leaking, "answer": ANSWER, "source_pages": labels})

    data, docs = small_web
    config = run_config(data, docs)
    materialize(["web_sites"], config, isolated_home)
    materialize(["crawl_pages"], config, isolated_home, partition_key="wiki")  # the pages the pair cites

    with ScriptedLLMServer(teacher) as server:
        result = dg.materialize(
            [qa.crawlqa_pairs, qa.crawlqa_leakage],
            resources=scripted_resources(isolated_home, server.base_url, ("teacher_short",)),
            run_config={
                "ops": {
                    "crawlqa_pairs": {
                        "config": {"clusters": 1, "subpages": 2, "min_page_chars": 20, "json_format": "none"}
                    }
                }
            },
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )

    stored = WarehouseStore(isolated_home).read_table("crawlqa_pairs")
    assert list(stored["question"]) == [leaking], "the asset should have stored the leaking pair for the check to read"
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.check_name == "crawlqa_pairs_do_not_leak_benchmarks"
    assert not evaluation.passed
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert (metadata["pairs"], metadata["expected_leaks"], metadata["actual_leaks"]) == (1, 0, 1)
    assert "benchmark_question_overlap" in metadata["examples"]
    assert f"overlap 1.00 with benchmark question '{benchmark_question[:30]}" in metadata["examples"]
    assert not result.success, "a blocking check that fails must fail the run, so nothing downstream reads the pair"
