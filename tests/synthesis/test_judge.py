"""The judge's rules on real cases, and the LLM judge asked only for what they leave open, only when given."""

from __future__ import annotations

import pytest
from synth_helpers import endpoint

from webdancer_dagster.llm.scripted import ScriptedLLMServer
from webdancer_dagster.synthesis.judge import judge_answer, judge_by_rules

POLK = ["James K. Polk"]


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


def test_without_a_capable_judge_what_the_rules_leave_open_is_incorrect():
    judgement = judge_answer("Who was president?", "1973", POLK, None)
    assert (judgement.correct, judgement.method, judgement.raw) == (False, "unmatched", "")


def test_a_capable_judge_decides_only_what_the_rules_leave_open():
    with ScriptedLLMServer(["Correct", "Correct"]) as server:
        judge = endpoint(server, "judge")
        hedged = judge_answer("Who?", "James K. Polk or Andrew Jackson", POLK, judge)
        contained = judge_answer("Who?", "It was James K. Polk.", POLK, judge)
        assert server.requests == []
        paraphrase = judge_answer("Who?", "the eleventh US president", POLK, judge)
        assert len(server.requests) == 1
    assert (hedged.correct, hedged.method) == (False, "hedged")
    assert (contained.correct, contained.method) == (True, "contains")
    assert (paraphrase.correct, paraphrase.method, paraphrase.raw) == (True, "llm", "Correct")
