"""Scripted chat-completions servers that are stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from webdancer_dagster.llm.scripted import ScriptedLLMServer


@pytest.fixture
def scripted() -> Iterator[Callable[[Any], ScriptedLLMServer]]:
    servers: list[ScriptedLLMServer] = []

    def start(script: Any) -> ScriptedLLMServer:
        server = ScriptedLLMServer(script).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
