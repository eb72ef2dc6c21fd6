"""The QA pair record: stable ids, validation, and the `qa_pairs` table codec."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from webdancer_dagster.shared.qa import QAPair, RewriteStep, SearchRecord, qa_pairs_frame, qa_pairs_from_frame


def pair(question: str, answer: str = "Paris", **extra) -> QAPair:
    return QAPair(question=question, answer=answer, kind="multi_hop", source="crawlqa", **extra)


def test_qa_id_is_stable_and_depends_on_question_answer_and_source():
    first = pair("Where was Ada born?")
    assert first.id == pair("where was ada born").id  # normalised question
    assert first.id.startswith("qa-")
    assert first.id != pair("Where was Ada born?", answer="London").id
    other_source = QAPair(question="Where was Ada born?", answer="Paris", kind="e2hqa", source="e2hqa")
    assert other_source.id != first.id
    assert pair("Where was Ada born?", id="given").id == "given"


def test_qa_pair_rejects_empty_question_and_unknown_kind():
    with pytest.raises(ValidationError):
        pair("")
    with pytest.raises(ValidationError):
        QAPair(question="q?", answer="a", kind="trivia", source="crawlqa")


def test_qa_frame_round_trips_rewrite_chains():
    step = RewriteStep(
        question_before="When was Ada Lovelace born?",
        entity="Ada Lovelace",
        query="Ada Lovelace",
        results=[SearchRecord(title="Ada", url="http://wiki.webdancer.test/wiki/ada.html", snippet="mathematician")],
        description="the first programmer",
        question_after="When was the first programmer born?",
    )
    pairs = [
        pair("When was the first programmer born?", "1815", rewrite_chain=[step], difficulty=1, evidence=["born 1815"]),
        pair("Which engine?", "Analytical Engine", reference_tag=None, answer_aliases=["the engine"]),
    ]
    frame = qa_pairs_frame(pairs)
    assert json.loads(frame.loc[0, "rewrite_chain"])[0]["entity"] == "Ada Lovelace"
    assert qa_pairs_from_frame(frame) == pairs


def test_answers_lists_gold_then_aliases_once():
    assert pair("q?", "Paris", answer_aliases=["Paris", "Paree"]).answers == ["Paris", "Paree"]
