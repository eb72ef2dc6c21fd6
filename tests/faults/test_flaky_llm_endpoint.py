"""Every LLM role behind a real proxy on 127.0.0.1 that loses a fifth of the requests (a closed connection or an HTTP
503) and delays the rest: QA synthesis and trajectory sampling finish, and their metadata counts every retry."""

import json

import dagster as dg
import pytest
from fault_helpers import ANSWER, ROLES, build_local_web, llm_assets, llm_run_config, metadata, ops_for, teacher
from flaky_proxy import FlakyProxy
from scripted_roles import scripted_resources

from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore


def retries(meta: dict, *usages: str) -> int:
    return sum(meta[usage]["retries"] for usage in usages)


@pytest.mark.slow
def test_synthesis_and_trajectories_finish_through_a_lossy_proxy_and_count_their_retries(small_web, isolated_home):
    data, docs = small_web
    config = llm_run_config(data, docs)
    build_local_web(config, isolated_home)
    assets = llm_assets()
    instance = dg.DagsterInstance.ephemeral()
    with ScriptedLLMServer(teacher) as upstream, FlakyProxy(upstream.base_url) as proxy:

        def run(selection: list[str], **settings) -> dg.ExecuteInProcessResult:
            resources = scripted_resources(
                isolated_home, proxy.base_url, ROLES, capable_judge=lambda role: role == "judge",
                backoff_initial_s=0.05, backoff_max_s=0.2, max_concurrency=1, **settings,
            )  # fmt: skip
            return dg.materialize(
                assets, selection=selection, resources=resources, instance=instance,
                run_config=ops_for(config, selection), raise_on_error=False,
            )  # fmt: skip

        # Without retries the lossy endpoint stops the run, naming the role and the URL.
        unprotected = run(["crawlqa_pairs"], max_attempts=1, use_cache=False)
        assert not unprotected.success and proxy.failed == 1
        error = unprotected.failure_data_for_node("crawlqa_pairs").error
        assert f"teacher_short endpoint {proxy.base_url} unreachable after 1 tries" in str(error.to_string())

        proxy.reset()
        crawlqa = run(["crawlqa_pairs"], max_attempts=3)
        assert crawlqa.success
        crawlqa_meta = metadata(crawlqa, "crawlqa_pairs")
        assert crawlqa_meta["kept"] >= 2 and crawlqa_meta["teacher_usage"]["requests"] == crawlqa_meta["attempted"]
        assert proxy.failed >= 1 and retries(crawlqa_meta, "teacher_usage") == proxy.failed

        proxy.reset()
        e2hqa = run(["e2hqa_pairs"], max_attempts=3)
        assert e2hqa.success and retries(metadata(e2hqa, "e2hqa_pairs"), "teacher_usage") == proxy.failed

        proxy.reset()
        sampled = run(["trajectories"], max_attempts=3)
        assert sampled.success
        meta = metadata(sampled, "trajectories")
        usages = ("teacher_usage", "judge_usage", "summarizer_usage")
        assert proxy.failed >= 2 and retries(meta, *usages) == proxy.failed
        assert sum(meta[usage]["requests"] for usage in usages) == proxy.forwarded
        assert proxy.dropped >= 1 and proxy.unavailable >= 1 and proxy.delayed == proxy.forwarded

    frame = WarehouseStore(isolated_home).read_table("trajectories")
    sampled_rows = frame[frame["model"] == "scripted"]
    assert len(sampled_rows) == 2 and sampled_rows["accepted"].all() and not frame.duplicated("trajectory_id").any()
    assert set(sampled_rows["termination"]) == {"answer"}
    summarizer = meta["summarizer_usage"]  # both agents read the same page for the same goal: once from the cache
    assert (summarizer["requests"], summarizer["cache_hits"]) == (1, 1)
    assert [json.loads(text)["answer"] for text in sampled_rows["trajectory"]] == [ANSWER, ANSWER]
