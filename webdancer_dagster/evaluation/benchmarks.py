"""Benchmark question sets, each loaded into one `BenchmarkQuestion` shape whatever its file looks like.

Every scored model must see the same questions with the same ids, or runs could not be compared or resumed, so
loaders reject what would make ids ambiguous (duplicate ids or questions) and name the file and record at fault.
MuSiQue is read for its questions and answers only: its `paragraphs` are benchmark evidence and stay unread.
`synth_monitor` is no file: its questions are the monitoring split of the synthesized QA pairs (`shared/split.py`),
read from the warehouse by the evaluation asset.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from webdancer_dagster.config_files import ConfigFileError, decode_utf8
from webdancer_dagster.shared.hashing import stable_id
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.shared.split import monitor_pairs

BenchmarkFormat = Literal["musique", "question_set", "jsonl", "warehouse"]


class BenchmarkQuestion(BaseModel):
    """One question with every accepted gold answer (aliases included)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1)


class BenchmarkFileError(ConfigFileError):
    """A benchmark file that cannot be loaded as it is; the message names the file and the record or line."""


@dataclasses.dataclass(frozen=True)
class BenchmarkSource:
    """Where a named benchmark's file lies under the data folder and how it is laid out."""

    path: str  # relative to the data folder, or absolute (declared benchmarks); "" for the warehouse format
    format: BenchmarkFormat
    offline: bool  # its answers are on the local web; the others need a live search backend or run closed-book
    corpus: Path | None = None  # a declared benchmark's own corpus, served as a benchmark-flagged site
    description: str = ""


BENCHMARKS: dict[str, BenchmarkSource] = {
    "musique": BenchmarkSource("musique/musique_train_100.json", "musique", offline=True),
    "musique_500": BenchmarkSource("questions/musique_500.json", "question_set", offline=False),
    "2wiki_500": BenchmarkSource("questions/2wiki_500.json", "question_set", offline=False),
    "bamboogle": BenchmarkSource("questions/bamboogle.json", "question_set", offline=False),
    "frames": BenchmarkSource("questions/frames.json", "question_set", offline=False),
    "webwalkerqa": BenchmarkSource("questions/webwalkerqa_test.json", "question_set", offline=False),
    "synth_monitor": BenchmarkSource(
        "",
        "warehouse",
        offline=True,
        description="The monitoring split of the synthesized QA pairs: answered on the local web, never trained on",
    ),
}


def file_benchmarks(sources: Mapping[str, BenchmarkSource]) -> dict[str, BenchmarkSource]:
    """The benchmarks read from files: every one but the monitoring split, which is synthesized data itself (so the
    leakage guard must not compare synthesized pairs with it) and has no file to check."""
    return {name: source for name, source in sources.items() if source.format != "warehouse"}


def monitor_questions(pairs: Iterable[QAPair]) -> list[BenchmarkQuestion]:
    """`synth_monitor`'s questions: the monitoring split of `pairs`, ordered by id so that `max_questions` takes the
    same ones however the QA tables are ordered; the gold answers are each pair's answer and aliases."""
    chosen = sorted(monitor_pairs(pairs), key=lambda pair: pair.id)
    if not chosen:
        raise LookupError(
            "synth_monitor has no questions: no synthesized QA pair is in the monitoring split yet (materialize "
            "crawlqa_pairs and e2hqa_pairs)"
        )
    return [BenchmarkQuestion(id=pair.id, question=pair.question, answers=pair.answers) for pair in chosen]


def load_benchmark(
    name: str, data_dir: Path, sources: Mapping[str, BenchmarkSource] = BENCHMARKS
) -> list[BenchmarkQuestion]:
    """The named benchmark (built-in under `data_dir`, or declared in `sources`); ids of sets without ids are
    content hashes."""
    if name not in sources:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(sorted(sources))}")
    source = sources[name]
    if source.format == "warehouse":
        raise ValueError(f"benchmark {name!r} is read from the warehouse (monitor_questions), not from a file")
    return load_questions(Path(data_dir) / source.path, source.format, id_prefix=f"{name}_")


def all_benchmark_questions(data_dir: Path, sources: Mapping[str, BenchmarkSource] = BENCHMARKS) -> list[str]:
    """The question text of every benchmark in `sources`: what synthesized pairs must never overlap."""
    files = file_benchmarks(sources)
    return [question.question for name in files for question in load_benchmark(name, data_dir, files)]


def load_questions(path: Path, format: BenchmarkFormat, *, id_prefix: str = "") -> list[BenchmarkQuestion]:
    """Load one file in the given layout; raises `BenchmarkFileError` naming the file and record on bad input."""
    path = Path(path)
    if format == "musique":
        return load_musique(path)
    if format == "question_set":
        return load_question_set(path, id_prefix=id_prefix)
    if format == "jsonl":
        return load_jsonl(path, id_prefix=id_prefix)
    raise ValueError(f"unknown benchmark format {format!r}; use musique, question_set or jsonl")


def load_musique(path: Path) -> list[BenchmarkQuestion]:
    """MuSiQue (HippoRAG layout): `id`, `question`, `answer` plus `answer_aliases`; `paragraphs` is ignored."""

    def convert(where: str, record: Mapping[str, Any]) -> tuple[str | None, str, list[str]]:
        answer = _required(path, where, record, "answer")
        aliases = record.get("answer_aliases") or []
        if not isinstance(aliases, list):
            raise BenchmarkFileError(f"{path}: {where}: 'answer_aliases' must be a list, got {type(aliases).__name__}")
        return record.get("id"), _required(path, where, record, "question"), _answers(path, where, [answer, *aliases])

    return _collect(path, _json_records(path), convert, id_prefix="musique_")


def load_question_set(path: Path, *, id_prefix: str = "") -> list[BenchmarkQuestion]:
    """The question-only sets (Bamboogle, FRAMES, MuSiQue-500, 2Wiki-500, WebWalkerQA): `Question` (or
    `question`), `answer` as a list or a string, `id` when the set has one."""

    def convert(where: str, record: Mapping[str, Any]) -> tuple[str | None, str, list[str]]:
        key = "Question" if "Question" in record else "question"
        question = _required(path, where, record, key)
        return record.get("id"), question, _answers(path, where, _required(path, where, record, "answer"))

    return _collect(path, _json_records(path), convert, id_prefix=id_prefix)


def load_jsonl(path: Path, *, id_prefix: str = "") -> list[BenchmarkQuestion]:
    """Bring your own: one `{question, answer}` object a line (answer a string or a list; `id` optional)."""

    def convert(where: str, record: Mapping[str, Any]) -> tuple[str | None, str, list[str]]:
        question = _required(path, where, record, "question")
        return record.get("id"), question, _answers(path, where, _required(path, where, record, "answer"))

    return _collect(path, _jsonl_records(path), convert, id_prefix=id_prefix)


def check_benchmark_files(sources: Mapping[str, BenchmarkSource], data_dir: Path) -> None:
    """Load every benchmark in `sources` and read each one's corpus, as a run would, so that a bad file stops
    `materialize` before its first run rather than hours into it; raises `BenchmarkFileError` naming every bad
    file with its line or record. (Every benchmark, not only those a profile scores: the synthesis leakage guard
    reads all of them. The built-in sets take about 0.1 s.)"""
    problems = []
    for name, source in file_benchmarks(sources).items():
        try:
            load_benchmark(name, data_dir, sources)
        except BenchmarkFileError as error:
            problems.append(f"benchmark {name!r}: {error}")
        if source.corpus is not None:
            try:
                check_corpus_file(source.corpus)
            except BenchmarkFileError as error:
                problems.append(f"benchmark {name!r}: {error}")
    if problems:
        raise BenchmarkFileError("\n".join(problems))


def check_corpus_file(path: Path) -> int:
    """A declared benchmark's corpus as its site will read it: a UTF-8 JSON list of `{title, text}` objects with
    text values. Returns the number of records; raises `BenchmarkFileError` naming the file and record."""
    path = Path(path)
    data = _parse_json(path, "corpus file")
    if not isinstance(data, list):
        raise BenchmarkFileError(f"{path}: expected a JSON array of {{title, text}} objects, got {type(data).__name__}")
    for index, record in enumerate(data, start=1):
        if not isinstance(record, dict) or not all(isinstance(record.get(key), str) for key in ("title", "text")):
            raise BenchmarkFileError(f"{path}: record {index}: expected a {{title: text, text: text}} object")
    return len(data)


def _read_text(path: Path, what: str = "benchmark file") -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BenchmarkFileError(f"{path}: no such {what}") from None
    except OSError as error:
        raise BenchmarkFileError(f"{path}: cannot read this {what} ({error.strerror or error})") from None
    return decode_utf8(path, raw, BenchmarkFileError)


def _parse_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as error:
        raise BenchmarkFileError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    data = _parse_json(path, "benchmark file")
    if not isinstance(data, list):
        raise BenchmarkFileError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for index, record in enumerate(data, start=1):
        yield f"record {index}", record


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    lines = _read_text(path).split("\n")  # not splitlines(): a JSON string may hold U+2028 and the like
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise BenchmarkFileError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        yield f"line {number}", record


def _collect(
    path: Path,
    records: Iterable[tuple[str, Any]],
    convert: Callable[[str, Mapping[str, Any]], tuple[str | None, str, list[str]]],
    *,
    id_prefix: str,
) -> list[BenchmarkQuestion]:
    questions: list[BenchmarkQuestion] = []
    seen_ids: dict[str, str] = {}
    seen_questions: dict[str, str] = {}
    for where, record in records:
        if not isinstance(record, dict):
            raise BenchmarkFileError(f"{path}: {where}: expected an object, got {type(record).__name__}")
        record_id, question, answers = convert(where, record)
        question = question.strip()
        qid = str(record_id).strip() if record_id not in (None, "") else stable_id(question, prefix=id_prefix)
        if qid in seen_ids:
            raise BenchmarkFileError(f"{path}: {where}: duplicate id {qid!r} (first at {seen_ids[qid]})")
        key = " ".join(question.lower().split())
        if key in seen_questions:
            raise BenchmarkFileError(f"{path}: {where}: duplicate question (first at {seen_questions[key]})")
        seen_ids[qid], seen_questions[key] = where, where
        questions.append(BenchmarkQuestion(id=qid, question=question, answers=answers))
    if not questions:
        raise BenchmarkFileError(f"{path}: no questions")
    return questions


def _required(path: Path, where: str, record: Mapping[str, Any], field: str) -> Any:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        raise BenchmarkFileError(f"{path}: {where}: missing or empty field {field!r}")
    return value


def _answers(path: Path, where: str, value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    answers: list[str] = []
    for answer in values:
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            raise BenchmarkFileError(f"{path}: {where}: an answer must be text, got {type(answer).__name__}")
        text = str(answer).strip()
        if text and text not in answers:
            answers.append(text)
    if not answers:
        raise BenchmarkFileError(f"{path}: {where}: missing or empty field 'answer'")
    return answers
