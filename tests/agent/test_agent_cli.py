"""`webdancer ask` on a warehouse holding the tiny web, against a scripted endpoint."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scripted_turns import HOST, PAGES, Script, answer, page_url, tool_call
from typer.testing import CliRunner

from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.cli import app
from webdancer_dagster.resources.web import SEARCH_INDEX_DIR
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import build_search_index

QUESTION = "When was Ada Lovelace born?"
TURNS = [
    tool_call("search", {"query": ["Ada Lovelace"]}, thought="Search first."),
    tool_call("visit", {"url": [page_url("Ada_Lovelace")], "goal": "her birth date"}),
    answer("10 December 1815"),
]


@pytest.fixture
def home(tmp_path, tiny_web):
    store = WarehouseStore(tmp_path / "home")
    store.replace_table(
        "sites",
        pd.DataFrame({"name": ["tiny"], "host": [HOST], "directory": [str(tiny_web.site_dir)], "benchmark": [False]}),
    )
    docs = pd.DataFrame(
        [{"url": page_url(slug), "title": title, "text": text, "site": "tiny"} for slug, (title, text) in PAGES.items()]
    )
    build_search_index(docs, store.home / SEARCH_INDEX_DIR)
    return store.home


def ask(home, server, tokenizer, *extra: str):
    arguments = ["ask", QUESTION, "--home", str(home), "--base-url", server.base_url, "--model", "scripted-model"]
    return CliRunner().invoke(app, [*arguments, "--tokenizer", tokenizer.name_or_path, *extra])


def test_ask_prints_each_step_and_the_answer(home, scripted, tokenizer):
    server = scripted(Script(TURNS))
    result = ask(home, server, tokenizer, "--max-llm-calls", "4")
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # rich wraps long lines
    for expected in ("step 1 · search", "Search first.", "step 2 · visit", "step 3 · answer"):
        assert expected in output
    assert "Answer: 10 December 1815" in output
    assert "Termination: answer" in output


def test_ask_json_prints_the_trajectory_on_stdout(home, scripted, tokenizer):
    server = scripted(Script(TURNS))
    result = ask(home, server, tokenizer, "--json", "--no-cache")
    assert result.exit_code == 0, result.stderr
    trajectory = Trajectory.model_validate(json.loads(result.stdout))
    assert (trajectory.termination, trajectory.answer, trajectory.llm_calls) == ("answer", "10 December 1815", 3)
    assert "step 1 · search" in result.stderr
    assert not (home / "llm_cache.sqlite").exists()


def test_ask_without_a_local_web_says_what_to_run(tmp_path, scripted, tokenizer):
    server = scripted([])
    result = ask(tmp_path / "empty-home", server, tokenizer)
    assert result.exit_code == 1
    assert "run `webdancer materialize` first" in " ".join(result.output.split())
    assert server.requests == []


def test_ask_reports_an_endpoint_failure_by_name(home, scripted, tokenizer):
    server = scripted([])  # an exhausted script answers HTTP 400, which is not retried
    result = ask(home, server, tokenizer)
    assert result.exit_code == 1
    assert f"policy endpoint {server.base_url} rejected the request (HTTP 400)" in " ".join(result.output.split())
