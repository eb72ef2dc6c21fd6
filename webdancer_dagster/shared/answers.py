"""Answer normalisation and the word-level text checks that the judge, synthesis and the funnel share.

SQuAD-style normalisation makes `The U.S.A.` and `usa` compare equal; `contains_phrase` and `content_words` are
what grounding, answer support and the judge's containment rule build on.
"""

from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation) | {"‘", "’", "“", "”", "–", "—", "…", "«", "»"}
_SPACES = re.compile(r"\s+")
# Words too common to say anything about whether two texts share content.
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being that this these those "
    "which who whom whose what when where why how it its as into than then there their they he she his her "
    "him i you we our your not no do does did has have had can could would should will may might".split()
)


def _normalize(text: str, punctuation: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(punctuation if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation (lowercase, punctuation removed, no articles, single spaces) after Unicode folding.

    Used for exact-match judging, so `The U.S.A.` and `usa` compare equal.
    """
    return _normalize(text, "")


def normalize_words(text: str) -> str:
    """Like `normalize_answer` but punctuation separates words, so `Babbage's` still holds the word `babbage`."""
    return _normalize(text, " ")


def contains_phrase(haystack: str, needle: str) -> bool:
    """True when `needle` occurs in `haystack` as whole words under either normalisation (`art` is not in `part`).

    Grounding needs both: `U.S.A.` only matches `USA` with punctuation removed, `Babbage` only matches
    `Babbage's` with punctuation as a word break.
    """
    for normalize in (normalize_answer, normalize_words):
        phrase = normalize(needle)
        if phrase and f" {phrase} " in f" {normalize(haystack)} ":
            return True
    return False


def content_words(text: str) -> list[str]:
    """Normalised words without stopwords: what two texts must share to say the same thing."""
    return [word for word in normalize_words(text).split() if word not in STOPWORDS]
