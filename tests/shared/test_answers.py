"""Answer normalisation and whole-word containment: what the judge, grounding and answer support build on."""

from __future__ import annotations

import pytest

from webdancer_dagster.shared.answers import contains_phrase, content_words, normalize_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles", "beatles"),
        ("  An   apple, a day!  ", "apple day"),
        ("The U.S.A.", "usa"),
        ("“Quoted” — text…", "quoted text"),
        ("Théâtre", "théâtre"),
        ("ＡＢＣ", "abc"),  # full-width letters fold to ASCII
        ("the", ""),
    ],
)
def test_normalize_answer_follows_squad(text, expected):
    assert normalize_answer(text) == expected


def test_contains_phrase_matches_whole_words_only():
    assert contains_phrase("He was born in Paris, France.", "paris")
    assert contains_phrase("The Analytical Engine was designed", "analytical engine")
    assert not contains_phrase("a part of it", "art")
    assert contains_phrase("Babbage's engine", "Babbage")  # punctuation as a word break
    assert contains_phrase("Born in the U.S.A. in 1990", "USA")  # punctuation removed
    assert not contains_phrase("anything", "")


def test_content_words_drop_stopwords_and_split_at_punctuation():
    assert content_words("Who was the mother of Babbage's son?") == ["mother", "babbage", "s", "son"]
