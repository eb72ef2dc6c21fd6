"""The project's YAML config files (profiles, `evaluation.yaml`, `sites.yaml`), read so that every mistake names the
file and line.

`read_yaml` keeps the line of every key and list item, so a problem found later (an unknown op, a wrong type, a
bad entry) can still point at `file:line`. PyYAML keeps the last of two equal keys without a word; here a
duplicate key is an error, since the first one would be silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Location = tuple[str | int, ...]  # mapping keys (str) and list indices (int) from the document's root
Parsed = TypeVar("Parsed", bound=BaseModel)


class ConfigFileError(ValueError):
    """A config or data file that cannot be used as it is; the message names the file (and line where known).

    `webdancer` prints the message and exits with status 2 instead of a traceback.
    """


@dataclasses.dataclass(frozen=True)
class YamlDocument:
    """A parsed YAML file and the 1-based line of each key and list item."""

    path: Path
    data: Any
    lines: Mapping[Location, int]

    def line(self, *location: str | int) -> int | None:
        """The line of `location`, or of the deepest part of it the file has (a missing key: its parent's line)."""
        parts = tuple(part if isinstance(part, int) else str(part) for part in location)
        for end in range(len(parts), -1, -1):
            if parts[:end] in self.lines:
                return self.lines[parts[:end]]
        return None

    def at(self, *location: str | int) -> str:
        """`path:line` of `location` (no location: where the document starts; just the path for an empty file)."""
        line = self.line(*location)
        return f"{self.path}:{line}" if line is not None else str(self.path)


def read_yaml(path: Path, what: str = "YAML file", error: type[ConfigFileError] = ConfigFileError) -> YamlDocument:
    """Parse one YAML file (UTF-8); raises `error` naming the file and line when it cannot be read or parsed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as problem:
        raise error(f"{path}: cannot read this {what} ({problem.strerror or problem})") from None
    text = decode_utf8(path, raw, error)
    loader = yaml.SafeLoader(text)
    lines: dict[Location, int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            _index(path, node, (), lines, error, frozenset())  # before construction, which inlines `<<` merges
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as problem:
        mark = problem.problem_mark or problem.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        reason = " ".join(part for part in (problem.context, problem.problem) if part)
        raise error(f"{where}: not valid YAML ({reason})") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    return YamlDocument(path, data, lines)


def read_entries_file(
    path: Path, what: str, error: type[ConfigFileError], schema: type[Parsed], sections: str
) -> tuple[YamlDocument, Parsed]:
    """A YAML file of named entries (`evaluation.yaml`, `sites.yaml`) checked against `schema`; every problem is
    raised as `error`, one `file:line: where (entry name): problem` a line. `sections` names the top-level keys."""
    document = read_yaml(path, what, error)
    raw = {} if document.data is None else document.data
    if not isinstance(raw, dict):
        raise error(f"{document.at()}: expected a mapping with {sections}, got {type(raw).__name__}")
    try:
        return document, schema.model_validate(raw)
    except ValidationError as problem:
        raise error(_describe(problem, raw, document)) from None


def _describe(error: ValidationError, raw: Mapping[str, Any], document: YamlDocument) -> str:
    problems = []
    for item in error.errors():
        location = tuple(item["loc"])
        name = ""
        if len(location) >= 2 and isinstance(location[1], int):
            entries = raw.get(location[0]) or []
            if location[1] < len(entries) and isinstance(entries[location[1]], dict):
                name = f" ({entries[location[1]].get('name', '?')})"
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"{document.at(*location)}: {dotted(location)}{name}: {message}")
    return "\n".join(problems)


def decode_utf8(path: Path, raw: bytes, error: type[ConfigFileError] = ConfigFileError) -> str:
    """`raw` as text (a UTF-8 byte-order mark is dropped); raises `error` naming the file, line and byte if it is
    not UTF-8."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as problem:
        line = raw.count(b"\n", 0, problem.start) + 1
        raise error(
            f"{path}: line {line}: not UTF-8 (byte 0x{raw[problem.start]:02x} at offset {problem.start}); "
            "save the file as UTF-8"
        ) from None


def dotted(location: Location) -> str:
    """`ops.crawl_pages.config.max_pages`, `benchmarks[0].questions`."""
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location)
    return text.lstrip(".")


def _index(
    path: Path, node: yaml.Node, location: Location, lines: dict[Location, int], error: type, open_nodes: frozenset[int]
) -> None:
    if id(node) in open_nodes:  # an alias of an enclosing node: the data is recursive, its lines are indexed
        return
    open_nodes = open_nodes | {id(node)}
    lines.setdefault(location, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else "<complex key>"
            here = (*location, key)
            if here in lines:
                raise error(
                    f"{path}:{key_node.start_mark.line + 1}: duplicate key {dotted(here)} (first on line "
                    f"{lines[here]}); YAML would silently keep only the last one"
                )
            lines[here] = key_node.start_mark.line + 1
            _index(path, value_node, here, lines, error, open_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            here = (*location, index)
            lines[here] = item.start_mark.line + 1
            _index(path, item, here, lines, error, open_nodes)
