"""Shared fixtures: every test gets its own WebDancer home (nothing touches ./.webdancer), and scripted LLM servers."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webdancer_dagster.llm.scripted import ScriptedLLMServer


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "webdancer-home"
    monkeypatch.setenv("WEBDANCER_HOME", str(home))
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
