"""One OpenAI-compatible chat endpoint per role, with retries, a concurrency limit and a persistent cache.

Every stage that talks to a model (QA synthesis, trajectory sampling, the `visit` summarizer, the judge, RL
rollouts) goes through `LLMEndpoint.chat`, so an interrupted run resumes from the SQLite cache without paying
twice, reruns are reproducible, and token usage is counted in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)

EndpointRole = Literal["teacher_short", "teacher_long", "judge", "summarizer", "policy"]
# What serves an endpoint, as far as request fields differ: llama.cpp's server takes a GBNF `grammar`, vLLM takes
# `structured_outputs: {grammar}`; `other` (OpenAI, unknown servers) gets no grammar at all.
ServerKind = Literal["llama_cpp", "vllm", "other"]
GRAMMAR_SERVER_KINDS: tuple[ServerKind, ...] = ("llama_cpp", "vllm")
NO_API_KEY = "EMPTY"  # local servers ignore the key, but the openai client insists on one
LLM_CACHE_FILE = "llm_cache.sqlite"  # the response cache's file name under the WebDancer home

# Statuses worth retrying: request timeout, conflict, rate limit and every server-side failure.
RETRYABLE_STATUSES = frozenset({408, 409, 429})


class LLMEndpointError(RuntimeError):
    """The endpoint could not produce a completion; the message names the role and the URL."""


class LLMRequestRejected(LLMEndpointError):
    """The endpoint answered with a client error (4xx) that retrying cannot fix, e.g. a prompt too long."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class MalformedResponseError(RuntimeError):
    """The HTTP call succeeded but the body is not a chat completion (garbage, HTML error page, no choices)."""


class SamplingParams(BaseModel):
    """Sampling settings sent with every request; part of the cache key."""

    model_config = ConfigDict(frozen=True)

    temperature: float = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(1024, ge=1)
    stop: tuple[str, ...] = ()
    seed: int | None = Field(None, description="base seed; request seed = seed + sample_index")
    presence_penalty: float | None = None


class EndpointConfig(BaseModel):
    """Where one role's model lives and how to call it. The API key itself is never stored, only its variable."""

    model_config = ConfigDict(frozen=True)

    role: EndpointRole
    base_url: str
    model: str
    api_key_env: str | None = None
    sampling: SamplingParams = SamplingParams()
    timeout_s: float = Field(120.0, gt=0, description="one try's wait for an answer")
    max_attempts: int = Field(3, ge=1)
    deadline_s: float = Field(
        300.0, gt=0, description="one request's total time from its first try: later tries and the waits between them"
    )
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_concurrency: int = Field(4, ge=1)
    cache_path: Path | None = None
    server_kind: ServerKind = Field("other", description="what serves base_url; decides how a grammar is sent")
    served_by: str | None = Field(
        None,
        description="what answers at base_url, for the response cache, when the URL cannot say: the model's content "
        "hash for a server this project starts (its port changes every run); empty: the URL names the endpoint",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def describe(self) -> str:
        return f"{self.role} endpoint {self.base_url}"

    def cache_identity(self) -> str:
        """Who answers, for the cache key: two endpoints that share a model id must never share answers. A server
        of ours is named by its model's content, so a restart on another port still hits the cache; any other
        endpoint by its URL (scheme, host, port, path), which the user wrote and which stays put. Never the key."""
        return self.served_by or self.base_url


@dataclasses.dataclass(frozen=True)
class ChatResult:
    """One completion. `cached` is true when it came from the response cache instead of the server."""

    content: str
    reasoning_content: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str
    cached: bool = False


@dataclasses.dataclass
class TokenUsage:
    """Running totals for one endpoint, safe to update from many threads."""

    requests: int = 0
    cache_hits: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, result: ChatResult) -> None:
        with self._lock:
            if result.cached:
                self.cache_hits += 1
                self.cached_prompt_tokens += result.prompt_tokens
                self.cached_completion_tokens += result.completion_tokens
            else:
                self.requests += 1
                self.prompt_tokens += result.prompt_tokens
                self.completion_tokens += result.completion_tokens

    def record_retry(self) -> None:
        with self._lock:
            self.retries += 1

    def as_metadata(self) -> dict[str, int]:
        """Plain counters for asset metadata and logs."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}


class ResponseCache:
    """Completions keyed by request hash in a SQLite file in WAL mode.

    SQLite rather than DuckDB because Dagster runs steps in several processes at once and DuckDB allows one
    writer process; SQLite serialises concurrent writers with a busy timeout. The first stored response for a
    key wins, so concurrent duplicates stay reproducible.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._connection() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                "request TEXT NOT NULL, response TEXT NOT NULL, created_at REAL NOT NULL)"
            )

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._connection().execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, model: str, request: Mapping[str, Any], response: Mapping[str, Any]) -> None:
        with self._connection() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO responses (key, model, request, response, created_at) VALUES (?, ?, ?, ?, ?)",
                (key, model, json.dumps(request, ensure_ascii=False), json.dumps(response), time.time()),
            )

    def __len__(self) -> int:
        return self._connection().execute("SELECT count(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def request_key(request: Mapping[str, Any]) -> str:
    """Stable hash of everything that determines a completion; callers put the endpoint's cache identity in it."""
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# Request fields outside OpenAI's API: the openai client sends them through `extra_body`.
EXTRA_BODY_FIELDS = frozenset({"grammar", "structured_outputs"})


def grammar_fields(config: EndpointConfig, grammar: str) -> dict[str, Any]:
    """The request fields that carry a GBNF grammar to this endpoint's server.

    llama-cpp-python's server: `grammar` (its chat request model's field). vLLM: `structured_outputs.grammar`
    (xgrammar reads GBNF; older vLLM releases took `guided_grammar`, removed in 0.12). Other servers have no
    such field, and sending an unconstrained request in its place would pass it off as constrained: refused."""
    if config.server_kind == "llama_cpp":
        return {"grammar": grammar}
    if config.server_kind == "vllm":
        return {"structured_outputs": {"grammar": grammar}}
    raise ValueError(
        f"{config.describe()} cannot take a grammar: its server kind is {config.server_kind!r}, "
        f"not one of {', '.join(GRAMMAR_SERVER_KINDS)}"
    )


def _is_retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIConnectionError | MalformedResponseError):  # includes APITimeoutError
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code >= 500 or error.status_code in RETRYABLE_STATUSES
    return False


def _failure_message(config: EndpointConfig, attempts: int, error: BaseException) -> str:
    import openai

    tries = "try" if attempts == 1 else f"{attempts} tries"
    if attempts < config.max_attempts:  # stopped by the deadline, not by the number of tries
        what = f"gave no answer within its {config.deadline_s:g}s deadline ({tries})"
    elif isinstance(error, openai.APITimeoutError):
        what = f"timed out ({config.timeout_s:g}s) on all {attempts} tries"
    elif isinstance(error, openai.APIConnectionError):
        what = f"unreachable after {attempts} tries"
    elif isinstance(error, openai.APIStatusError):
        what = f"failed with HTTP {error.status_code} after {attempts} tries"
    else:
        what = f"returned malformed responses on all {attempts} tries"
    return f"{config.describe()} {what}: {error}"


class ChatModel(Protocol):
    """What the agent needs of a model: `LLMEndpoint` over HTTP, or the trainer's own weights during RL rollouts."""

    config: EndpointConfig

    @property
    def max_concurrency(self) -> int: ...

    def chat(
        self, messages: Sequence[Mapping[str, str]], *, sampling: SamplingParams | None = None, sample_index: int = 0
    ) -> ChatResult: ...


class LLMEndpoint:
    """A chat-completions client for one role. Thread-safe; share one per role across threads."""

    def __init__(self, config: EndpointConfig, cache: ResponseCache | None = None) -> None:
        import openai  # its types take seconds to import: loaded by the first client, not with the definitions

        self.config = config
        api_key = NO_API_KEY
        if config.api_key_env:
            api_key = os.environ.get(config.api_key_env, "")
            if not api_key:
                raise LLMEndpointError(
                    f"{config.describe()} needs an API key in ${config.api_key_env}, which is not set"
                )
        self._client = openai.OpenAI(base_url=config.base_url, api_key=api_key, timeout=config.timeout_s, max_retries=0)
        if cache is None and config.cache_path is not None:
            cache = ResponseCache(config.cache_path)
        self.cache = cache
        self.usage = TokenUsage()
        self._slots = threading.BoundedSemaphore(config.max_concurrency)

    def __repr__(self) -> str:
        return f"LLMEndpoint(role={self.config.role!r}, base_url={self.config.base_url!r}, model={self.config.model!r})"

    @property
    def role(self) -> str:
        return self.config.role

    @property
    def max_concurrency(self) -> int:
        return self.config.max_concurrency

    @property
    def supports_grammar(self) -> bool:
        """Whether `chat(..., grammar=...)` can constrain this endpoint (its server kind is known to take one)."""
        return self.config.server_kind in GRAMMAR_SERVER_KINDS

    def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        sampling: SamplingParams | None = None,
        sample_index: int = 0,
        response_format: Mapping[str, Any] | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        """Return one completion for `messages`, from the cache when this exact request was answered before.

        `sample_index` tells apart the k samples rejection sampling draws for the same prompt: each is
        cached on its own, and with a base seed it also shifts the server-side seed. `grammar` (GBNF) constrains
        the reply on llama.cpp and vLLM servers; it is part of the request, so of the cache key.
        """
        sampling = sampling or self.config.sampling
        request = self._request_body(messages, sampling, sample_index, response_format, grammar)
        key = request_key({"request": request, "sample_index": sample_index, "endpoint": self.config.cache_identity()})
        if self.cache is not None:
            stored = self.cache.get(key)
            if stored is not None:
                result = ChatResult(**stored, cached=True)
                self.usage.record(result)
                return result
        result = self._call_with_retries(request)
        if self.cache is not None:
            stored = dataclasses.asdict(result)
            del stored["cached"]
            self.cache.put(key, self.config.model, request, stored)
        self.usage.record(result)
        return result

    def close(self) -> None:
        """Release the HTTP connections and the cache's database handles."""
        self._client.close()
        if self.cache is not None:
            self.cache.close()

    def _request_body(
        self,
        messages: Sequence[Mapping[str, str]],
        sampling: SamplingParams,
        sample_index: int,
        response_format: Mapping[str, Any] | None,
        grammar: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            body["seed"] = sampling.seed + sample_index
        if sampling.presence_penalty is not None:
            body["presence_penalty"] = sampling.presence_penalty
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if grammar is not None:
            body.update(grammar_fields(self.config, grammar))
        return body

    def _call_with_retries(self, request: dict[str, Any]) -> ChatResult:
        """Try until an answer, a final error, `max_attempts` tries or the deadline, whichever comes first.

        The deadline runs from the first try's send, not from the call: waiting behind this client's own requests
        for a concurrency slot is queueing, not the endpoint's fault. No try outlives the deadline."""
        import openai

        config = self.config
        deadline: list[float] = []  # set when the first try is sent

        def remaining() -> float:
            return deadline[0] - time.monotonic() if deadline else config.deadline_s

        def before_sleep(state: RetryCallState) -> None:
            self.usage.record_retry()
            error = state.outcome.exception() if state.outcome else None
            logger.warning("%s try %d failed (%s); retrying", config.describe(), state.attempt_number, error)

        def call_once() -> ChatResult:
            with self._slots:
                if not deadline:
                    deadline.append(time.monotonic() + config.deadline_s)
                return self._call_once(request, timeout_s=max(0.001, min(config.timeout_s, remaining())))

        backoff = wait_exponential_jitter(initial=config.backoff_initial_s, max=config.backoff_max_s)
        retrying = Retrying(
            # A try that could not start before the deadline is not made: the last error is raised instead.
            stop=stop_after_attempt(config.max_attempts) | (lambda state: remaining() <= state.upcoming_sleep),
            wait=lambda state: max(0.0, min(backoff(state), remaining())),
            retry=retry_if_exception(_is_retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(call_once)
        except openai.APIStatusError as error:
            tries = retrying.statistics["attempt_number"]
            if _is_retryable(error):
                raise LLMEndpointError(_failure_message(config, tries, error)) from error
            raise LLMRequestRejected(
                f"{config.describe()} rejected the request (HTTP {error.status_code}): {error}", error.status_code
            ) from error
        except (openai.APIConnectionError, MalformedResponseError) as error:
            tries = retrying.statistics["attempt_number"]
            raise LLMEndpointError(_failure_message(config, tries, error)) from error

    def _call_once(self, request: dict[str, Any], timeout_s: float) -> ChatResult:
        started = time.perf_counter()
        standard = {key: value for key, value in request.items() if key not in EXTRA_BODY_FIELDS}
        extra = {key: value for key, value in request.items() if key in EXTRA_BODY_FIELDS}
        try:
            response = self._client.chat.completions.create(**standard, extra_body=extra or None, timeout=timeout_s)
        except ValueError as error:  # a JSON content type whose body does not parse
            raise MalformedResponseError(f"unparseable body: {error}") from error
        return _to_result(response, time.perf_counter() - started)


def _to_result(response: object, latency_s: float) -> ChatResult:
    """Check the body really is a completion: the openai client builds models from any JSON without validating it,
    and returns plain text (or a list) for other bodies."""
    from openai.types.chat import ChatCompletion, ChatCompletionMessage

    if not isinstance(response, ChatCompletion):
        raise MalformedResponseError(f"not a chat completion: {str(response)[:200]!r}")
    choices = response.choices
    if not isinstance(choices, list) or not choices:
        raise MalformedResponseError(f"chat completion without choices: {str(choices)[:200]!r}")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if not isinstance(message, ChatCompletionMessage) or not isinstance(message.content, str | None):
        raise MalformedResponseError(f"chat completion without a message: {str(choice)[:200]!r}")
    extra = message.model_extra or {}
    reasoning = extra.get("reasoning_content") or extra.get("reasoning")
    usage = response.usage
    return ChatResult(
        content=message.content or "",
        reasoning_content=reasoning if isinstance(reasoning, str) and reasoning else None,
        finish_reason=choice.finish_reason if isinstance(choice.finish_reason, str) else None,
        prompt_tokens=_count(getattr(usage, "prompt_tokens", 0)),
        completion_tokens=_count(getattr(usage, "completion_tokens", 0)),
        latency_s=latency_s,
        model=response.model if isinstance(response.model, str) else "",
    )


def _count(value: object) -> int:
    """A token count from the usage block; servers that omit usage count as zero."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
