"""Short-CoT trajectories derived from WebDancer's long-CoT release: thoughts shortened, everything else kept."""

from __future__ import annotations

import pytest

from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.shared.judge import judge_by_rules, stated_answer
from webdancer_dagster.synthesis.reference import load_reference_trajectories
from webdancer_dagster.synthesis.short_cot import DERIVED_SUFFIX, SHORT_ANSWER_TAG, derive_short_cot, shorten_thought

LONG = (
    "Okay, let's tackle this step by step. The user asks about a British race won in 1964. "
    "Several results mention Santa Claus. Hmm. Maybe I need a better search. "
    "I should search for the 1964 Epsom Derby winner to confirm the horse's name."
)


def test_a_thought_keeps_its_closing_sentences_within_the_word_limit():
    last = "I should search for the 1964 Epsom Derby winner to confirm the horse's name."  # 14 words
    assert shorten_thought(LONG, 19) == last
    assert shorten_thought(LONG, 20) == "Maybe I need a better search. " + last
    assert shorten_thought(LONG, 24) == "Hmm. Maybe I need a better search. " + last
    assert shorten_thought(LONG, 5) == "to confirm the horse's name."  # one long sentence: its last words
    assert shorten_thought("Short.", 60) == "Short."


@pytest.fixture(scope="module")
def references():
    return load_reference_trajectories(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl")


def test_derived_trajectories_keep_actions_observations_and_answers(references):
    for reference in references[:40]:
        long = reference.trajectory
        short = derive_short_cot(long, max_thought_words=40)
        assert check_format(short).valid
        assert (short.cot_mode, short.model) == ("short", long.model + DERIVED_SUFFIX)
        assert short.answer == long.answer and short.question == long.question
        assert [m.role for m in short.messages] == [m.role for m in long.messages]
        for before, after in zip(long.messages, short.messages, strict=True):
            if before.role != "assistant":
                assert after.content == before.content  # prompts and observations untouched
            else:
                action = before.content[before.content.index("</think>") + len("</think>") :].strip()
                assert after.content.endswith(action)  # the tool call or answer, byte for byte
                thought = after.content.split("</think>")[0].removeprefix("<think>")
                assert len(thought.split()) <= 40
        assert sum(len(m.content) for m in short.messages) < sum(len(m.content) for m in long.messages)


def test_an_invalid_turn_is_refused(references):
    broken = references[0].trajectory.model_copy(deep=True)
    broken.messages[2].content = "no think, no action"
    with pytest.raises(ValueError, match="only clean turns"):
        derive_short_cot(broken)


def test_a_short_answer_copy_answers_with_the_span_its_original_states_and_is_judged_the_same(references):
    shortened = 0
    for reference in references[:60]:
        long = reference.trajectory
        short = derive_short_cot(long, max_thought_words=40, short_answer=True)
        gold = [reference.qa.answer]
        assert check_format(short).valid
        assert short.model == long.model + SHORT_ANSWER_TAG + DERIVED_SUFFIX
        assert short.answer == stated_answer(long.answer) == short.steps[-1].answer
        assert short.messages[-1].content.endswith(f"<answer>{short.answer}</answer>")
        assert judge_by_rules(short.answer, gold) == judge_by_rules(long.answer, gold)
        assert [m.content for m in short.messages[:-1]] == [
            m.content for m in derive_short_cot(long, max_thought_words=40).messages[:-1]
        ]  # only the answer turn differs from the plain short-CoT copy
        shortened += short.answer != long.answer
    assert shortened >= 35  # 38 of these 60 released answers state one answer in bold; the rest are kept whole


def test_a_short_answer_is_the_bold_span_of_the_answer_turn(references):
    [adkins] = [item.trajectory for item in references if item.qa.answer == "Adkins"]
    assert "**Adkins**" in adkins.answer and len(adkins.answer.split()) > 40
    short = derive_short_cot(adkins, short_answer=True)
    assert short.answer == "Adkins"
    assert short.messages[-1].content.endswith("</think>\n<answer>Adkins</answer>")
