"""The one judge: its rules on real cases, the LLM judge asked only for what they leave open, its one retry of an
unreadable reply, and the funnel and the RL reward both living by that retry."""

from __future__ import annotations

import json

import pytest

from webdancer_dagster.agent.prompts import system_message, tool_response, user_message
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, ResponseCache, SamplingParams
from webdancer_dagster.shared.judge import (
    RETRY_SEPARATOR,
    exact_match,
    judge_answer,
    judge_by_rules,
    parse_verdict,
    rules_judge_otherwise,
)
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.funnel import check_correctness
from webdancer_dagster.synthesis.reference import reference_trajectory
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer, ScriptedReply
from webdancer_dagster.training.rollout import score_rollout

POLK = ["James K. Polk"]


def judge_endpoint(server: ScriptedLLMServer, cache: ResponseCache | None = None) -> LLMEndpoint:
    """A greedy judge that fails fast: one try per request, short timeout."""
    sampling = SamplingParams(temperature=0.0, max_tokens=64)
    config = EndpointConfig(
        role="judge", base_url=server.base_url, model="scripted-judge", timeout_s=5.0, max_attempts=1,
        backoff_initial_s=0.0, sampling=sampling,
    )  # fmt: skip
    return LLMEndpoint(config, cache)


@pytest.mark.parametrize(
    ("predicted", "gold", "method"),
    [
        # What SmolLM2-135M as judge credited on MuSiQue-100: no rule credits it.
        ("1973", POLK, "unmatched"),
        ("or", ["Niger River"], "unmatched"),
        # Exact match after normalisation, aliases, number words.
        ("james k polk", POLK, "exact"),
        ("The U.S.A.", ["United States", "USA"], "exact"),
        ("three", ["3"], "exact"),
        ("May 24, 1900", ["24 May 1900"], "exact"),
        ("He died on October 31, 1984.", ["31 October 1984"], "contains"),
        ("May 25, 1900", ["24 May 1900"], "unmatched"),
        ("Eighteen-fifteen", ["eighteen fifteen"], "exact"),
        # The gold answer as whole words of a short answer.
        ("It was James K. Polk.", POLK, "contains"),
        ("The 11th president, James K. Polk", POLK, "contains"),
        ("Yes, it was.", ["yes"], "contains"),
        ("in 1815", ["1815"], "contains"),
        ("Polka music", ["Polk"], "unmatched"),  # whole words only
        # Several candidates: never credited.
        ("James K. Polk or Andrew Jackson", POLK, "hedged"),
        ("1844; 1845", ["1844"], "hedged"),
        ("either Paris or Lyon", ["Paris"], "hedged"),
        ("Paris/Lyon", ["Paris"], "hedged"),
        ("yes or no", ["yes"], "hedged"),
        ("AC/DC", ["AC/DC"], "exact"),  # the gold answer itself has a slash
        # What the short-answer SFT model said on synth_monitor for one director: two names, one of them right.
        ("Norman Walker and Marguerite Allan", ["Norman Walker"], "hedged"),
        ("Lasse Hallström & Cathryn Michon", ["Lasse Hallström"], "hedged"),
        ("the duo Simon and Garfunkel", ["Simon and Garfunkel"], "contains"),  # the gold answer is a pair
        ("Anderson", ["Carl David Anderson"], "unmatched"),
        # Far longer than the gold answer: an explanation that mentions it, left open.
        ("The answer could be many things, for instance the year 1815 or earlier, but records disagree", ["1815"],
         "unmatched"),
        ("Records of the period list several dates and the most cited of them for this event is 1815 overall",
         ["1815"], "unmatched"),
        ("No, but yes in 1999", ["yes"], "unmatched"),
        # A verbose reply is judged by the one answer it states in bold (WebDancer's released answers).
        ("The surname is **Adkins**.  \n\n**Explanation**: the singer **Adele Laurie Blue Adkins** and others",
         ["Adkins"], "exact"),
        ("The castle on a peninsula in Dorset besieged in 1643 is **Corfe Castle**.", ["Corfe Castle"], "exact"),
        ("The band was first called **Parva**, and before that briefly **Runston Parva**.", ["runston parva"],
         "unmatched"),
        ("**1844** or **1845**", ["1844"], "hedged"),
    ],
)  # fmt: skip
def test_the_rules(predicted, gold, method):
    assert judge_by_rules(predicted, gold) == method


def test_exact_match_needs_words():
    assert exact_match("U.S.A.", ["usa"]) and not exact_match("", [""])


def test_parse_verdict():
    assert parse_verdict("**Correct**") is True
    assert parse_verdict("The answer is incorrect; correct would be 1815.") is False
    assert parse_verdict("<think>correct?</think>") is None


def test_without_a_capable_judge_what_the_rules_leave_open_is_incorrect():
    judgement = judge_answer("Who was president?", "1973", POLK, None)
    assert (judgement.correct, judgement.method, judgement.raw, judgement.attempts) == (False, "unmatched", "", 0)


def test_a_capable_judge_decides_only_what_the_rules_leave_open():
    with ScriptedLLMServer(["Correct", "Correct"]) as server:
        judge = judge_endpoint(server)
        hedged = judge_answer("Who?", "James K. Polk or Andrew Jackson", POLK, judge)
        contained = judge_answer("Who?", "It was James K. Polk.", POLK, judge)
        assert server.requests == []
        paraphrase = judge_answer("Who?", "the eleventh US president", POLK, judge)
        assert len(server.requests) == 1
    assert (hedged.correct, hedged.method) == (False, "hedged")
    assert (contained.correct, contained.method) == (True, "contains")
    assert (paraphrase.correct, paraphrase.method, paraphrase.raw, paraphrase.attempts) == (True, "llm", "Correct", 1)


@pytest.mark.parametrize(
    ("replies", "expected", "flag", "calls"),
    [
        (["Correct"], True, "", 1),
        (["Incorrect"], False, "", 1),
        (["Hmm, hard to say.", "Correct"], True, "", 2),
        (["Hmm, hard to say.", "no idea"], False, "unparsed", 2),
        ([ScriptedReply(status=400)], False, "rejected", 1),
    ],
)
def test_the_judge_retries_once_then_flags(tmp_path, replies, expected, flag, calls):
    with ScriptedLLMServer(replies) as server:
        # The cache is on: the retry must still reach the server, not replay the unparsed reply.
        judge = judge_endpoint(server, ResponseCache(tmp_path / "cache.sqlite"))
        judgement = judge_answer("Which kingdom?", "Lothair's realm", ["Lotharingia"], judge)
        assert (judgement.correct, judgement.flag, judgement.attempts) == (expected, flag, calls)
        assert judgement.method == "llm"
        assert len(server.requests) == calls
        # A greedy judge would repeat itself: the retry samples.
        assert [request["temperature"] for request in server.requests] == [0.0, 0.6][:calls]
    if calls == 2:
        assert judgement.raw == f"Hmm, hard to say.{RETRY_SEPARATOR}{replies[1]}"
        assert judgement.last_reply == replies[1]
    if flag == "rejected":
        assert "400" in judgement.raw and judgement.last_reply == judgement.raw


def test_exact_match_and_no_answer_cost_no_judge_call():
    with ScriptedLLMServer([]) as server:
        judge = judge_endpoint(server)
        exact = judge_answer("Who?", "stanley hall", ["G. Stanley Hall", "Stanley Hall"], judge)
        empty = judge_answer("Who?", None, ["Stanley Hall"], judge)
        blank = judge_answer("Who?", "  ", ["Stanley Hall"], judge)
        assert not server.requests
    assert (exact.correct, exact.method, exact.attempts) == (True, "exact", 0)
    assert (empty.correct, empty.method) == (blank.correct, blank.method) == (False, "none")


def _answered(question: str, answer: str) -> Trajectory:
    """A valid trajectory (one search, then `answer`) in WebDancer's format."""
    search = json.dumps({"name": "search", "arguments": {"query": ["Lothair II kingdom"]}})
    messages = [
        {"role": "system", "content": system_message("2025-01-01")},
        {"role": "user", "content": user_message(question)},
        {"role": "assistant", "content": f"<think>I should search.</think>\n<tool_call>\n{search}\n</tool_call>"},
        {"role": "user", "content": tool_response("Lotharingia was the realm of Lothair II.")},
        {"role": "assistant", "content": f"<think>I have found it.</think>\n<answer>{answer}</answer>"},
    ]
    return reference_trajectory({"messages": messages, "answer": [[answer]]}).trajectory


def test_the_funnel_and_the_rl_reward_ask_again_when_the_verdict_is_unreadable():
    """One retry policy: a judge that first answers without a verdict word, then "Correct", credits the answer in the
    funnel's correctness stage and in the RL answer reward alike, each after two judge calls."""
    qa = QAPair(question="Which kingdom did Lothair II rule?", answer="Lotharingia", kind="e2hqa", source="e2hqa")
    trajectory = _answered(qa.question, "Lothair's realm")
    with ScriptedLLMServer(["Hmm, hard to say.", "Correct"]) as server:
        verdict = check_correctness(qa, trajectory, judge_endpoint(server))
        assert len(server.requests) == 2
    assert (verdict.passed, verdict.method, verdict.reason) == (True, "llm", "")
    assert verdict.raw == f"Hmm, hard to say.{RETRY_SEPARATOR}Correct"
    with ScriptedLLMServer(["Hmm, hard to say.", "Correct"]) as server:
        reward = score_rollout(qa.question, qa.answers, trajectory, judge_endpoint(server))
        assert len(server.requests) == 2
    assert (reward.format, reward.answer, reward.judge_method, reward.judge_flag) == (1.0, 1.0, "llm", "")


def test_the_funnel_and_the_rl_reward_count_a_verdict_still_unreadable_as_incorrect():
    qa = QAPair(question="Which kingdom did Lothair II rule?", answer="Lotharingia", kind="e2hqa", source="e2hqa")
    trajectory = _answered(qa.question, "Lothair's realm")
    with ScriptedLLMServer(["Hmm, hard to say.", "no idea"]) as server:
        verdict = check_correctness(qa, trajectory, judge_endpoint(server))
    assert (verdict.passed, verdict.reason) == (False, "judge_unreadable")
    with ScriptedLLMServer(["Hmm, hard to say.", "no idea"]) as server:
        reward = score_rollout(qa.question, qa.answers, trajectory, judge_endpoint(server))
    assert (reward.answer, reward.judge_method, reward.judge_flag) == (0.0, "llm", "unparsed")


@pytest.mark.parametrize(
    ("predicted", "stored_method", "otherwise"),
    [
        ("James K. Polk", "exact", False),  # the rules still say so
        ("James K. Polk and Zachary Taylor", "contains", True),  # credited then, hedged now
        ("1973", "llm", False),  # open then and now: the LLM judge's verdict stands
        ("1973", "unmatched", False),
        ("1973", "contains", True),  # decided then, open now
        ("James K. Polk", "llm", True),  # open then, decided now
    ],
)
def test_rules_judge_otherwise_only_when_the_current_rules_give_another_verdict(
    predicted: str, stored_method: str, otherwise: bool
) -> None:
    assert rules_judge_otherwise(predicted, POLK, stored_method) is otherwise
