"""The evaluation registry: built-in models and benchmarks plus those declared in YAML, with errors that say where."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from webdancer_dagster.evaluation.benchmarks import load_benchmark
from webdancer_dagster.evaluation.metrics import audit_scores, credits_without_overlap
from webdancer_dagster.evaluation.registry import REGISTRY_ENV, RegistryError, load_registry, registry_path
from webdancer_dagster.evaluation.settings import CLOSED_BOOK_MESSAGE, ClosedBookSearch, benchmark_setting
from webdancer_dagster.web.errors import ToolInputError


def write(tmp_path, text, questions=True, corpus=True):
    if questions:
        (tmp_path / "qs.jsonl").write_text(
            '{"question": "Who?", "answer": "Ada"}\n{"question": "When?", "answer": 1}\n'
        )
    if corpus:
        (tmp_path / "corpus.json").write_text(json.dumps([{"title": "Ada", "text": "Ada wrote it."}]))
    path = tmp_path / "evaluation.yaml"
    path.write_text(text)
    return path


def test_declared_models_and_benchmarks_follow_the_builtins(tmp_path):
    path = write(
        tmp_path,
        """
models:
  - {name: hosted-7b, base_url: "https://api.example.com/v1/", model: qwen-7b, api_key_env: HOSTED_KEY}
benchmarks:
  - {name: my_docs, questions: qs.jsonl, corpus: corpus.json}
  - {name: my_closed, questions: qs.jsonl}
""",
    )
    registry = load_registry(path)

    assert list(registry.models) == ["base", "sft", "rl", "hosted-7b"]
    hosted = registry.models["hosted-7b"]
    assert (hosted.kind, hosted.base_url, hosted.model, hosted.api_key_env) == (
        "endpoint", "https://api.example.com/v1", "qwen-7b", "HOSTED_KEY",
    )  # fmt: skip
    assert registry.models["sft"].checkpoint_table == "sft_checkpoint"
    assert list(registry.benchmarks)[:6] == [
        "musique",
        "musique_500",
        "2wiki_500",
        "bamboogle",
        "frames",
        "webwalkerqa",
    ]
    assert registry.benchmarks["my_docs"].offline and registry.benchmarks["my_docs"].corpus == tmp_path / "corpus.json"
    assert not registry.benchmarks["my_closed"].offline and list(registry.corpus_benchmarks) == ["my_docs"]
    questions = load_benchmark("my_docs", tmp_path / "unused", registry.benchmarks)
    assert [(q.question, q.answers) for q in questions] == [("Who?", ["Ada"]), ("When?", ["1"])]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  - {name: Big Model, base_url: 'http://x/v1', model: m}\n", r"models\[0\]: name 'Big Model'"),
        ("models:\n  - {name: sft, base_url: 'http://x/v1', model: m}\n", r"models\[0\]: name 'sft' is already taken"),
        ("models:\n  - {name: m, base_url: 'http://x/v1', model: m, api_key_env: sk-abc123}\n", r"\*name\* of an env"),
        ("models:\n  - {name: m, base_url: 'x', model: m}\n", r"models\[0\]\.base_url \(m\): .*http"),
        ("models:\n  - {name: m, base_url: 'http://x/v1', model: m, api_key: k}\n", r"models\[0\]\.api_key \(m\)"),
        ("benchmarks:\n  - {name: b, questions: missing.jsonl}\n", r"benchmarks\[0\]: no such file 'missing.jsonl'"),
        ("benchmarks:\n  - {name: b, questions: qs.json}\n", r"must be a \.jsonl file"),
        ("benchmarks:\n  - {name: musique, questions: qs.jsonl}\n", r"'musique' is already taken"),
        ("benchmarks:\n  - {name: b, questions: qs.jsonl}\n  - {name: b, questions: qs.jsonl}\n", r"benchmarks\[1\]"),
        ("models: [\n", r"not valid YAML"),
    ],
)
def test_bad_registries_name_the_file_and_entry(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(RegistryError, match=message) as error:
        load_registry(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: []\nbenchmarks:\n  - name: b\n    questions: missing.jsonl\n", ":4: benchmarks[0]: no such file"),
        ("models:\n  - name: m\n    base_url: x\n    model: m\n", ":3: models[0].base_url (m): "),
        ("benchmarks:\n  - {name: Bad Name, questions: qs.jsonl}\n", ":2: benchmarks[0]: name 'Bad Name' must be"),
        ("models: []\nmodels: []\n", ":2: duplicate key models (first on line 1)"),
        ("- name: m\n", ":1: expected a mapping with `models:` and `benchmarks:`, got list"),
    ],
)
def test_registry_errors_name_the_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(RegistryError) as error:
        load_registry(path)
    assert str(error.value).startswith(f"{path}{expected}")


def test_a_registry_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "evaluation.yaml"
    path.write_bytes(b"benchmarks: []\n# caf\xe9\n")
    with pytest.raises(RegistryError, match=r"evaluation\.yaml: line 2: not UTF-8"):  # before: UnicodeDecodeError
        load_registry(path)


def test_a_bad_registry_stops_other_commands_with_one_line_naming_it(tmp_path, monkeypatch):
    """The definitions read the registry when they load (its entries are partitions, its corpora crawl_pages
    sites), so `crawl` needs it too; it ends with the registry's problem, not a traceback."""
    path = write(tmp_path, "benchmarks:\n  - {name: b, questions: missing.jsonl}\n", questions=False)
    monkeypatch.setenv(REGISTRY_ENV, str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    command = [sys.executable, "-m", "webdancer_dagster.cli", "crawl", "--site", "wiki", "--home", str(tmp_path / "h")]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert finished.returncode == 2
    assert finished.stderr.strip() == (
        f"error: {path}:2: benchmarks[0]: no such file 'missing.jsonl' (looked at {tmp_path / 'missing.jsonl'})"
    )


def test_the_registry_file_comes_from_the_environment_or_the_repository(tmp_path):
    assert registry_path({REGISTRY_ENV: str(tmp_path / "mine.yaml")}) == tmp_path / "mine.yaml"
    assert load_registry(None).models.keys() == {"base", "sft", "rl"}
    with pytest.raises(RegistryError, match="no such evaluation registry file"):
        load_registry(tmp_path / "mine.yaml")


def test_question_only_sets_run_live_when_a_search_key_exists_else_closed_book(tmp_path):
    registry = load_registry(None)
    assert benchmark_setting(registry.benchmarks["musique"], live_search_available=False) == "local_web"
    assert benchmark_setting(registry.benchmarks["musique"], live_search_available=True) == "local_web"
    assert benchmark_setting(registry.benchmarks["frames"], live_search_available=True) == "live_web"
    assert benchmark_setting(registry.benchmarks["frames"], live_search_available=False) == "closed_book"
    with pytest.raises(ToolInputError, match="closed-book"):
        ClosedBookSearch().search("anything")
    assert "answer from what you already know" in CLOSED_BOOK_MESSAGE


def _scores(**overrides):
    row = {"partition": "musique|base", "fingerprint": "f", "questions": 2, "runs_per_question": 2, "pass_at_1": 0.5,
           "pass_at_k": 1.0, "cons_at_k": 0.5, "format_error_rate": 0.0, "exact_match": 0.5, "f1": 0.5}  # fmt: skip
    return pd.DataFrame([{**row, **overrides}])


def _runs(flags=("", "", "", ""), questions=("a", "a", "b", "b")):
    return pd.DataFrame(
        {"partition": "musique|base", "fingerprint": "f", "question_id": list(questions), "judge_flag": list(flags)}
    )


def test_audit_passes_sound_scores_and_names_each_problem():
    assert audit_scores(_scores(), _runs(), 0.2).empty
    problems = audit_scores(_scores(pass_at_1=1.5, cons_at_k=1.0, pass_at_k=0.9), _runs(questions="aaab"), 0.2)
    assert set(problems["problem"]) == {"runs_per_question", "questions", "out_of_range", "inconsistent"}
    flagged = audit_scores(_scores(), _runs(flags=("unparsed", "", "", "")), 0.2)
    assert flagged["problem"].tolist() == ["judge_unreadable"] and "25.0%" in flagged["detail"].iloc[0]
    other_fingerprint = _runs().assign(fingerprint="old")
    assert "questions" in set(audit_scores(_scores(), other_fingerprint, 0.2)["problem"])


def test_credits_without_overlap_counts_llm_credits_that_share_no_word_with_the_gold():
    runs = pd.DataFrame({
        "partition": ["musique|base"] * 5 + ["musique|sft"],
        "fingerprint": ["f", "f", "f", "f", "old", "f"],
        "judge_method": ["llm", "llm", "llm", "exact", "llm", "llm"],
        "correct": [True, True, False, True, True, True],
        "f1": [0.0, 0.4, 0.0, 1.0, 0.0, 0.0],
    })  # fmt: skip
    scores = pd.concat([_scores(), _scores(partition="musique|sft")])
    credits = credits_without_overlap(scores, runs, min_credits=1, max_share=0.5).set_index("partition")
    # base: two LLM credits of this fingerprint (an exact match and an old run do not count), one with no overlap:
    # half is not more than half
    assert credits.loc["musique|base"].tolist() == [2, 1, 0.5, False]
    assert credits.loc["musique|sft"].tolist() == [1, 1, 1.0, True]
    too_few = credits_without_overlap(scores, runs, min_credits=2, max_share=0.5).set_index("partition")
    assert too_few.loc["musique|sft"].tolist() == [1, 1, 1.0, False]  # one credit says little about a judge
    empty = credits_without_overlap(_scores(), runs.iloc[:0], min_credits=1, max_share=0.5)
    assert empty.loc[0].tolist() == ["musique|base", 0, 0, 0.0, False]


def test_a_profile_picks_the_partitions_it_runs():
    import dagster as dg

    from webdancer_dagster.pipeline import partition_keys

    grid = dg.MultiPartitionsDefinition(
        {
            "model": dg.StaticPartitionsDefinition(["base", "sft", "rl"]),
            "benchmark": dg.StaticPartitionsDefinition(["a", "b"]),
        }
    )
    assert len(partition_keys(grid)) == 6
    assert partition_keys(grid, {"model": ["base", "sft"], "benchmark": ["a"]}) == ["a|base", "a|sft"]
    assert partition_keys(grid, {"benchmark": ["b"]}) == ["b|base", "b|sft", "b|rl"]
    assert partition_keys(grid, ["b|rl"]) == ["b|rl"]
    with pytest.raises(ValueError, match="unknown partition dimensions"):
        partition_keys(grid, {"models": ["base"]})
    with pytest.raises(ValueError, match="do not exist"):
        partition_keys(grid, ["c|base"])
