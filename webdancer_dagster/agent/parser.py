"""Parse one assistant turn of WebDancer's format into a thought and an action, leniently but on the record.

A turn is `<think>...</think>` followed by either `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` or
`<answer>...</answer>`. Small models break this in every way; the parser recovers what it safely can (repairs
JSON with json-repair, accepts a missing `</answer>`, wraps a single URL in a list) and records each deviation in
`issues`, so that the loop can continue while format rewards and filters can still see the turn was not clean.
A turn it cannot act on gets `kind="invalid"` and an `error` text written for the model to read.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import json_repair

from webdancer_dagster.agent.prompts import (
    INVALID_ARGUMENTS_TEXT,
    INVALID_TOOL_CALL_TEXT,
    MISSING_ACTION_TEXT,
    UNKNOWN_TOOL_TEXT,
)

TurnKind = Literal["tool_call", "answer", "invalid", "empty"]

OBSERVATION_TAG = "<tool_response>"
_CODE_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


@dataclasses.dataclass(frozen=True)
class ParsedTurn:
    """One assistant turn. `text` is the turn as it goes into the conversation (cut before any observation)."""

    text: str
    thought: str
    kind: TurnKind
    tool_name: str | None = None
    arguments: dict[str, Any] | None = None
    answer: str | None = None
    error: str | None = None
    issues: tuple[str, ...] = ()


def _split_thought(text: str) -> tuple[str, str, list[str]]:
    """Return (thought, rest after the thought, issues)."""
    open_at, close_at = text.find("<think>"), text.find("</think>")
    if open_at >= 0 and close_at > open_at:
        issues = [] if not text[:open_at].strip() else ["text before <think>"]
        return text[open_at + len("<think>") : close_at].strip(), text[close_at + len("</think>") :], issues
    if close_at >= 0:  # reasoning templates often eat the opening tag
        return text[:close_at].strip(), text[close_at + len("</think>") :], ["missing <think>"]
    action_at = min((i for i in (text.find("<tool_call>"), text.find("<answer>")) if i >= 0), default=len(text))
    if open_at >= 0:
        return text[open_at + len("<think>") : action_at].strip(), text[action_at:], ["unclosed <think>"]
    return text[:action_at].strip(), text[action_at:], ["missing <think>"]


def _tag_body(text: str, tag: str, issues: list[str]) -> str:
    """Body of the first <tag>...</tag>; an unclosed tag runs to the end of the turn."""
    start = text.index(f"<{tag}>") + len(tag) + 2
    end = text.find(f"</{tag}>", start)
    if end < 0:
        issues.append(f"unclosed <{tag}>")
        return text[start:].strip()
    return text[start:end].strip()


def _load_json(raw: str, issues: list[str]) -> Any:
    raw = _CODE_FENCE.sub("", raw.strip())
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        issues.append("repaired tool-call JSON")
        return json_repair.loads(raw)


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "array": list,
    "object": dict,
    "boolean": bool,
    "integer": int,
    "number": (int, float),
}


def _matches(value: Any, schema: Mapping[str, Any]) -> bool:
    types = schema.get("type")
    if types is None:
        return True
    names = [types] if isinstance(types, str) else list(types)
    for name in names:
        expected = _JSON_TYPES.get(name)
        if expected is None or not isinstance(value, expected) or (name != "boolean" and isinstance(value, bool)):
            continue
        if name == "array" and "items" in schema:
            return all(_matches(item, schema["items"]) for item in value)
        return True
    return False


def validate_arguments(
    arguments: Mapping[str, Any], schema: Mapping[str, Any], issues: list[str]
) -> tuple[dict[str, Any] | None, str | None]:
    """Check arguments against a tool's JSON schema; returns (arguments to use, error detail).

    A string where an array of strings is expected is wrapped in a list (WebDancer's `visit` accepts either);
    unknown arguments are dropped with an issue rather than failing the call.
    """
    properties: Mapping[str, Any] = schema.get("properties", {})
    missing = [name for name in schema.get("required", []) if name not in arguments]
    if missing:
        return None, "missing required argument(s) " + ", ".join(repr(name) for name in missing)
    cleaned: dict[str, Any] = {}
    for name, value in arguments.items():
        if name not in properties:
            issues.append(f"unknown argument {name!r} dropped")
            continue
        spec = properties[name]
        if not _matches(value, spec) and spec.get("type") == "array" and _matches([value], spec):
            issues.append(f"argument {name!r} wrapped in a list")
            value = [value]
        if not _matches(value, spec):
            return None, f"argument {name!r} must be of type {spec.get('type')}, got {type(value).__name__}"
        cleaned[name] = value
    return cleaned, None


def _parse_tool_call(
    text: str, body: str, thought: str, tool_schemas: Mapping[str, Mapping[str, Any]], issues: list[str]
) -> ParsedTurn:
    call = _load_json(body, issues)
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return ParsedTurn(text, thought, "invalid", error=INVALID_TOOL_CALL_TEXT, issues=tuple(issues))
    name = call["name"]
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):  # OpenAI-style arguments serialised as a JSON string
        arguments = _load_json(arguments, issues) if arguments.strip() else {}
    if not isinstance(arguments, dict):
        return ParsedTurn(text, thought, "invalid", tool_name=name, error=INVALID_TOOL_CALL_TEXT, issues=tuple(issues))
    if name not in tool_schemas:
        error = UNKNOWN_TOOL_TEXT.format(name=name)
        return ParsedTurn(
            text, thought, "invalid", tool_name=name, arguments=arguments, error=error, issues=tuple(issues)
        )
    schema = tool_schemas[name]
    cleaned, detail = validate_arguments(arguments, schema, issues)
    if cleaned is None:
        error = INVALID_ARGUMENTS_TEXT.format(name=name, detail=detail, schema=json.dumps(schema, ensure_ascii=False))
        return ParsedTurn(
            text, thought, "invalid", tool_name=name, arguments=arguments, error=error, issues=tuple(issues)
        )
    return ParsedTurn(text, thought, "tool_call", tool_name=name, arguments=cleaned, issues=tuple(issues))


def parse_turn(raw: str, tool_schemas: Mapping[str, Mapping[str, Any]]) -> ParsedTurn:
    """Parse one assistant completion against the tools' parameter schemas (name -> JSON schema)."""
    issues: list[str] = []
    observation_at = raw.find(OBSERVATION_TAG)
    if observation_at >= 0:  # the stop sequence failed and the model began inventing the observation
        issues.append("text after the tool call was cut at <tool_response>")
        raw = raw[:observation_at]
    text = raw.strip()
    if not text:
        return ParsedTurn(text, "", "empty", issues=tuple(issues))
    thought, rest, thought_issues = _split_thought(text)
    issues.extend(thought_issues)
    call_at, answer_at = rest.find("<tool_call>"), rest.find("<answer>")
    if call_at < 0 and answer_at < 0:
        return ParsedTurn(text, thought, "invalid", error=MISSING_ACTION_TEXT, issues=tuple(issues))
    if call_at >= 0 and (answer_at < 0 or call_at < answer_at):
        calls = rest.count("<tool_call>")
        if calls > 1:
            issues.append(f"{calls} tool calls in one turn; only the first was run")
        if answer_at >= 0:
            issues.append("an <answer> after the tool call was ignored")
        return _parse_tool_call(text, _tag_body(rest, "tool_call", issues), thought, tool_schemas, issues)
    if call_at >= 0:
        issues.append("a <tool_call> after the answer was ignored")
    answer = _tag_body(rest, "answer", issues)
    return ParsedTurn(text, thought, "answer", answer=answer, issues=tuple(issues))
