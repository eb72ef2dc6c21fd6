"""The checks every synthesis source shares: near duplicates, leakage into benchmarks, grounding, counted drops.

CRAWLQA and E2HQA both produce `shared.qa.QAPair` rows; the helpers here are what they have in common:
near-duplicate detection over word shingles, the leakage guard against benchmark questions and benchmark URLs,
the grounding check, and the counted-drop record every stage returns instead of raising on bad model output.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import pandas as pd

from webdancer_dagster.shared.answers import contains_phrase, normalize_words
from webdancer_dagster.shared.qa import QAPair


def word_shingles(text: str, n: int) -> frozenset[tuple[str, ...]]:
    """The set of word n-grams of the normalised text; shorter texts give one shingle of all their words."""
    words = normalize_words(text).split()
    if not words:
        return frozenset()
    if len(words) <= n:
        return frozenset({tuple(words)})
    return frozenset(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: Collection[Any], b: Collection[Any]) -> float:
    """|A ∩ B| / |A ∪ B|; 0 for two empty sets (nothing in common to call a duplicate)."""
    if not a and not b:
        return 0.0
    union = len(set(a) | set(b))
    return len(set(a) & set(b)) / union


@dataclasses.dataclass(frozen=True)
class Drop:
    """One thing a stage refused, with a reason code for the funnel table and the detail a reader needs."""

    stage: str
    reason: str
    item: str
    detail: str = ""
    kind: str = ""
    raw: str = ""


DROP_COLUMNS = ["stage", "reason", "item", "kind", "detail", "raw"]


def drops_frame(drops: Iterable[Drop]) -> pd.DataFrame:
    """Drops as a table (one row each) for the warehouse and the "drops by reason" metadata."""
    rows = [dataclasses.asdict(drop) for drop in drops]
    return pd.DataFrame(rows, columns=DROP_COLUMNS)


class NearDuplicateIndex:
    """Finds near-duplicate questions by word-shingle Jaccard similarity.

    An inverted index from shingle to question keeps this linear in practice: only questions sharing a
    shingle are compared, so thousands of questions cost milliseconds, not a quadratic scan.
    """

    def __init__(self, threshold: float = 0.7, n: int = 3) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.n = n
        self._shingles: list[frozenset[tuple[str, ...]]] = []
        self._labels: list[str] = []
        self._postings: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def __len__(self) -> int:
        return len(self._labels)

    def find(self, text: str) -> tuple[str, float] | None:
        """The most similar stored question (label, similarity) at or above the threshold, if any."""
        shingles = word_shingles(text, self.n)
        candidates = {i for shingle in shingles for i in self._postings.get(shingle, ())}
        best: tuple[str, float] | None = None
        for i in candidates:
            score = jaccard(shingles, self._shingles[i])
            if score >= self.threshold and (best is None or score > best[1]):
                best = (self._labels[i], score)
        return best

    def add(self, text: str, label: str) -> None:
        shingles = word_shingles(text, self.n)
        position = len(self._labels)
        self._shingles.append(shingles)
        self._labels.append(label)
        for shingle in shingles:
            self._postings[shingle].append(position)


@dataclasses.dataclass(frozen=True)
class LeakageHit:
    """A synthesized question too close to a benchmark question, or a pair citing a benchmark page."""

    item: str
    reason: Literal["benchmark_question_overlap", "cites_benchmark_url"]
    detail: str
    overlap: float = 0.0


def url_host(url: str) -> str:
    """Lowercase host name without port; '' for strings that are not absolute URLs."""
    return (urlsplit(url).hostname or "").lower()


def benchmark_urls(urls: Iterable[str], benchmark_hosts: Collection[str]) -> list[str]:
    """The URLs that live on a benchmark site: synthesized data must never cite them."""
    hosts = {host.lower().split(":")[0] for host in benchmark_hosts}
    return [url for url in urls if url_host(url) in hosts]


def pair_urls(pair: QAPair) -> list[str]:
    """Every URL a pair's synthesis read: cited pages plus the search results of its rewrite chain."""
    urls = list(pair.source_urls)
    for step in pair.rewrite_chain:
        urls.extend(record.url for record in step.results)
    return urls


class LeakageGuard:
    """Overlap of synthesized questions with benchmark questions, measured on word n-grams.

    Overlap is |A ∩ B| / min(|A|, |B|) (containment in the shorter question), not Jaccard: an E2HQA rewrite
    that wraps a whole benchmark question in extra clauses is still a leak even though its Jaccard is low.
    """

    def __init__(self, benchmark_questions: Sequence[str], *, n: int = 3, threshold: float = 0.6) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"leakage threshold must be in (0, 1], got {threshold}")
        self.n = n
        self.threshold = threshold
        self._questions = list(benchmark_questions)
        self._shingles = [word_shingles(q, n) for q in self._questions]
        self._postings: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for position, shingles in enumerate(self._shingles):
            for shingle in shingles:
                self._postings[shingle].append(position)

    def max_overlap(self, question: str) -> tuple[float, str | None]:
        """The highest overlap with any benchmark question, and that question (None when nothing is shared)."""
        shingles = word_shingles(question, self.n)
        counts: dict[int, int] = defaultdict(int)
        for shingle in shingles:
            for position in self._postings.get(shingle, ()):
                counts[position] += 1
        best, best_question = 0.0, None
        for position, shared in counts.items():
            score = shared / min(len(shingles), len(self._shingles[position]))
            if score > best:
                best, best_question = score, self._questions[position]
        return best, best_question

    def check(self, pairs: Iterable[QAPair], benchmark_hosts: Collection[str]) -> list[LeakageHit]:
        """Every leak among `pairs`: question overlap at or above the threshold, or a cited benchmark URL."""
        hits = []
        for pair in pairs:
            overlap, question = self.max_overlap(pair.question)
            if overlap >= self.threshold:
                detail = f"overlap {overlap:.2f} with benchmark question {question!r}"
                hits.append(LeakageHit(pair.id, "benchmark_question_overlap", detail, overlap))
            leaked = benchmark_urls(pair_urls(pair), benchmark_hosts)
            if leaked:
                hits.append(LeakageHit(pair.id, "cites_benchmark_url", ", ".join(sorted(set(leaked)))))
        return hits


@dataclasses.dataclass(frozen=True)
class SynthesisResult:
    """What one synthesis run produced: kept pairs in a deterministic order, and every drop with its reason.

    `sources` names the pages each unit of work showed the teacher (a CRAWLQA cluster's URLs), by the id its drops'
    items start with: a run whose teacher wrote nothing usable still shows which pages it read."""

    pairs: list[QAPair]
    drops: list[Drop]
    attempted: int
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @property
    def drops_table(self) -> pd.DataFrame:
        return drops_frame(self.drops)

    def drop_counts(self) -> dict[str, int]:
        """Drops by reason, most frequent first: the "drops by reason" metadata."""
        counts: dict[str, int] = defaultdict(int)
        for drop in self.drops:
            counts[drop.reason] += 1
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


MIN_QUESTION_WORDS = 4


def question_problem(question: str) -> tuple[str, str] | None:
    """("not_a_question", detail) for text a searcher cannot work on: a label such as "Question 1" or a topic such
    as "How to fix a Python bug" (the offline teacher wrote both); None for a question of a few words ending in "?"."""
    if question.rstrip().endswith("?") and len(question.split()) >= MIN_QUESTION_WORDS:
        return None
    return "not_a_question", f'a question has at least {MIN_QUESTION_WORDS} words and ends with "?": {question!r}'


def is_grounded(answer: str, evidence: Sequence[str], text: str, min_evidence_words: int) -> bool:
    """The answer appears in `text`, or every evidence quote does and each is long enough to mean something."""
    if contains_phrase(text, answer):
        return True
    return bool(evidence) and all(
        len(quote.split()) >= min_evidence_words and contains_phrase(text, quote) for quote in evidence
    )


def deduplicate(
    candidates: Iterable[QAPair | Drop], stage: str, threshold: float, existing_questions: Iterable[str] = ()
) -> tuple[list[QAPair], list[Drop]]:
    """Keep the first of each group of near-duplicate questions (also against `existing_questions`)."""
    index = NearDuplicateIndex(threshold)
    for number, question in enumerate(existing_questions):
        index.add(question, f"existing question {number}")
    kept: list[QAPair] = []
    drops: list[Drop] = []
    for candidate in candidates:
        if isinstance(candidate, Drop):
            drops.append(candidate)
            continue
        duplicate = index.find(candidate.question)
        if duplicate is not None:
            label, score = duplicate
            detail = f"Jaccard {score:.2f} with {label}: {candidate.question!r}"
            drops.append(Drop(stage, "duplicate", candidate.id, detail, candidate.kind))
            continue
        index.add(candidate.question, candidate.id)
        kept.append(candidate)
    return kept, drops
