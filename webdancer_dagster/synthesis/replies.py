"""Model replies that should be JSON, turned into validated pydantic objects or a drop reason.

Teachers (small local models above all) answer with prose around the JSON, code fences, a `<think>` block,
truncated objects, or nothing. Every synthesis and grading step needs the same lenient reading (json-repair)
and the same outcome when it fails: a counted drop with a reason code, never an exception that kills a long run.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Generic, Literal, TypeVar

import json_repair
from pydantic import BaseModel, StringConstraints, ValidationError

from webdancer_dagster.llm.client import LLMEndpoint, LLMRequestRejected
from webdancer_dagster.llm.reasoning import strip_reasoning

Model = TypeVar("Model", bound=BaseModel)
# A reply field that must hold text: whitespace alone fails validation (`wrong_schema`).
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

# How to ask the server for JSON. `object`: OpenAI's JSON mode (OpenAI, vLLM, llama.cpp). `object_with_schema`:
# llama-cpp-python's extension, a grammar built from the schema, which makes even a 135M model emit the right
# keys. `json_schema`: OpenAI structured outputs (OpenAI, vLLM). `none`: plain text (any server).
JsonFormat = Literal["none", "object", "object_with_schema", "json_schema"]
JSON_FORMAT_HELP = "response_format to send: none, object (JSON mode), object_with_schema (llama.cpp), json_schema"
_CODE_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class JsonReply(Generic[Model]):
    """A parsed reply: `value` when it validated, else `reason` (a drop code) and `detail`. `raw` is kept as sent."""

    raw: str
    value: Model | None = None
    reason: str | None = None
    detail: str = ""


def _load(text: str) -> Any:
    fenced = _CODE_FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json_repair.loads(text)


def _blank(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def parse_json_reply(raw: str, model: type[Model]) -> JsonReply[Model]:
    """Read `raw` as one JSON object valid for `model`; reasons: `empty`, `not_json`, `wrong_schema`."""
    text = strip_reasoning(raw)
    if not text:
        return JsonReply(raw, reason="empty", detail="the reply is empty")
    value = _load(text)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]  # a lone object wrapped in a list is still that object
    if isinstance(value, dict):
        if all(_blank(v) for v in value.values()):
            return JsonReply(raw, reason="empty", detail=f"the JSON object has no content: {text[:80]!r}")
        try:
            return JsonReply(raw, value=model.model_validate(value))
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'object'}: {e['msg']}" for e in error.errors())
            return JsonReply(raw, reason="wrong_schema", detail=problems[:500])
    if text in ("null", "[]", '""'):
        return JsonReply(raw, reason="empty", detail=f"the reply is an empty JSON value: {text}")
    return JsonReply(raw, reason="not_json", detail=f"no JSON object in the reply: {text[:120]!r}")


def response_format(
    json_format: JsonFormat, model: type[BaseModel], schema: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The `response_format` request field for `json_format` and the reply's pydantic model.

    `schema` replaces the model's own JSON schema when one request can be constrained further than the model
    says (a server that enforces it then cannot produce a reply the checks would drop for that reason)."""
    if json_format == "none":
        return None
    if json_format == "object":
        return {"type": "json_object"}
    schema = dict(schema) if schema is not None else model.model_json_schema()
    if json_format == "object_with_schema":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema}}


def ask_json(
    endpoint: LLMEndpoint,
    messages: Sequence[Mapping[str, str]],
    model: type[Model],
    *,
    sample_index: int = 0,
    json_format: JsonFormat = "object",
    schema: Mapping[str, Any] | None = None,
) -> JsonReply[Model]:
    """Send `messages` and parse the reply as `model`.

    A request the server rejects for this input (HTTP 4xx, e.g. a prompt over the context size) becomes the
    drop reason `request_rejected`: retrying cannot fix it and one oversized page must not end the run. Any
    other endpoint failure raises, because then every later request would fail too.
    """
    try:
        result = endpoint.chat(
            messages, sample_index=sample_index, response_format=response_format(json_format, model, schema)
        )
    except LLMRequestRejected as error:
        return JsonReply("", reason="request_rejected", detail=str(error)[:500])
    return parse_json_reply(result.content, model)
