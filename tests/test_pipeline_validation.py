"""`materialize` checks the whole profile and every benchmark file before its first run, naming the file and line;
a mistake stops it with nothing materialized (before, a misspelt op was ignored and a wrong type surfaced only
when that asset's level ran, after its upstream assets had run)."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from webdancer_dagster.assets.jobs import PHASES, profile_config, profile_job_name
from webdancer_dagster.definitions import defs
from webdancer_dagster.evaluation.benchmarks import BenchmarkFileError, BenchmarkSource
from webdancer_dagster.pipeline import PROFILES_DIR, ProfileError, load_profile, materialize_all, validate_profile


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    return path


def assert_nothing_ran(instance: dg.DagsterInstance, home: Path) -> None:
    assert instance.get_runs() == []
    assert not (home / "warehouse.duckdb").exists()


def test_a_misspelt_op_is_named_before_anything_runs(tmp_path, instance, isolated_home):
    path = profile(tmp_path, "ops:\n  web_sites:\n    config: {}\n  crawl_pagez:\n    config:\n      max_pages: 5\n")

    # The selection holds an asset the profile does not misspell: before, it ran and the typo was ignored.
    with pytest.raises(ProfileError) as error:
        materialize_all(defs, instance, run_config=load_profile(str(path)), selection=["web_sites"])

    assert f"{path}:4: ops.crawl_pagez: no op named 'crawl_pagez' (did you mean 'crawl_pages'" in str(error.value)
    assert_nothing_ran(instance, isolated_home)


def test_a_wrong_type_is_reported_before_anything_runs(tmp_path, instance, isolated_home):
    # search_index is two levels below web_sites: before, both upstream levels ran before this config was read.
    path = profile(
        tmp_path,
        "ops:\n  crawl_pages:\n    config:\n      max_pages: lots\n      max_dept: 3\n"
        "  e2hqa_pairs:\n    config:\n      rewrites: 3\n",
    )

    with pytest.raises(ProfileError) as error:
        materialize_all(defs, instance, run_config=load_profile(str(path)))

    message = str(error.value)
    assert f"{path}: 3 problems, found before any run started" in message
    assert f"{path}:4: ops.crawl_pages.config.max_pages: expected Int, got 'lots'" in message
    assert f"{path}:5: ops.crawl_pages.config.max_dept: unknown field (did you mean 'max_depth'?)" in message
    assert f"{path}:8: ops.e2hqa_pairs.config.rewrites: expected a list, got 3" in message
    assert_nothing_ran(instance, isolated_home)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("execution:\n  config: {}\n", ":1: execution: unknown section"),
        ("resources:\n  webb: {}\n", ":2: resources.webb: no resource named 'webb' (did you mean 'web'?)"),
        (
            "resources:\n  web:\n    config:\n      search_results_per_qery: 5\n",
            ":4: resources.web.config.search_results_per_qery: unknown field (did you mean 'search_results_per_query'",
        ),
        ("ops:\n  rl_pool:\n    config: {}\n", ":2: ops.rl_pool: 'rl_pool' is an asset made by the op 'funnel'"),
        ("partitions:\n  nope: [a]\n", ":2: partitions.nope: no asset named 'nope'"),
        ("partitions:\n  web_sites: [a]\n", ":2: partitions.web_sites: asset 'web_sites' is not partitioned"),
        ("partitions:\n  crawl_pages: [pythn]\n", ":2: partitions.crawl_pages[0]: partitions ['pythn'] do not exist"),
        (
            "partitions:\n  benchmark_scores:\n    model: [base]\n    benchmark: [musiqe]\n",
            ":4: partitions.benchmark_scores.benchmark[0]: benchmark ['musiqe'] do not exist (did you mean 'musique'",
        ),
        (
            "partitions:\n  benchmark_scores:\n    model: base\n",
            ":3: partitions.benchmark_scores.model: expected a list of model keys",
        ),
        (
            "partitions:\n  benchmark_scores:\n    models: [base]\n",
            ":3: partitions.benchmark_scores.models: unknown partition dimensions ['models']",
        ),
    ],
)
def test_sections_assets_and_partitions_are_checked_with_their_line(tmp_path, text, expected):
    path = profile(tmp_path, text)

    with pytest.raises(ProfileError) as error:
        validate_profile(defs, load_profile(str(path)))

    assert f"{path}{expected}" in str(error.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"ops:\n  crawl_pages: {\n", ":3: not valid YAML (while parsing a flow node"),
        (b"ops:\n  crawl_pages: {}\n  crawl_pages: {}\n", ":3: duplicate key ops.crawl_pages (first on line 2)"),
        (b"ops:\n  crawl_pages:\n    config: {max_pages: 5}  # caf\xe9\n", ": line 3: not UTF-8 (byte 0xe9"),
        (b"- ops\n", ":1: a profile is a mapping"),
    ],
)
def test_a_profile_that_does_not_parse_is_named_with_its_line(tmp_path, raw, expected):
    path = tmp_path / "mine.yaml"
    path.write_bytes(raw)

    with pytest.raises(ProfileError) as error:
        load_profile(str(path))

    assert f"{path}{expected}" in str(error.value)


def test_an_unknown_selection_is_named(instance, isolated_home):
    with pytest.raises(ProfileError, match=r"--select: no asset named 'web_sitez' \(did you mean 'web_sites'\?\)"):
        materialize_all(defs, instance, run_config={}, selection=["web_sitez"])
    assert_nothing_ran(instance, isolated_home)


def test_a_bad_benchmark_file_is_named_before_anything_runs(tmp_path, instance, isolated_home):
    questions = tmp_path / "mine.jsonl"
    questions.write_bytes(b'{"question": "Who?", "answer": "Ada"}\n{"question": "Caf\xe9?", "answer": "B"}\n')
    corpus = tmp_path / "corpus.json"
    corpus.write_text('[{"title": "Ada", "text": 3}]')
    benchmarks = {"mine": BenchmarkSource(str(questions), "jsonl", offline=True, corpus=corpus)}

    with pytest.raises(BenchmarkFileError) as error:
        materialize_all(defs, instance, run_config=load_profile("smoke"), benchmarks=benchmarks)

    message = str(error.value)
    assert f"benchmark 'mine': {questions}: line 2: not UTF-8 (byte 0xe9 at offset 55)" in message
    assert f"benchmark 'mine': {corpus}: record 1: expected a {{title: text, text: text}} object" in message
    assert_nothing_ran(instance, isolated_home)


SHIPPED_PROFILES = sorted(PROFILES_DIR.glob("*.yaml"))


def test_the_documented_profiles_are_shipped():
    assert {"smoke", "full", "learn"} <= {path.stem for path in SHIPPED_PROFILES}


@pytest.mark.parametrize("path", SHIPPED_PROFILES, ids=lambda path: path.stem)
def test_the_shipped_profiles_are_valid(path):
    """Every file in profiles/, against the definitions and against each of its phase jobs (the launchpad's
    default config), so config drift fails here rather than in a manual run."""
    profile = load_profile(path.stem)
    validate_profile(defs, profile)
    for phase in PHASES:
        job = defs.resolve_job_def(profile_job_name(phase, path.stem))
        dg.validate_run_config(job, profile_config(profile, job.graph.node_names()))


def test_webdancer_materialize_exits_with_the_problem_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    path = profile(tmp_path, "ops:\n  crawl_pagez: {}\n")
    home = tmp_path / "home"
    command = [
        sys.executable,
        "-m",
        "webdancer_dagster.cli",
        "materialize",
        "--profile",
        str(path),
        "--home",
        str(home),
    ]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert finished.returncode == 2
    assert f"error: {path}: 1 problem, found before any run started:" in finished.stderr
    assert f"{path}:2: ops.crawl_pagez: no op named 'crawl_pagez'" in finished.stderr
    assert "Traceback" not in finished.stderr
    assert not (home / "warehouse.duckdb").exists()


def test_a_check_that_warns_is_logged_in_its_own_words_and_does_not_stop_the_run(instance, caplog):
    @dg.asset
    def empty_table() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"rows": 0})

    @dg.asset(deps=[empty_table])
    def downstream() -> None:
        return None

    @dg.asset_check(asset=empty_table, blocking=False)
    def empty_table_is_not_empty() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN, description="empty_table holds 0 rows: see its drops"
        )

    toy = dg.Definitions(assets=[empty_table, downstream], asset_checks=[empty_table_is_not_empty])
    with caplog.at_level("WARNING", logger="webdancer_dagster.pipeline"):
        results = materialize_all(toy, instance, benchmarks={})

    assert [result.success for result in results] == [True, True]
    assert "check empty_table_is_not_empty of empty_table: empty_table holds 0 rows: see its drops" in caplog.text
