"""Shared fixtures: every test gets its own WebDancer home and run history (nothing touches the user's), checked
over the whole session, and scripted LLM servers."""

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer


def _user_state(home: Path, dagster_home: Path) -> dict[str, Any]:
    """What a test could change in the user's home: its files outside the run history (which a running UI's daemon
    keeps writing), and the runs recorded in that history."""
    files = {
        str(path.relative_to(home)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in (home.rglob("*") if home.is_dir() else [])
        if path.is_file() and dagster_home not in path.parents
    }
    runs: list[str] = []
    database = dagster_home / "history" / "runs.db"
    if database.exists():
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            runs = sorted(row[0] for row in connection.execute("SELECT run_id FROM runs"))
    return {"files": files, "runs": runs}


@pytest.fixture(scope="session", autouse=True)
def users_home_is_untouched() -> Iterator[None]:
    """The home and run history the user's environment names (as `make test` exports them) end the session as they
    began it."""
    home = Path(os.environ.get("WEBDANCER_HOME") or ".webdancer").resolve()
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home / "dagster").resolve()
    before = _user_state(home, dagster_home)
    yield
    after = _user_state(home, dagster_home)
    changed = sorted(set(before["files"].items()) ^ set(after["files"].items()))
    new_runs = sorted(set(after["runs"]) - set(before["runs"]))
    assert not changed and not new_runs, f"the tests changed the user's home {home}: {changed} {new_runs}"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, tmp_path_factory, monkeypatch):
    home = tmp_path / "webdancer-home"
    monkeypatch.setenv("WEBDANCER_HOME", str(home))
    # Outside tmp_path, which some tests list: a run history of the test's own.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path_factory.mktemp("dagster-home")))
    return home


@pytest.fixture
def scripted() -> Iterator[Callable[[Any], ScriptedLLMServer]]:
    """Start scripted chat-completions servers (a script or a responder each); all stop after the test."""
    servers: list[ScriptedLLMServer] = []

    def start(script: Any) -> ScriptedLLMServer:
        server = ScriptedLLMServer(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
