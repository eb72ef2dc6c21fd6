"""The turn parser: every released WebDancer turn is clean, and each way a small model breaks the format is caught."""

from __future__ import annotations

import json

import pytest
from scripted_turns import well_formed

from webdancer_dagster.agent.parser import parse_turn, validate_arguments
from webdancer_dagster.agent.prompts import INVALID_TOOL_CALL_TEXT, MISSING_ACTION_TEXT
from webdancer_dagster.agent.tools import SEARCH_PARAMETERS, VISIT_PARAMETERS
from webdancer_dagster.paths import DATA_DIR

SCHEMAS = {"search": SEARCH_PARAMETERS, "visit": VISIT_PARAMETERS}
SEARCH_JSON = '{"name": "search", "arguments": {"query": ["a", "b"]}}'


def test_every_assistant_turn_of_the_released_samples_is_well_formed():
    turns = [
        message["content"]
        for line in (DATA_DIR / "webdancer_samples" / "sample_traj.jsonl").read_text(encoding="utf-8").splitlines()
        for message in json.loads(line)["messages"][2:]
        if message["role"] == "assistant"
    ]
    parsed = [parse_turn(turn, SCHEMAS) for turn in turns]
    assert len(parsed) == 422
    assert [p for p in parsed if not well_formed(p)] == []
    assert {p.kind for p in parsed} == {"tool_call", "answer"}
    assert {p.tool_name for p in parsed if p.kind == "tool_call"} == {"search", "visit"}


def test_a_clean_tool_call():
    turn = parse_turn(f"<think>\nLet me search.\n</think>\n<tool_call>\n{SEARCH_JSON}\n</tool_call>", SCHEMAS)
    assert (turn.kind, turn.tool_name, turn.arguments, turn.thought) == (
        "tool_call",
        "search",
        {"query": ["a", "b"]},
        "Let me search.",
    )
    assert turn.issues == () and well_formed(turn)


def test_a_clean_answer():
    turn = parse_turn("<think>done</think>\n<answer>\nParis\n</answer>", SCHEMAS)
    assert (turn.kind, turn.answer, turn.thought, turn.issues) == ("answer", "Paris", "done", ())


@pytest.mark.parametrize(
    ("raw", "kind", "issue"),
    [
        (f"<tool_call>{SEARCH_JSON}</tool_call>", "tool_call", "missing <think>"),
        (f"thinking</think><tool_call>{SEARCH_JSON}</tool_call>", "tool_call", "missing <think>"),
        (f"<think>thinking <tool_call>{SEARCH_JSON}</tool_call>", "tool_call", "unclosed <think>"),
        (f"Sure! <think>x</think><tool_call>{SEARCH_JSON}</tool_call>", "tool_call", "text before <think>"),
        (f"<think>x</think><tool_call>{SEARCH_JSON}", "tool_call", "unclosed <tool_call>"),
        (
            f"<think>x</think><tool_call>```json\n{SEARCH_JSON[:-1]}\n```</tool_call>",
            "tool_call",
            "repaired tool-call JSON",
        ),
        ("<think>x</think><answer>Paris", "answer", "unclosed <answer>"),
        (
            f"<think>x</think><answer>Paris</answer><tool_call>{SEARCH_JSON}</tool_call>",
            "answer",
            "a <tool_call> after",
        ),
        (f"<think>x</think><tool_call>{SEARCH_JSON}</tool_call><answer>P</answer>", "tool_call", "an <answer> after"),
        (f"<think>x</think><tool_call>{SEARCH_JSON}</tool_call>\n<tool_response>\nmade up", "tool_call", "cut at"),
        (
            '<think>x</think><tool_call>{"name": "search", "arguments": "{\\"query\\": [\\"a\\"]}"}</tool_call>',
            "tool_call",
            None,
        ),
    ],
)
def test_recoverable_deviations_are_recorded(raw, kind, issue):
    turn = parse_turn(raw, SCHEMAS)
    assert turn.kind == kind
    if issue is None:
        assert turn.issues == ()
    else:
        assert any(issue in recorded for recorded in turn.issues), turn.issues
        assert not well_formed(turn)


def test_the_turn_text_stops_before_an_invented_observation():
    turn = parse_turn(f"<think>x</think><tool_call>{SEARCH_JSON}</tool_call>\n<tool_response>\nmade up", SCHEMAS)
    assert turn.text == f"<think>x</think><tool_call>{SEARCH_JSON}</tool_call>"


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("I think the answer is Paris.", MISSING_ACTION_TEXT),
        ("<think>x</think>\nsearch(query=['Paris'])", MISSING_ACTION_TEXT),
        ("<think>x</think><tool_call>search Paris</tool_call>", INVALID_TOOL_CALL_TEXT),
        ('<think>x</think><tool_call>{"arguments": {"query": ["a"]}}</tool_call>', INVALID_TOOL_CALL_TEXT),
        ('<think>x</think><tool_call>{"name": "search", "arguments": [1]}</tool_call>', INVALID_TOOL_CALL_TEXT),
        ('<think>x</think><tool_call>{"name": "browse", "arguments": {}}</tool_call>', "Error: Tool browse not found"),
        ('<think>x</think><tool_call>{"name": "visit", "arguments": {"url": ["u"]}}</tool_call>', "'goal'"),
        ('<think>x</think><tool_call>{"name": "visit", "arguments": {"url": 3, "goal": "g"}}</tool_call>', "'url'"),
        ('<think>x</think><tool_call>{"name": "search"}</tool_call>', "missing required argument(s) 'query'"),
    ],
)
def test_turns_that_cannot_be_acted_on_get_an_error_for_the_model(raw, error):
    turn = parse_turn(raw, SCHEMAS)
    assert turn.kind == "invalid"
    assert error in turn.error
    assert not well_formed(turn)


def test_an_invalid_arguments_error_shows_the_schema():
    turn = parse_turn('<think>x</think><tool_call>{"name": "search", "arguments": {}}</tool_call>', SCHEMAS)
    assert json.dumps(SEARCH_PARAMETERS, ensure_ascii=False) in turn.error


@pytest.mark.parametrize("raw", ["", "   ", "\n<tool_response>\nonly an invented observation"])
def test_an_empty_turn(raw):
    assert parse_turn(raw, SCHEMAS).kind == "empty"


def test_an_empty_answer_is_parsed_but_not_well_formed():
    turn = parse_turn("<think>x</think><answer> </answer>", SCHEMAS)
    assert (turn.kind, turn.answer, well_formed(turn)) == ("answer", "", False)


def test_validate_arguments_wraps_a_string_and_drops_unknown_arguments():
    issues: list[str] = []
    cleaned, error = validate_arguments({"url": "http://a/", "goal": "g", "extra": 1}, VISIT_PARAMETERS, issues)
    assert (cleaned, error) == ({"url": ["http://a/"], "goal": "g"}, None)
    assert issues == ["argument 'url' wrapped in a list", "unknown argument 'extra' dropped"]


@pytest.mark.parametrize(("value", "ok"), [(True, False), (1, False), ("g", True), (None, False)])
def test_validate_arguments_checks_types(value, ok):
    cleaned, error = validate_arguments({"url": ["u"], "goal": value}, VISIT_PARAMETERS, [])
    assert (cleaned is not None, error is None) == (ok, ok)
