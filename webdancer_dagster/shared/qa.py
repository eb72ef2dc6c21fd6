"""The QA-pair record every synthesis source produces and every later stage reads, and its one table codec.

CRAWLQA, E2HQA and WebDancer's released samples all become `QAPair` rows of one `qa_pairs` table, so trajectory
sampling, the funnel, the RL pool and the training assets never care where a question came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from webdancer_dagster.shared.answers import normalize_answer
from webdancer_dagster.shared.hashing import stable_id

QAKind = Literal["count", "multi_hop", "intersection", "e2hqa", "reference"]
QASource = Literal["crawlqa", "e2hqa", "webdancer_sample"]


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
