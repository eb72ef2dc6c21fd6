"""A GBNF grammar for one assistant turn of WebDancer's format, built from the tools' JSON schemas.

A teacher sampled under this grammar can only write what `parse_turn` reads as a clean, well-formed turn:

    <think>\\n{thought}\\n</think>\\n<tool_call>\\n{"name": "search", "arguments": {"query": ["..."]}}\\n</tool_call>
    <think>\\n{thought}\\n</think>\\n<answer>\\n{answer}\\n</answer>

with exactly one tool call whose arguments follow that tool's schema (required arguments in schema order, JSON
laid out as in WebDancer's released trajectories), or a non-empty answer. No free text may hold `<`, so a thought
cannot open a tag early, and every free text has a length bound (`TurnLimits`), so a turn always ends: past a
bound the grammar leaves the model nothing but the closing text. Choose bounds that fit in `max_tokens` (a token
is at least one character, about four in English prose) so that the token limit does not cut a turn first.

The grammar is llama.cpp's GBNF; vLLM's structured outputs (xgrammar backend) read the same text, `{m,n}`
repetition included. It is rebuilt from the schemas, so a new tool changes it; `TOOL_ARGUMENT_HINTS` adds what
WebDancer's tools accept beyond the schemas the prompt declares (those texts are fixed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webdancer_dagster.web.search import MAX_QUERIES

# What the tools check beyond the prompt's schemas: 1..3 search queries, visit URLs that are http(s) URLs.
TOOL_ARGUMENT_HINTS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
    "search": {"query": {"minItems": 1, "maxItems": MAX_QUERIES}},
    "visit": {"url": {"minItems": 1, "items": {"format": "uri"}}},
}

# Character classes. Free text never holds `<` (no early tags, no `<tool_response>`); JSON strings hold no raw
# control characters, `"` or `\` (escapes aside) and no `<`; a URL holds no space, quote or angle bracket.
_TEXT_START = r"[^< \t\n\r]"
_TEXT_CHAR = r"[^<]"
_STRING_START = r'[^"\\<\x00-\x20]'
_STRING_CHAR = r'[^"\\<\x00-\x1f] | "\\" ["\\/bfnrt]'
_URL_CHAR = r'[^"\\<>\x00-\x20]'


class TurnLimits(BaseModel):
    """Length bounds of a constrained turn, in characters (a token is at least one character)."""

    model_config = ConfigDict(frozen=True)

    max_thought_chars: int = Field(800, ge=1, description="the thought between <think> and </think>")
    max_answer_chars: int = Field(300, ge=1, description="the text between <answer> and </answer>")
    max_string_chars: int = Field(200, ge=1, description="each string argument (a query, a URL, a goal)")
    max_array_items: int = Field(3, ge=1, description="items of an array argument whose schema sets no maxItems")


def _literal(text: str) -> str:
    """A GBNF string literal (its escapes are JSON's: \\n, \\", \\\\, \\uXXXX)."""
    return json.dumps(text, ensure_ascii=False)


def _repeat(item: str, at_most: int) -> str:
    """`item` 0..at_most times; nothing when at_most is 0."""
    return f"({item}){{0,{at_most}}}" if at_most > 0 else ""


class _Builder:
    def __init__(self, limits: TurnLimits) -> None:
        self.limits = limits
        self.rules: dict[str, str | None] = {}  # in the order rules were reserved: parents before children

    def reserve(self, name: str) -> None:
        if name in self.rules:
            raise ValueError(f"two grammar rules are named {name!r}")
        self.rules[name] = None

    def add(self, name: str, body: str) -> str:
        if name not in self.rules:
            self.reserve(name)
        self.rules[name] = body
        return name

    def text(self) -> str:
        return "".join(f"{name} ::= {body}\n" for name, body in self.rules.items())

    def value(self, name: str, schema: Mapping[str, Any]) -> str:
        """A rule for one JSON value following `schema`; returns the rule's name."""
        self.reserve(name)
        if "enum" in schema:
            choices = [_literal(json.dumps(choice, ensure_ascii=False)) for choice in schema["enum"]]
            if not choices:
                raise ValueError(f"{name}: an empty enum admits no value")
            return self.add(name, " | ".join(choices))
        types = schema.get("type")
        if types is None:
            raise ValueError(f"{name}: a grammar needs a `type` in every schema, got {dict(schema)}")
        if isinstance(types, list):
            options = [self.value(f"{name}-{kind}", {**schema, "type": kind}) for kind in types]
            return self.add(name, " | ".join(options))
        if types == "string":
            return self.add(name, self._string(schema))
        if types == "integer":
            return self.add(name, '"-"? [0-9]{1,15}')
        if types == "number":
            return self.add(name, '"-"? [0-9]{1,15} ("." [0-9]{1,15})?')
        if types == "boolean":
            return self.add(name, '"true" | "false"')
        if types == "array":
            return self.add(name, self._array(name, schema))
        if types == "object":
            return self.add(name, self._object(name, schema))
        raise ValueError(f"{name}: no grammar for JSON type {types!r}")

    def _string(self, schema: Mapping[str, Any]) -> str:
        longest = min(int(schema.get("maxLength", self.limits.max_string_chars)), self.limits.max_string_chars)
        if schema.get("format") == "uri":  # an http(s) URL: a host name, an optional port, path and query
            host = '"http" "s"? "://" [A-Za-z0-9] [A-Za-z0-9.-]{0,62} (":" [0-9]{1,5})?'
            return f'"\\"" {host} ([/?#] {_repeat(_URL_CHAR, longest)})? "\\""'
        if longest <= 1:
            return f'"\\"" {_STRING_START} "\\""'
        return f'"\\"" {_STRING_START} {_repeat(_STRING_CHAR, longest - 1)} "\\""'

    def _array(self, name: str, schema: Mapping[str, Any]) -> str:
        item = self.value(f"{name}-item", schema.get("items", {"type": "string"}))
        fewest = max(1, int(schema.get("minItems", 1)))
        most = int(schema.get("maxItems", self.limits.max_array_items))
        if most < fewest:
            raise ValueError(f"{name}: maxItems {most} < minItems {fewest}")
        required = " ".join([item] + [f'", " {item}'] * (fewest - 1))
        optional = f' (", " {item}){{0,{most - fewest}}}' if most > fewest else ""
        return f'"[" {required}{optional} "]"'

    def _object(self, name: str, schema: Mapping[str, Any]) -> str:
        """Required properties, in the order `properties` lists them; optional ones are never written."""
        properties: Mapping[str, Any] = schema.get("properties", {})
        required = [key for key in properties if key in schema.get("required", ())]
        missing = [key for key in schema.get("required", ()) if key not in properties]
        if missing:
            raise ValueError(f"{name}: required properties without a schema: {missing}")
        parts = []
        for position, key in enumerate(required):
            rule = self.value(_rule_name(name, key), properties[key])
            parts.append(_literal(("" if position == 0 else ", ") + json.dumps(key, ensure_ascii=False) + ": "))
            parts.append(rule)
        return " ".join(['"{"', *parts, '"}"'])


def _rule_name(*parts: str) -> str:
    """GBNF rule names are letters, digits and dashes."""
    name = "-".join(re.sub(r"[^A-Za-z0-9]+", "-", part).strip("-").lower() for part in parts)
    return name or "x"


def _merge(schema: Mapping[str, Any], hints: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(schema)
    for key, value in hints.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, Mapping) else value
    return merged


def with_hints(
    tool_schemas: Mapping[str, Mapping[str, Any]], hints: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """The tools' parameter schemas with per-argument keywords from `hints` merged in (unknown names skipped)."""
    merged: dict[str, dict[str, Any]] = {}
    for tool, schema in tool_schemas.items():
        properties = dict(schema.get("properties", {}))
        for argument, extra in hints.get(tool, {}).items():
            if argument in properties:
                properties[argument] = _merge(properties[argument], extra)
        merged[tool] = {**schema, "properties": properties}
    return merged


def turn_grammar(
    tool_schemas: Mapping[str, Mapping[str, Any]],
    limits: TurnLimits | None = None,
    *,
    hints: Mapping[str, Mapping[str, Mapping[str, Any]]] = TOOL_ARGUMENT_HINTS,
) -> str:
    """GBNF for one assistant turn: a thought, then one call of one of `tool_schemas` (name -> parameters schema)
    or an answer. With no tools the turn must answer (the reply to the forced-answer request)."""
    limits = limits or TurnLimits()
    builder = _Builder(limits)
    builder.add("root", "think action")
    builder.add("think", '"<think>\\n" thought "\\n</think>\\n"')
    builder.add("thought", f"{_TEXT_START} {_repeat(_TEXT_CHAR, limits.max_thought_chars - 1)}".strip())
    builder.add("action", "tool-call | answer" if tool_schemas else "answer")
    builder.add("answer", '"<answer>\\n" answer-text "\\n</answer>"')
    builder.add("answer-text", f"{_TEXT_START} {_repeat(_TEXT_CHAR, limits.max_answer_chars - 1)}".strip())
    if not tool_schemas:
        return builder.text()
    builder.reserve("tool-call")
    calls = []
    for tool, schema in with_hints(tool_schemas, hints).items():
        if schema.get("type", "object") != "object":
            raise ValueError(f"tool {tool!r}: parameters must be a JSON object schema")
        call = _rule_name("call", tool)
        builder.reserve(call)
        arguments = builder.value(_rule_name(tool, "arguments"), {**schema, "type": "object"})
        prefix = _literal(f'{{"name": {json.dumps(tool, ensure_ascii=False)}, "arguments": ')
        calls.append(builder.add(call, f'{prefix} {arguments} "}}"'))
    builder.add("tool-call", f'"<tool_call>\\n" ({" | ".join(calls)}) "\\n</tool_call>"')
    return builder.text()
