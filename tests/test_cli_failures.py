"""The CLI as a user runs it: a failed Dagster run ends the command with the cause, not a long pretty traceback."""

import os
import sqlite3
import subprocess
import sys
from pathlib import Path


def test_a_failed_run_exits_with_its_cause(tmp_path: Path) -> None:
    # Scoring on an empty home fails at its first read. With rich's pretty tracebacks the process then spent
    # minutes and gigabytes on the error chain; the timeout only keeps a regression from hanging the suite.
    command = [sys.executable, "-m", "webdancer_dagster.cli", "eval", "--home", str(tmp_path / "home")]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert finished.returncode == 1
    # The first read of a local-web benchmark is the search index its runs are fingerprinted by.
    assert finished.stderr.rstrip().endswith(
        f"LookupError: no search index at {tmp_path / 'home' / 'search_index'}; materialize search_index first"
    )
    assert "locals" not in finished.stderr


def _run_ids(dagster_home: Path) -> list[str]:
    database = dagster_home / "history" / "runs.db"
    if not database.exists():
        return []
    with sqlite3.connect(database) as connection:
        return [row[0] for row in connection.execute("SELECT run_id FROM runs")]


def test_a_run_on_another_home_stays_out_of_the_users_run_history(tmp_path: Path) -> None:
    """`make test` exports the user's DAGSTER_HOME; a command given --home must record its run in that home's
    history, not in the user's (the failed run once showed in the user's UI, with its checks)."""
    users_history = tmp_path / "user" / ".webdancer" / "dagster"
    other_home = tmp_path / "other-home"
    environment = {**os.environ, "DAGSTER_HOME": str(users_history), "WEBDANCER_HOME": str(users_history.parent)}
    command = [sys.executable, "-m", "webdancer_dagster.cli", "eval", "--home", str(other_home)]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)

    assert finished.returncode == 1
    assert _run_ids(users_history) == []
    assert len(_run_ids(other_home / "dagster")) == 1


def test_eval_runs_in_the_profiles_environment(tmp_path: Path) -> None:
    """`webdancer eval --profile` runs with the profile's resources, not only its benchmark_scores config. It once
    sent the ops alone: a model trained by the learning profile on 5 search results a query was scored on 10."""
    from dagster import DagsterRun, deserialize_value

    profile = tmp_path / "mine.yaml"
    profile.write_text(
        "resources: {web: {config: {search_results_per_query: 4}}}\n"
        "ops: {benchmark_scores: {config: {max_questions: 2}}}\n"
    )
    home = tmp_path / "home"
    command = [sys.executable, "-m", "webdancer_dagster.cli", "eval", "--home", str(home), "--profile", str(profile)]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert finished.returncode == 1  # an empty home: no search index
    with sqlite3.connect(home / "dagster" / "history" / "runs.db") as connection:
        (body,) = [row[0] for row in connection.execute("SELECT run_body FROM runs")]
    assert deserialize_value(body, DagsterRun).run_config == {
        "resources": {"web": {"config": {"search_results_per_query": 4}}},
        "ops": {"benchmark_scores": {"config": {"max_questions": 2}}},
    }
