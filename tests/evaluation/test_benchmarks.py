"""Benchmark loaders: the shipped sets load into one shape; bad files fail naming the file and the record."""

import json
import re

import pytest

from webdancer_dagster.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkFileError,
    BenchmarkSource,
    all_benchmark_questions,
    check_benchmark_files,
    check_corpus_file,
    file_benchmarks,
    load_benchmark,
    load_jsonl,
    load_musique,
    load_question_set,
)
from webdancer_dagster.paths import DATA_DIR


@pytest.mark.parametrize(("name", "count"), [("musique", 100), ("bamboogle", 125), ("webwalkerqa", 680)])
def test_shipped_benchmarks_load(name, count):
    questions = load_benchmark(name, DATA_DIR)
    assert len(questions) == count
    assert len({q.id for q in questions}) == count and all(q.answers for q in questions)


def test_musique_answers_include_aliases_and_keep_ids():
    first = load_benchmark("musique", DATA_DIR)[0]
    assert first.id == "2hop__150763_14904"
    assert first.answers == ["G. Stanley Hall", "Stanley Hall"]


def test_every_registered_benchmark_file_exists():
    files = file_benchmarks(BENCHMARKS)
    assert all((DATA_DIR / source.path).is_file() for source in files.values())
    assert set(BENCHMARKS) - set(files) == {"synth_monitor"}  # read from the warehouse
    with pytest.raises(ValueError, match="'synth_monitor' is read from the warehouse"):
        load_benchmark("synth_monitor", DATA_DIR)


def test_question_sets_without_ids_get_stable_ids(tmp_path):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"Question": "Who?", "answer": "Ada"}, {"Question": "Where?", "answer": ["A", "B"]}]))
    first, second = load_question_set(path, id_prefix="x_"), load_question_set(path, id_prefix="x_")
    assert [q.id for q in first] == [q.id for q in second] and first[0].id.startswith("x_")
    assert first[1].answers == ["A", "B"]


def test_bring_your_own_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "Who?", "answer": "Ada"}\n\n{"question": "When?", "answer": ["1815", 1815]}\n')
    questions = load_jsonl(path, id_prefix="mine_")
    assert [q.answers for q in questions] == [["Ada"], ["1815"]]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"question": "Who?", "answer": "Ada"}', '{"question": "When?"}'],
            r"line 2: missing or empty field 'answer'",
        ),
        (['{"answer": "Ada"}'], r"line 1: missing or empty field 'question'"),
        (['{"question": "Who?", "answer": ""}'], r"line 1: missing or empty field 'answer'"),
        (
            ['{"question": "Who?", "answer": "Ada"}', '{"question": " who? ", "answer": "B"}'],
            r"line 2: duplicate question",
        ),
        (
            ['{"id": "a", "question": "Who?", "answer": "x"}', '{"id": "a", "question": "Q2", "answer": "y"}'],
            r"line 2: duplicate id 'a' \(first at line 1\)",
        ),
        (['{"question": "Who?", "answer": "Ada"}', "{not json"], r"line 2: not valid JSON"),
        (['["Who?", "Ada"]'], r"line 1: expected an object"),
        (['{"question": "Who?", "answer": {"a": 1}}'], r"line 1: an answer must be text"),
        ([], "no questions"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(BenchmarkFileError, match=message) as error:
        load_jsonl(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"id": "a", "question": "Who?"}], r"record 1: missing or empty field 'answer'"),
        (
            [{"id": "a", "question": "Q", "answer": "x"}, {"id": "a", "question": "R", "answer": "y"}],
            "record 2: duplicate id",
        ),
        (
            [{"id": "a", "question": "Q", "answer": "x", "answer_aliases": "y"}],
            "record 1: 'answer_aliases' must be a list",
        ),
    ],
)
def test_bad_musique_names_record(tmp_path, records, message):
    path = tmp_path / "musique.json"
    path.write_text(json.dumps(records))
    with pytest.raises(BenchmarkFileError, match=message):
        load_musique(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(BenchmarkFileError, match="no such benchmark file"):
        load_question_set(tmp_path / "missing.json")
    (tmp_path / "obj.json").write_text('{"Question": "Who?"}')
    with pytest.raises(BenchmarkFileError, match="expected a JSON array"):
        load_question_set(tmp_path / "obj.json")
    with pytest.raises(KeyError, match="unknown benchmark 'gaia'"):
        load_benchmark("gaia", tmp_path)


def test_all_benchmark_questions_include_declared_benchmarks(tmp_path):
    """The leakage guard reads its questions here, so a benchmark declared in the registry is protected too."""
    declared = tmp_path / "mine.jsonl"
    declared.write_text(json.dumps({"question": "Who designed the Zorblax engine?", "answer": "Ada Quill"}) + "\n")
    sources = {
        "bamboogle": BENCHMARKS["bamboogle"],
        "mine": BenchmarkSource(str(declared), "jsonl", offline=False),
    }

    questions = all_benchmark_questions(DATA_DIR, sources)

    assert len(questions) == 125 + 1
    assert questions[-1] == "Who designed the Zorblax engine?"
    assert questions[:125] == [question.question for question in load_benchmark("bamboogle", DATA_DIR)]


@pytest.mark.parametrize(
    ("name", "raw", "load", "message"),
    [
        (
            "q.jsonl",
            b'{"question": "Who?", "answer": "Ada"}\n{"question": "Caf\xe9?"}\n',
            load_jsonl,
            "line 2: not UTF-8",
        ),
        ("q.json", b'[{"Question": "Who?",\n  "answer": "Caf\xe9"}]', load_question_set, "line 2: not UTF-8"),
        ("q.json", b'[{"Question": "Who?",\n  "answer": }]', load_question_set, "line 2: not valid JSON"),
        ("q.jsonl", '\ufeff{"question": "Who?", "answer": "Ada"}\n'.encode(), load_jsonl, None),  # a BOM is fine
    ],
)
def test_undecodable_or_malformed_files_name_the_file_and_line(tmp_path, name, raw, load, message):
    path = tmp_path / name
    path.write_bytes(raw)
    if message is None:
        assert [q.question for q in load(path)] == ["Who?"]
        return
    with pytest.raises(BenchmarkFileError, match=message) as error:  # before: a bare UnicodeDecodeError
        load(path)
    assert str(error.value).startswith(f"{path}: ")


def test_a_json_string_may_hold_a_unicode_line_separator(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question": "Who\u2028wrote it?", "answer": "Ada"}, ensure_ascii=False) + "\n")
    assert load_jsonl(path)[0].question == "Who\u2028wrote it?"


def test_corpus_files_are_checked_as_their_site_reads_them(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"title": "Ada", "text": "Ada wrote it."}]))
    assert check_corpus_file(good) == 1
    for text, message in [
        ('{"title": "Ada"}', "expected a JSON array"),
        ('[{"title": "Ada", "text": 3}]', "record 1: expected a {title: text, text: text} object"),
        ("[", "line 1: not valid JSON"),
    ]:
        good.write_text(text)
        with pytest.raises(BenchmarkFileError, match=re.escape(message)):
            check_corpus_file(good)


def test_check_benchmark_files_reads_every_benchmark_and_names_each_bad_one(tmp_path):
    check_benchmark_files(BENCHMARKS, DATA_DIR)  # the shipped sets load
    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(b"\xff\n")
    sources = {**BENCHMARKS, "mine": BenchmarkSource(str(broken), "jsonl", offline=False)}
    with pytest.raises(BenchmarkFileError) as error:
        check_benchmark_files(sources, tmp_path / "no-data")
    lines = str(error.value).splitlines()
    assert len(lines) == len(file_benchmarks(sources))  # every built-in file is missing here, and mine is not UTF-8
    assert lines[-1] == f"benchmark 'mine': {broken}: line 1: not UTF-8 (byte 0xff at offset 0); save the file as UTF-8"
