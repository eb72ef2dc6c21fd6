"""The checks synthesis sources share: near-duplicates, leakage, grounding, counted drops, lenient JSON replies."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from webdancer_dagster.evaluation.benchmarks import load_benchmark
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.shared.qa import QAPair, RewriteStep, SearchRecord
from webdancer_dagster.synthesis.qa import (
    Drop,
    LeakageGuard,
    NearDuplicateIndex,
    benchmark_urls,
    deduplicate,
    drops_frame,
    is_grounded,
    jaccard,
    word_shingles,
)
from webdancer_dagster.synthesis.replies import parse_json_reply, response_format

BENCH_HOST = "musique.webdancer.test"


def pair(question: str, answer: str = "Paris", **extra) -> QAPair:
    return QAPair(question=question, answer=answer, kind="multi_hop", source="crawlqa", **extra)


def test_shingles_and_jaccard():
    assert word_shingles("The cat sat on the mat", 3) == {("cat", "sat", "on"), ("sat", "on", "mat")}
    assert word_shingles("Hi there", 3) == {("hi", "there")}
    assert word_shingles("", 3) == frozenset()
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert jaccard(set(), set()) == 0.0


def test_near_duplicate_index_finds_rewordings_not_different_questions():
    index = NearDuplicateIndex(threshold=0.5)
    index.add("Which English mathematician worked with Charles Babbage on the Analytical Engine?", "a")
    match = index.find("Which English mathematician worked with Charles Babbage on the Analytical Engine design?")
    assert match is not None and match[0] == "a" and 0.5 <= match[1] < 1.0
    assert index.find("In which year was the Analytical Engine first described?") is None
    assert len(index) == 1


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_near_duplicate_index_rejects_bad_thresholds(threshold):
    with pytest.raises(ValueError, match="threshold"):
        NearDuplicateIndex(threshold=threshold)


def test_deduplicate_keeps_first_and_counts_the_rest_also_against_existing_questions():
    drop = Drop("crawlqa", "not_json", "cluster-1")
    kept, drops = deduplicate(
        [
            pair("Who designed the Analytical Engine in London?"),
            drop,
            pair("Who designed the Analytical Engine in London"),
            pair("Where was Ada Lovelace born?"),
            pair("In which city was the first programmer born?"),
        ],
        "crawlqa",
        0.7,
        existing_questions=["In which city was the first programmer born?"],
    )
    assert [p.question for p in kept] == [
        "Who designed the Analytical Engine in London?",
        "Where was Ada Lovelace born?",
    ]
    assert [d.reason for d in drops] == ["not_json", "duplicate", "duplicate"]
    assert "existing question 0" in drops[2].detail


def test_is_grounded_by_answer_or_by_every_evidence_quote():
    text = "Ada Lovelace was born in London in 1815. She worked with Charles Babbage."
    assert is_grounded("London", [], text, 4)
    assert not is_grounded("Paris", [], text, 4)
    assert is_grounded("2", ["She worked with Charles Babbage"], text, 4)
    assert not is_grounded("2", ["She worked with Charles Babbage", "and with Alan Turing too"], text, 4)
    assert not is_grounded("2", ["Charles Babbage"], text, 4)  # too short to ground anything


def test_drops_frame_has_one_row_per_drop():
    frame = drops_frame([Drop("crawlqa", "ungrounded", "c1", "why", "count", "{}"), Drop("e2hqa", "empty", "p")])
    assert list(frame["reason"]) == ["ungrounded", "empty"]
    assert list(frame.columns) == ["stage", "reason", "item", "kind", "detail", "raw"]
    assert drops_frame([]).empty


def test_leakage_guard_flags_questions_overlapping_a_real_benchmark_question():
    benchmark = [question.question for question in load_benchmark("musique", DATA_DIR)]
    assert len(benchmark) == 100
    guard = LeakageGuard(benchmark, threshold=0.6)
    wrapped = "Considering the following, " + benchmark[0].rstrip("?") + " according to its founders?"
    overlap, matched = guard.max_overlap(wrapped)
    assert overlap >= 0.6 and matched == benchmark[0]
    clean = pair("Which module of the Python standard library parses command-line options?")
    hits = guard.check([pair(wrapped), clean], benchmark_hosts=[BENCH_HOST])
    assert [(h.item, h.reason) for h in hits] == [(pair(wrapped).id, "benchmark_question_overlap")]
    assert guard.max_overlap(clean.question)[0] < 0.6


def test_leakage_guard_flags_benchmark_urls_in_citations_and_rewrite_chains():
    guard = LeakageGuard(["an unrelated benchmark question about rivers"])
    cited = pair("q one?", source_urls=[f"http://{BENCH_HOST}:8080/wiki/x.html"])
    step = RewriteStep(
        question_before="q?",
        entity="e",
        query="e",
        results=[SearchRecord(title="t", url=f"http://{BENCH_HOST}/wiki/y.html", snippet="s")],
        description="d",
        question_after="q two?",
    )
    searched = pair("q two?", rewrite_chain=[step])
    clean = pair("q three?", source_urls=["http://wiki.webdancer.test/wiki/z.html"])
    hits = guard.check([cited, searched, clean], benchmark_hosts=[BENCH_HOST])
    assert [(h.item, h.reason) for h in hits] == [
        (cited.id, "cites_benchmark_url"),
        (searched.id, "cites_benchmark_url"),
    ]
    assert benchmark_urls(["not a url", "http://MUSIQUE.webdancer.test/a"], [BENCH_HOST]) == [
        "http://MUSIQUE.webdancer.test/a"
    ]


class Reply(BaseModel):
    question: str
    answer: str


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("{}", "empty"),
        ('{"question": "", "answer": ""}', "empty"),
        ("null", "empty"),
        ("I cannot help with that.", "not_json"),
        ("[1, 2, 3]", "not_json"),
        ('{"question": "Who?"}', "wrong_schema"),
        ('{"question": ["a"], "answer": "b"}', "wrong_schema"),
        ('<think>Let me write {"question": 1}</think>', "empty"),
    ],
)
def test_parse_json_reply_gives_a_reason_for_every_unusable_reply(raw, reason):
    reply = parse_json_reply(raw, Reply)
    assert (reply.value, reply.reason, reply.raw) == (None, reason, raw)


@pytest.mark.parametrize(
    "raw",
    [
        '{"question": "Who?", "answer": "Ada"}',
        'Sure! Here it is:\n```json\n{"question": "Who?", "answer": "Ada"}\n```',
        '<think>draft {"question": "No"}</think>\n{"question": "Who?", "answer": "Ada"}',
        'reasoning without an opening tag</think>{"question": "Who?", "answer": "Ada"',
        '[{"question": "Who?", "answer": "Ada"}]',
    ],
)
def test_parse_json_reply_reads_json_leniently(raw):
    reply = parse_json_reply(raw, Reply)
    assert reply.value == Reply(question="Who?", answer="Ada")


def test_response_format_for_each_json_format():
    assert response_format("none", Reply) is None
    assert response_format("object", Reply) == {"type": "json_object"}
    with_schema = response_format("object_with_schema", Reply)
    assert with_schema["type"] == "json_object"
    assert set(with_schema["schema"]["properties"]) == {"question", "answer"}
    structured = response_format("json_schema", Reply)
    assert structured["type"] == "json_schema" and structured["json_schema"]["name"] == "Reply"
    assert structured["json_schema"]["schema"]["required"] == ["question", "answer"]
