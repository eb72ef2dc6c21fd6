"""WebDancer's released samples load into the project's QA and trajectory contracts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from webdancer_dagster.agent.prompts import SYSTEM_PROMPT, USER_PROMPT
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.synthesis.reference import (
    REFERENCE_MODEL,
    load_reference_qa,
    load_reference_trajectories,
    reference_question,
    reference_trajectory,
)

SAMPLES = DATA_DIR / "webdancer_samples"


@pytest.fixture(scope="module")
def references():
    return load_reference_trajectories(SAMPLES / "sample_traj.jsonl")


def test_reference_qa_pairs_are_tagged_and_have_stable_ids():
    pairs = load_reference_qa(SAMPLES / "sample_qa.jsonl")
    assert len(pairs) == 200
    assert Counter(p.reference_tag for p in pairs) == {"e2hqa": 100, "crawlqa": 100}
    assert {(p.kind, p.source) for p in pairs} == {("reference", "webdancer_sample")}
    assert pairs[0].answer == "tales of league of extraordinary gentlemen"
    assert [p.id for p in load_reference_qa(SAMPLES / "sample_qa.jsonl")] == [p.id for p in pairs]


def test_reference_trajectories_keep_messages_verbatim_and_rebuild_steps(references):
    assert len(references) == 200
    assert Counter(r.qa.reference_tag for r in references) == {"e2hqa": 100, "crawlqa": 100}
    raw = json.loads((SAMPLES / "sample_traj.jsonl").open().readline())
    first = references[0]
    assert [m.model_dump() for m in first.trajectory.messages] == raw["messages"]
    assert first.trajectory.messages[0].content.startswith(SYSTEM_PROMPT)
    assert first.qa.question.startswith("In a prestigious British equestrian event")
    assert first.qa.answer == "English horse race Derby"
    assert (first.trajectory.termination, first.trajectory.model) == ("answer", REFERENCE_MODEL)
    assert "Epsom Derby" in first.trajectory.answer
    steps = first.trajectory.steps
    assert [s.action for s in steps][-1] == "answer"
    assert first.trajectory.tool_calls == len(steps) - 1 == sum(s.action == "search" for s in steps)


def test_recorded_search_calls_use_query_although_functions_declare_queries(references):
    raw = json.loads((SAMPLES / "sample_traj.jsonl").open().readline())
    search = next(f for f in raw["functions"] if f["name_for_model"] == "search")
    assert list(search["parameters"]["properties"]) == ["queries"] and search["parameters"]["required"] == ["query"]
    calls = [s for r in references for s in r.trajectory.steps if s.action == "search"]
    assert calls and all(list(s.arguments) == ["query"] and not s.format_issues for s in calls)
    assert all(r.trajectory.format_errors == 0 for r in references)


def test_reference_question_requires_the_react_prompt():
    assert reference_question(USER_PROMPT + "Who?  ") == "Who?"
    with pytest.raises(ValueError, match="ReAct prompt"):
        reference_question("User: Who?")


def test_a_record_without_an_answer_fails_loudly():
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PROMPT + "Who?"},
        {"role": "assistant", "content": "<think>x</think><answer>Ada</answer>"},
    ]
    assert reference_trajectory({"messages": messages, "answer": [["Ada", "Ada Lovelace"]]}).qa.answers == [
        "Ada",
        "Ada Lovelace",
    ]
    with pytest.raises(ValueError, match="without an answer"):
        reference_trajectory({"messages": messages, "answer": [[]]})
