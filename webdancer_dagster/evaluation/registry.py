"""What `benchmark_scores` is partitioned by: the built-in models and benchmarks plus those declared in one YAML file.

A model or benchmark is added by config alone: an entry in `evaluation.yaml` (the repository's, or the file named
by `$WEBDANCER_EVALUATION`) becomes a partition the next time the definitions load ("Reload definitions" in the
UI). Models are `base` (the policy endpoint as configured), `sft` and `rl` (the recorded checkpoints, served
locally) and any OpenAI-compatible endpoint; an endpoint's API key is named by its environment variable and read
only when a request is sent. A benchmark is a JSONL of `{question, answer}` and, optionally, a corpus (a JSON list
of `{title, text}`) that becomes its own benchmark-flagged site on the local web, which synthesis never reads.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from webdancer_dagster.config_files import ConfigFileError, YamlDocument, dotted, read_entries_file
from webdancer_dagster.evaluation.benchmarks import BENCHMARKS, BenchmarkSource
from webdancer_dagster.paths import REPO_ROOT

REGISTRY_ENV = "WEBDANCER_EVALUATION"
DEFAULT_REGISTRY_PATH = REPO_ROOT / "evaluation.yaml"
# A partition key and a site name: it becomes `<name>.webdancer.test` and a crawl_pages partition.
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")

ModelKind = Literal["endpoint", "checkpoint", "base"]


class RegistryError(ConfigFileError):
    """The evaluation registry file is malformed; the message names the file, the line and the entry."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One value of the `model` partition dimension and how to reach it."""

    name: str
    kind: ModelKind
    checkpoint_table: str | None = None  # checkpoint: the one-row warehouse table with path and sha256
    base_url: str | None = None  # endpoint: an OpenAI-compatible URL ending in /v1
    model: str | None = None  # endpoint: the model id it serves
    api_key_env: str | None = None  # endpoint: the environment variable that holds its key (never the key)


BUILTIN_MODELS: dict[str, ModelSpec] = {
    "base": ModelSpec("base", "base"),
    "sft": ModelSpec("sft", "checkpoint", checkpoint_table="sft_checkpoint"),
    "rl": ModelSpec("rl", "checkpoint", checkpoint_table="rl_checkpoint"),
}


class _EndpointEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base_url: str = Field(description="OpenAI-compatible URL ending in /v1.")
    model: str = Field(min_length=1, description="The model id the endpoint serves.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the key.")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # A key pasted here would be stored in git and in every run's config; only a variable name is accepted.
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError("api_key_env is the *name* of an environment variable (e.g. OPENAI_API_KEY), not a key")
        return value


class _BenchmarkEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    questions: str = Field(description="JSONL of {question, answer} (answer: text or list; id optional).")
    corpus: str | None = Field(default=None, description="JSON list of {title, text}: the benchmark's own site.")
    description: str = ""

    @model_validator(mode="after")
    def _suffixes(self) -> _BenchmarkEntry:
        if not self.questions.endswith(".jsonl"):
            raise ValueError(f"questions must be a .jsonl file, got {self.questions!r}")
        return self


class _RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[_EndpointEntry] = Field(default_factory=list)
    benchmarks: list[_BenchmarkEntry] = Field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Registry:
    """Every model and benchmark `benchmark_scores` knows, built-ins first, in a stable order."""

    models: Mapping[str, ModelSpec]
    benchmarks: Mapping[str, BenchmarkSource]
    source: Path | None = None

    @property
    def corpus_benchmarks(self) -> dict[str, BenchmarkSource]:
        """Declared benchmarks that bring a corpus: each becomes its own site."""
        return {name: source for name, source in self.benchmarks.items() if source.corpus is not None}


def builtin_registry() -> Registry:
    return Registry(models=dict(BUILTIN_MODELS), benchmarks=dict(BENCHMARKS))


def load_registry(path: Path | None) -> Registry:
    """Built-ins plus the entries of `path` (None or a missing default file: built-ins only).

    Relative file paths in the YAML are relative to the YAML's folder; names must be unique partition keys. Only
    the files' existence is checked here (the definitions load this at import); `materialize` reads them before
    its first run (`benchmarks.check_benchmark_files`).
    """
    if path is None:
        return builtin_registry()
    document, parsed = read_entries_file(
        Path(path), "evaluation registry file", RegistryError, _RegistryFile, "`models:` and `benchmarks:`"
    )

    models: dict[str, ModelSpec] = dict(BUILTIN_MODELS)
    for index, entry in enumerate(parsed.models):
        _check_name(document, ("models", index), entry.name, models)
        models[entry.name] = ModelSpec(
            entry.name, "endpoint", base_url=entry.base_url, model=entry.model, api_key_env=entry.api_key_env
        )
    benchmarks: dict[str, BenchmarkSource] = dict(BENCHMARKS)
    for index, entry in enumerate(parsed.benchmarks):
        where = ("benchmarks", index)
        _check_name(document, where, entry.name, benchmarks)
        questions = _existing(document, (*where, "questions"), entry.questions)
        corpus = _existing(document, (*where, "corpus"), entry.corpus) if entry.corpus else None
        benchmarks[entry.name] = BenchmarkSource(
            str(questions), "jsonl", offline=corpus is not None, corpus=corpus, description=entry.description
        )
    return Registry(models=models, benchmarks=benchmarks, source=document.path)


def registry_path(environ: Mapping[str, str] = os.environ) -> Path | None:
    """`$WEBDANCER_EVALUATION` if set (it must exist), else the repository's `evaluation.yaml` if present."""
    if environ.get(REGISTRY_ENV):
        return Path(environ[REGISTRY_ENV]).expanduser()
    return DEFAULT_REGISTRY_PATH if DEFAULT_REGISTRY_PATH.is_file() else None


def default_registry() -> Registry:
    """The registry the definitions are built from (`assets.registries.REGISTRY` holds the one read at import)."""
    return load_registry(registry_path())


def _check_name(document: YamlDocument, where: tuple[str, int], name: str, taken: Mapping[str, Any]) -> None:
    prefix = f"{document.at(*where, 'name')}: {dotted(where)}"
    if not _NAME.match(name):
        raise RegistryError(
            f"{prefix}: name {name!r} must be lowercase letters, digits, '-' or '_' (it is a partition key)"
        )
    if name in taken:
        raise RegistryError(f"{prefix}: name {name!r} is already taken (built-in or declared twice)")


def _existing(document: YamlDocument, where: tuple[str, int, str], file: str) -> Path:
    resolved = (document.path.parent / Path(file).expanduser()).resolve()
    if not resolved.is_file():
        raise RegistryError(f"{document.at(*where)}: {dotted(where[:2])}: no such file {file!r} (looked at {resolved})")
    return resolved
