"""benchmark_scores end to end: a scripted policy and judge on a real local endpoint, over the local web."""

import json
import re

import dagster as dg
import pytest
from corpus_helpers import run_config
from scripted_roles import scripted_resources

from webdancer_dagster.agent.prompts import user_message
from webdancer_dagster.assets import corpus, evaluation, registries
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.shared.judge import RETRY_SEPARATOR
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame
from webdancer_dagster.shared.split import monitor_pairs
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore

HALL = "G. Stanley Hall"
QUESTIONS = [
    {"id": "2hop__1", "question": "Who was a pioneering American psychologist?", "answer": HALL,
     "answer_aliases": ["Stanley Hall"], "paragraphs": [{"title": "never read", "paragraph_text": "x"}]},
    {"id": "2hop__2", "question": "Who led the first psychology association?", "answer": HALL, "answer_aliases": []},
    {"id": "2hop__3", "question": "Which journal is peer-reviewed?", "answer": "Journal of Mathematical Physics",
     "answer_aliases": []},
]  # fmt: skip
# The policy's answer by question and run (the request seed): exact, judged per run, and unjudgeable.
ANSWERS = {
    "pioneering": [HALL] * 3,
    "association": ["Hall, G. S.", "Wundt", "Granville Hall"],
    "journal": ["unsure"] * 3,
}
VERDICTS = {"Hall, G. S.": "Correct", "Wundt": "Incorrect", "Granville Hall": "Correct", "unsure": "I cannot tell."}


def responder(request: dict) -> str:
    messages = request["messages"]
    last = messages[-1]["content"]
    if "Judge whether the predicted answer" in last:
        return VERDICTS[re.search(r"^Predicted answer: (.*)$", last, flags=re.MULTILINE).group(1)]
    if last.startswith("<tool_response>"):
        [answers] = [a for key, a in ANSWERS.items() if key in messages[1]["content"]]
        return f"<think>The results tell.</think>\n<answer>{answers[request['seed']]}</answer>"
    call = json.dumps({"name": "search", "arguments": {"query": ["Stanley Hall psychologist"]}})
    return f"<think>I should search.</think>\n<tool_call>\n{call}\n</tool_call>"


@pytest.fixture
def scripted():
    with ScriptedLLMServer(responder) as server:
        yield server


def resources(home, base_url):
    return scripted_resources(
        home, base_url, ("policy", "judge", "summarizer"), use_cache=False,
        seed=lambda role: 0 if role == "policy" else None, capable_judge=lambda role: role == "judge",
    )  # fmt: skip


def test_benchmark_scores_materialize_and_resume(small_web, isolated_home, scripted):
    data, docs = small_web
    (data / "musique" / "musique_train_100.json").write_text(json.dumps(QUESTIONS))
    config = run_config(data, docs)
    assets = [*dg.load_assets_from_modules([corpus, evaluation])]
    res = resources(isolated_home, scripted.base_url)
    instance = dg.DagsterInstance.ephemeral()
    partition = dg.MultiPartitionKey({"model": "base", "benchmark": "musique"})

    def run(selection, partition_key=None, ops=None):
        result = dg.materialize(
            assets, selection=selection, partition_key=partition_key, resources=res, instance=instance,
            run_config={"ops": ops or {k: v for k, v in config["ops"].items() if k in selection}},
        )  # fmt: skip
        assert result.success
        return result

    run(["web_sites"])
    for site in registries.SITE_NAMES:
        run(["crawl_pages"], partition_key=site)
    run(["search_index"])

    def score(max_questions, max_llm_calls=4):
        before = len(scripted.requests)
        settings = {"max_questions": max_questions, "max_llm_calls": max_llm_calls, "data_dir": str(data)}
        ops = {"benchmark_scores": {"config": settings}}
        [event] = run(["benchmark_scores"], partition, ops).asset_materializations_for_node("benchmark_scores")
        return event.metadata, scripted.requests[before:]

    # Two questions, as if an evaluation of three had been killed after the second.
    meta, requests = score(2)
    assert len(requests) == 6 + 6 + 3  # two agent turns per run, a judge call for each non-exact answer
    assert (meta["pass_at_1"].value, meta["pass_at_3"].value, meta["cons_at_3"].value) == (0.8333, 1.0, 1.0)

    meta, requests = score(3)
    judge_calls = [r for r in requests if "Judge whether" in r["messages"][-1]["content"]]
    assert len(requests) == 6 + 6 and len(judge_calls) == 6  # only the new question; its unclear verdicts retried
    assert meta["runs_resumed"].value == 6 and meta["dagster/row_count"].value == 9
    assert (meta["pass_at_1"].value, meta["pass_at_3"].value, meta["cons_at_3"].value) == (0.5556, 0.6667, 0.6667)
    assert meta["judge_flagged"].value == 3 and meta["exact_match"].value == pytest.approx(3 / 9, abs=1e-4)
    assert meta["terminations"].value == {"answer": 9}
    assert meta["mean_actions"].value == 1.0 and meta["format_error_rate"].value == 0.0
    assert meta["judge"].value == f"rules + scripted @ {scripted.base_url}"
    assert "| base" in meta["comparison"].value and "data:image/png;base64," in meta["comparison_chart"].value

    meta, requests = score(3)  # everything stored: no agent or judge call
    assert requests == [] and meta["runs_resumed"].value == 9 and meta["pass_at_1"].value == 0.5556

    store = WarehouseStore(isolated_home)
    runs = store.read_table("eval_runs")
    assert len(runs) == 9 and not runs.duplicated(["question_id", "run"]).any()
    assert set(runs["partition"]) == {str(partition)} and set(runs["model"]) == {"base"}
    flagged = runs[runs["question_id"] == "2hop__3"]
    assert set(flagged["judge_flag"]) == {"unparsed"} and not flagged["correct"].any()
    assert all(raw == f"I cannot tell.{RETRY_SEPARATOR}I cannot tell." for raw in flagged["judge_raw"])
    judged = runs[runs["question_id"] == "2hop__2"].sort_values("run")
    assert judged["correct"].tolist() == [True, False, True] and set(judged["judge_method"]) == {"llm"}
    observations = " ".join(s["observation"] or "" for t in runs["trajectory"] for s in json.loads(t)["steps"])
    assert "musique.webdancer.test" in observations  # the benchmark site is searched during evaluation
    scores = store.read_table("scores")
    assert len(scores) == 1 and scores.loc[0, "pass_at_k"] == pytest.approx(2 / 3)
    assert (isolated_home / "evaluation" / "scores.png").read_bytes().startswith(b"\x89PNG")

    # Another agent setting is another evaluation: the stored runs are dropped, not mixed in.
    meta, requests = score(1, max_llm_calls=3)
    assert len(requests) == 6 and meta["runs_resumed"].value == 0 and meta["pass_at_1"].value == 1.0
    assert len(store.read_table("eval_runs")) == 3 and len(store.read_table("scores")) == 1
    assert meta["search_results_per_query"].value == 10

    # So is another search setting: the agent is told, and shown, 2 results a query.
    res["web"] = WebEnvironment(warehouse=res["warehouse"], search_results_per_query=2)
    meta, requests = score(1, max_llm_calls=3)
    assert len(requests) == 6 and meta["runs_resumed"].value == 0 and meta["search_results_per_query"].value == 2
    assert all(r["messages"][1]["content"] == user_message(QUESTIONS[0]["question"], 2) for r in requests)
    observations = [r["messages"][-1]["content"] for r in requests if len(r["messages"]) > 2]
    assert len(observations) == 3 and all("found 2 results" in o and o.count("](http") == 2 for o in observations)
    assert store.read_table("scores").loc[0, "search_results_per_query"] == 2

    # The same pages indexed again are the same web: the runs are kept. Changed pages are another web: afresh.
    run(["search_index"])
    meta, requests = score(1, max_llm_calls=3)
    assert requests == [] and meta["runs_resumed"].value == 3
    rewritten = "<html><head><title>json</title></head><body><p>JSON encoder and decoder, rewritten.</p></body></html>"
    (docs / "library" / "json.html").write_text(rewritten)
    run(["crawl_pages"], partition_key="python-docs")
    run(["search_index"])
    meta, requests = score(1, max_llm_calls=3)
    assert len(requests) == 6 and meta["runs_resumed"].value == 0


# Synthesized pairs the scripted policy answers right (it answers HALL to every "pioneering" question).
SYNTHESIZED = [
    QAPair(question=f"Who was pioneering psychologist number {i}?", answer=HALL, kind="e2hqa", source="e2hqa")
    for i in range(12)
]


def test_synth_monitor_scores_the_monitoring_split_of_the_qa_tables_on_the_local_web(
    small_web, isolated_home, scripted
):
    data, docs = small_web
    config = run_config(data, docs)
    assets = [*dg.load_assets_from_modules([corpus, evaluation])]
    res = resources(isolated_home, scripted.base_url)
    instance = dg.DagsterInstance.ephemeral()
    for selection, key in [
        ("web_sites", None),
        *(("crawl_pages", s) for s in registries.SITE_NAMES),
        ("search_index", None),
    ]:
        ops = {k: v for k, v in config["ops"].items() if k == selection}
        assert dg.materialize(assets, selection=[selection], partition_key=key, resources=res, instance=instance,
                              run_config={"ops": ops}).success  # fmt: skip
    store = WarehouseStore(isolated_home)
    store.write_tables(replacements={"e2hqa_pairs": qa_pairs_frame(SYNTHESIZED)})  # crawlqa_pairs never made

    result = dg.materialize(
        assets, selection=["benchmark_scores"], resources=res, instance=instance,
        partition_key=dg.MultiPartitionKey({"model": "base", "benchmark": "synth_monitor"}),
        run_config={"ops": {"benchmark_scores": {"config": {"max_questions": None, "max_llm_calls": 4}}}},
    )  # fmt: skip
    assert result.success
    [event] = result.asset_materializations_for_node("benchmark_scores")
    runs = store.read_table("eval_runs")
    monitored = {pair.id for pair in monitor_pairs(SYNTHESIZED)}
    assert monitored and set(runs["question_id"]) == monitored and len(runs) == 3 * len(monitored)
    assert event.metadata["setting"].value == "local_web" and event.metadata["pass_at_1"].value == 1.0
