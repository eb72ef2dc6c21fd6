"""QA pairs -> trajectories -> funnel through Dagster, with a scripted teacher/judge on a real local endpoint."""

import json
import re

import dagster as dg
import pytest
from corpus_helpers import run_config
from scripted_roles import scripted_resources

from webdancer_dagster.agent.prompts import SYSTEM_PROMPT
from webdancer_dagster.assets import corpus, qa, registries, trajectories
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.shared.qa import qa_pairs_frame
from webdancer_dagster.synthesis.reference import load_reference_trajectories, released_trajectories
from webdancer_dagster.synthesis.rejection import assess_attempt, attempts_frame
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.warehouse import WarehouseStore

ANSWER = "Lotharingia"
# The judge rejects the first released trajectory, so its question must land in the RL pool.
REJECTED = load_reference_trajectories(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl")[0].qa


def teacher(request: dict) -> str:
    """Answers every role from what the prompt asks for, as a capable model would."""
    messages = request["messages"]
    last = messages[-1]["content"]
    if "Judge whether the predicted answer" in last:
        return "Incorrect" if REJECTED.question in last else "Correct"
    if '"source_pages"' in last:  # CRAWLQA: cite the wiki pages by their labels
        pages = re.findall(r"^\[(Page \d+)\]\nURL: (\S+)", last, flags=re.MULTILINE)
        wiki = [label for label, url in pages if "wiki.webdancer.test" in url] or [label for label, _ in pages]
        return json.dumps({"question": "Which kingdom did these people rule?", "answer": ANSWER, "source_pages": wiki})
    if messages[0]["content"].startswith("You write and rewrite factual questions"):
        return "not json at all"  # E2HQA gets nothing usable: every seed is a counted drop
    if last.startswith("<tool_response>"):
        return f"<think>The results name the kingdom.</think>\n<answer>{ANSWER}</answer>"
    call = json.dumps({"name": "search", "arguments": {"query": ["Lothair II kingdom"]}})
    return f"<think>I should search for the king.</think>\n<tool_call>\n{call}\n</tool_call>"


@pytest.fixture
def scripted():
    with ScriptedLLMServer(teacher) as server:
        yield server


def resources(home, base_url):
    """The teacher passes for a llama.cpp server, so trajectories are sampled under the turn grammar; the judge is
    declared capable, so it decides what the rules leave open (the released trajectories' verbose answers)."""
    kind = {"teacher_short": "llama_cpp"}.get
    return scripted_resources(
        home, base_url, ("teacher_short", "teacher_long", "judge", "summarizer"), server_kind=kind,
        capable_judge=lambda role: role == "judge",
    )  # fmt: skip


def test_qa_trajectories_and_funnel_materialize(small_web, isolated_home, scripted):
    data, docs = small_web
    config = run_config(data, docs)
    config["ops"].update(
        {
            "crawlqa_pairs": {"config": {"clusters": 2, "subpages": 2, "min_page_chars": 20, "json_format": "none"}},
            "e2hqa_pairs": {"config": {"seeds": 2, "min_page_chars": 20, "json_format": "none", "answer_check": True}},
            "trajectories": {
                "config": {
                    "attempts": 2,
                    "max_pairs": 2,
                    "max_llm_calls": 4,
                    "max_reference": 30,
                    "derive_short_cot": True,
                    "short_cot_thought_words": 30,
                }
            },  # fmt: skip
        }
    )
    assets = [
        *dg.load_assets_from_modules([corpus, qa, trajectories]),
        *dg.load_asset_checks_from_modules([corpus, qa, trajectories]),
    ]
    res = resources(isolated_home, scripted.base_url)
    instance = dg.DagsterInstance.ephemeral()

    def run(selection, partition_key=None):
        result = dg.materialize(
            assets, selection=selection, partition_key=partition_key, resources=res, instance=instance,
            run_config={"ops": {k: v for k, v in config["ops"].items() if k in selection}},
        )  # fmt: skip
        assert result.success
        return result

    run(["web_sites"])
    for site in registries.SITE_NAMES:
        run(["crawl_pages"], partition_key=site)
    run(["search_index"])
    qa_run = run(["crawlqa_pairs", "e2hqa_pairs", "reference_qa_pairs"])
    checks = {c.check_name: c for c in qa_run.get_asset_check_evaluations()}
    assert set(checks) == {
        "crawlqa_pairs_do_not_leak_benchmarks",
        "e2hqa_pairs_do_not_leak_benchmarks",
        "crawlqa_pairs_are_not_empty",
        "e2hqa_pairs_are_not_empty",
    }
    # E2HQA kept nothing: a warning that says why; its leakage check passes, saying there was nothing to check.
    empty = checks.pop("e2hqa_pairs_are_not_empty")
    assert not empty.passed and empty.severity == dg.AssetCheckSeverity.WARN
    assert "e2hqa_pairs holds 0 pairs: the teacher wrote no usable question (2 drops, top reasons: not_json 2)" in (
        empty.description
    )
    assert checks["e2hqa_pairs_do_not_leak_benchmarks"].description.startswith("checked 0 pairs: nothing to leak")
    assert all(c.passed for c in checks.values())

    store = WarehouseStore(isolated_home)
    crawlqa = store.read_table("crawlqa_pairs")
    assert len(crawlqa) >= 1 and set(crawlqa["answer"]) == {ANSWER}
    assert not crawlqa["source_urls"].str.contains("musique").any()
    assert crawlqa["source_urls"].str.contains("http://wiki.webdancer.test/").all()  # labels became URLs
    # Each cluster's pages, with what the teacher's questions about them kept and dropped.
    [crawlqa_event] = qa_run.asset_materializations_for_node("crawlqa_pairs")
    clusters = [row.split("|") for row in crawlqa_event.metadata["sources"].value.splitlines() if "| cluster-" in row]
    assert len(clusters) == 2 and all(".webdancer.test/" in row[2] and "musique" not in row[2] for row in clusters)
    assert sum(int(row[3]) for row in clusters) == len(crawlqa)
    drops = store.read_table("qa_drops")
    e2hqa_drops = drops[drops["asset"] == "e2hqa_pairs"]
    assert len(store.read_table("e2hqa_pairs")) == 0 and set(e2hqa_drops["reason"]) == {"not_json"}
    [e2hqa_event] = qa_run.asset_materializations_for_node("e2hqa_pairs")
    assert e2hqa_event.metadata["dropped"].value == e2hqa_event.metadata["attempted"].value == 2

    traj_run = run(["trajectories"])
    frame = store.read_table("trajectories")
    sampled = frame[frame["model"] == "scripted"]
    assert len(sampled) == min(2, len(crawlqa)) and sampled["accepted"].all()  # accepted on the first attempt
    assert (frame["model"] == "webdancer-release").sum() == 30
    derived = frame[frame["model"] == "webdancer-release+short-cot-derived"]
    assert len(derived) == 30 and set(derived["cot_mode"]) == {"short"}  # every released one is format-valid
    assert derived["accepted"].sum() == 29  # the judge rejects one question, in both forms
    assert all(json.loads(t)["termination"] == "answer" for t in sampled["trajectory"])
    # The teacher's searches never return benchmark pages.
    observations = " ".join(step["observation"] or "" for t in sampled["trajectory"] for step in json.loads(t)["steps"])
    assert "wiki.webdancer.test" in observations and "musique.webdancer.test" not in observations
    assert traj_run.success
    [traj_event] = traj_run.asset_materializations_for_node("trajectories")
    assert traj_event.metadata["constrained_attempts"].value == len(sampled)
    [traj_check] = traj_run.get_asset_check_evaluations()
    assert traj_check.check_name == "trajectories_has_accepted_samples" and traj_check.passed
    assert traj_event.metadata["derived_short_cot"].value == 30
    assert traj_event.metadata["judge"].value == f"rules + scripted @ {scripted.base_url}"
    assert all(json.loads(t)["constrained"] for t in sampled["trajectory"])
    agent_requests = [r for r in scripted.requests if r["messages"][0]["content"].startswith(SYSTEM_PROMPT)]
    assert agent_requests and all(r["grammar"].startswith("root ::= think action") for r in agent_requests)

    funnel_run = run(["sft_dataset", "rl_pool"])
    sft = store.read_table("sft_dataset")
    assert set(sft["source"]) == {"crawlqa", "webdancer_sample"}
    messages = json.loads(sft["messages"].iloc[0])
    assert [m["role"] for m in messages[:3]] == ["system", "user", "assistant"]
    rl = store.read_table("rl_pool")
    solved = set(sft["qa_id"])
    assert len(rl) > 0 and not set(rl["id"]) & solved and set(rl["rl_reason"]) == {"unsolved"}
    assert REJECTED.id in set(rl["id"]) and REJECTED.id not in solved
    stages = store.read_table("funnel_stages")
    assert len(stages) == 3
    events = {e.asset_key.to_user_string(): e for e in funnel_run.get_asset_materialization_events()}
    assert set(events) == {"sft_dataset", "rl_pool"}
    funnel_checks = {check.check_name: check for check in funnel_run.get_asset_check_evaluations()}
    assert set(funnel_checks) == {
        "sft_dataset_has_enough_chats",
        "sft_dataset_excludes_monitor_pairs",
        "rl_pool_excludes_monitor_pairs",
    }
    assert all(check.passed for check in funnel_checks.values()), funnel_checks
    sft_check = funnel_checks["sft_dataset_has_enough_chats"]
    assert sft_check.metadata["teacher_sampled"].value == (sft["model"] == "scripted").sum() >= 1


def test_the_funnel_finds_each_attempts_pair_by_id_and_names_a_stale_one(tmp_path):
    """A sampled pair lives only in its QA table, a released trajectory's in `trajectory_pairs`; an attempt whose
    pair was re-synthesized away is a clear error, not a KeyError."""
    [released] = released_trajectories(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl", 1)
    attempt = assess_attempt(released.qa, released.trajectory, None)
    store = WarehouseStore(tmp_path)
    store.replace_table("trajectories", attempts_frame([attempt]))
    store.replace_table(trajectories.RELEASED_PAIRS_TABLE, qa_pairs_frame([released.qa]))

    [read] = trajectories._read_attempts(store, [])
    assert read.qa == released.qa and read.id == attempt.id

    store.replace_table(trajectories.RELEASED_PAIRS_TABLE, qa_pairs_frame([]))
    with pytest.raises(LookupError, match=f"QA pair {released.qa.id}, .*materialize trajectories again"):
        trajectories._read_attempts(store, [])
