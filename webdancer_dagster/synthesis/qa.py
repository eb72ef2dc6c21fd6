"""The QA-pair contract every synthesis source produces, plus the text checks all of them share.

CRAWLQA, E2HQA and WebDancer's released samples all become `QAPair` rows of one `qa_pairs` table, so trajectory
sampling, the funnel and the RL pool never care where a question came from. The helpers here are the ones more
than one stage needs: SQuAD-style answer normalisation (grounding, exact-match judging), near-duplicate
detection over word shingles, the leakage guard against benchmark questions and benchmark URLs, and the
counted-drop record every stage returns instead of raising on bad model output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import string
import unicodedata
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

QAKind = Literal["count", "multi_hop", "intersection", "e2hqa", "reference"]
QASource = Literal["crawlqa", "e2hqa", "webdancer_sample"]

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


def stable_id(*parts: str, prefix: str = "") -> str:
    """A short content hash: the same inputs give the same id in every run, so reruns upsert, not duplicate."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}{digest}"


class SearchRecord(BaseModel):
    """One search hit an E2HQA rewrite read, kept so a reader can audit where a description came from."""

    model_config = ConfigDict(frozen=True)

    title: str
    url: str
    snippet: str


class RewriteStep(BaseModel):
    """One E2HQA rewrite: which entity of `question_before` was replaced by what, using which search results."""

    model_config = ConfigDict(frozen=True)

    question_before: str
    entity: str
    query: str
    results: list[SearchRecord]
    description: str
    question_after: str
    answer_check: str = Field("", description="the checker's raw reply saying the answer is unchanged; '' if off")


class QAPair(BaseModel):
    """One question with a short gold answer, where it came from and why we believe the answer.

    `id` is derived from source, normalised question and normalised answer when not given, so the same pair
    synthesized twice (a resumed run) gets the same id.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field("", description="filled from source, question and answer when empty")
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    answer_aliases: list[str] = Field(default_factory=list, description="other accepted spellings of the answer")
    kind: QAKind
    source: QASource
    source_urls: list[str] = Field(default_factory=list, description="pages that support the answer")
    difficulty: int = Field(1, ge=0, description="CRAWLQA: pages cited; E2HQA: rewrites applied")
    rewrite_chain: list[RewriteStep] = Field(default_factory=list)
    evidence: list[str] = Field(default_factory=list, description="quotes from the cited pages")
    teacher: str = Field("", description="model that wrote the pair; empty for released data")
    reference_tag: str | None = Field(None, description="WebDancer's own tag on released samples")

    @model_validator(mode="before")
    @classmethod
    def _fill_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("id"):
            parts = (str(data.get("source", "")), normalize_answer(str(data.get("question", ""))))
            data = {**data, "id": stable_id(*parts, normalize_answer(str(data.get("answer", ""))), prefix="qa-")}
        return data

    @property
    def answers(self) -> list[str]:
        """The gold answer followed by its aliases: everything a judge may accept."""
        return [self.answer, *(a for a in self.answer_aliases if a != self.answer)]


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


QA_COLUMNS = [
    "id",
    "question",
    "answer",
    "answer_aliases",
    "kind",
    "source",
    "source_urls",
    "difficulty",
    "rewrite_chain",
    "evidence",
    "teacher",
    "reference_tag",
]
_JSON_COLUMNS = ("answer_aliases", "source_urls", "rewrite_chain", "evidence")


def qa_pairs_frame(pairs: Iterable[QAPair]) -> pd.DataFrame:
    """The `qa_pairs` table: list and chain fields as JSON text, so any warehouse column type holds them."""
    rows = []
    for pair in pairs:
        row = pair.model_dump(mode="json")
        for column in _JSON_COLUMNS:
            row[column] = json.dumps(row[column], ensure_ascii=False)
        rows.append(row)
    return pd.DataFrame(rows, columns=QA_COLUMNS)


def qa_pairs_from_frame(frame: pd.DataFrame) -> list[QAPair]:
    """Read `qa_pairs_frame` output back into validated pairs."""
    pairs = []
    for row in frame.to_dict("records"):
        record = {key: row[key] for key in QA_COLUMNS if key in row}
        for column in _JSON_COLUMNS:
            if isinstance(record.get(column), str):
                record[column] = json.loads(record[column])
        if record.get("reference_tag") is not None and pd.isna(record["reference_tag"]):
            record["reference_tag"] = None
        pairs.append(QAPair.model_validate(record))
    return pairs


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
    """What one synthesis run produced: kept pairs in a deterministic order, and every drop with its reason."""

    pairs: list[QAPair]
    drops: list[Drop]
    attempted: int

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
