"""The model server every LLM role talks to: llama.cpp on this machine, vLLM on a GPU machine, or an external URL.

On this machine there are two llama.cpp servers: llama-cpp-python's (`llama_cpp`, installed with the package; it
answers one request at a time) and llama.cpp's own `llama-server` (`llama_server`, built by
`scripts/build_llama_server.sh` from the same llama.cpp source), which decodes `n_parallel` requests together.
On 2 cores llama.cpp evaluates a batch of 4 tokens in about the time of one, so runs scored in parallel share their
decoding steps (`benchmark_scores.server_parallel`); reading a prompt, already a batch, gains nothing from it.

`ModelServer` owns one server process: it picks a free port on 127.0.0.1, starts the process in its own process
group (so stopping it also stops whatever it forked) and tied to this process's life (kill -9 included), waits
for `GET /v1/models` within a deadline, and stops it with SIGTERM, then SIGKILL after a grace period. In
`external` mode there is no process; the configured `base_url` is used as is. The process writes its output to a
log file whose tail goes into every startup error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from webdancer_dagster.processes import spawn_dying_with_parent
from webdancer_dagster.shared.hashing import file_sha256

logger = logging.getLogger(__name__)

ServerMode = Literal["llama_cpp", "llama_server", "vllm", "external"]
LLAMA_SERVER_ENV = "WEBDANCER_LLAMA_SERVER"
_POLL_INTERVAL_S = 0.2
_LOG_TAIL_CHARS = 2000


class ModelServerError(RuntimeError):
    """The model server could not be started or did not become ready; the message carries its log tail."""


class ModelServerConfig(BaseModel):
    """How to run (or where to find) the OpenAI-compatible server for a model."""

    model_config = ConfigDict(frozen=True)

    mode: ServerMode = "llama_cpp"
    model_path: str | None = Field(
        None, description="llama_cpp: a GGUF file; vllm: a model folder or hub id; unused for external"
    )
    served_model_name: str | None = Field(
        None, description="model id the server reports and requests name; default: the model's file or folder name"
    )
    base_url: str | None = Field(None, description="external mode: the endpoint's URL, ending in /v1")
    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    n_ctx: int = Field(8192, ge=256, description="context window in tokens (vllm: --max-model-len)")
    n_parallel: int = Field(
        1,
        ge=1,
        description="llama_server: slots decoded together, each with n_ctx; vllm: --max-num-seqs; llama_cpp serves "
        "one request at a time whatever this says",
    )
    n_threads: int | None = Field(None, ge=1, description="llama.cpp CPU threads; default: half the cores")
    startup_timeout_s: float = Field(180.0, gt=0)
    stop_timeout_s: float = Field(10.0, gt=0, description="grace period between SIGTERM and SIGKILL")
    extra_args: tuple[str, ...] = Field((), description="appended verbatim to the server command")
    log_path: str | None = Field(None, description="server output file; default: a temporary file")

    @model_validator(mode="after")
    def _check_mode(self) -> ModelServerConfig:
        if self.mode == "external" and not self.base_url:
            raise ValueError("mode='external' needs base_url")
        if self.mode != "external" and not self.model_path:
            raise ValueError(f"mode={self.mode!r} needs model_path")
        return self

    @property
    def model_name(self) -> str:
        """The id requests must name; for external endpoints there is no default."""
        if self.served_model_name:
            return self.served_model_name
        if self.mode == "external":
            raise ValueError("an external endpoint needs served_model_name (the model id it serves)")
        name = Path(str(self.model_path)).name  # not .stem: "Qwen2.5-7B-Instruct" is a hub id, not a file
        return name.removesuffix(".gguf")

    def served_by(self) -> str | None:
        """What answers requests, for the response cache (`EndpointConfig.served_by`): the GGUF file's sha256 for
        llama.cpp; for vLLM a local folder's file names, sizes and modification times (hashing tens of GB per run
        would cost minutes), or the hub id; None for an external endpoint, which its URL names."""
        if self.mode in ("llama_cpp", "llama_server"):
            return f"{self.mode} gguf sha256:{file_sha256(Path(str(self.model_path)))}"
        if self.mode == "vllm":
            folder = Path(str(self.model_path))
            if not folder.is_dir():
                return f"vllm {self.model_path}"
            files = sorted(path for path in folder.rglob("*") if path.is_file())
            stats = [(str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns) for path in files]
            return f"vllm folder {hashlib.sha256(repr(stats).encode()).hexdigest()}"
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def default_threads() -> int:
    """Half the cores, as llama.cpp itself defaults: a thread per hyperthread, or one more than the cores that
    are free, makes every token wait at the barrier for the slowest thread (measured 4-8x slower on 2 busy cores)."""
    return max(1, (os.cpu_count() or 2) // 2)


def llama_cpp_command(config: ModelServerConfig, port: int) -> list[str]:
    """`python -m llama_cpp.server ...` with the flags its argparse CLI (generated from its Settings) accepts."""
    threads = config.n_threads or default_threads()
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(config.model_path),
        "--model_alias", config.model_name,
        "--host", config.host,
        "--port", str(port),
        "--n_ctx", str(config.n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--logits_all", "False",  # the default keeps logits for every prompt token; nothing here needs them
        "--verbose", "False",
        *config.extra_args,
    ]  # fmt: skip


def llama_server_binary() -> str:
    """`$WEBDANCER_LLAMA_SERVER`, else the `llama-server` that scripts/build_llama_server.sh puts next to this
    Python, else whichever is on PATH."""
    if os.environ.get(LLAMA_SERVER_ENV):
        return os.environ[LLAMA_SERVER_ENV]
    beside_python = Path(sys.executable).parent / "llama-server"
    return str(beside_python) if beside_python.is_file() else "llama-server"


def llama_server_command(config: ModelServerConfig, port: int) -> list[str]:
    """llama.cpp's `llama-server` with `n_parallel` slots of `n_ctx` tokens each, decoded together (continuous
    batching). Replies come back verbatim (`--reasoning-format none`): the agent parses its own `<think>`."""
    threads = config.n_threads or default_threads()
    return [
        llama_server_binary(),
        "--model", str(config.model_path),
        "--alias", config.model_name,
        "--host", config.host,
        "--port", str(port),
        "--ctx-size", str(config.n_ctx * config.n_parallel),
        "--parallel", str(config.n_parallel),
        "--no-kv-unified",  # each slot its own n_ctx, as the agent budgets its context
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--fit", "off",  # keep the context asked for
        "--reasoning-format", "none",
        "--no-webui",
        *config.extra_args,
    ]  # fmt: skip


def vllm_command(config: ModelServerConfig, port: int) -> list[str]:
    """`vllm serve ...` for GPU machines (`pip install .[gpu]`); add e.g. `--reasoning-parser` via extra_args."""
    return [
        "vllm", "serve", str(config.model_path),
        "--served-model-name", config.model_name,
        "--host", config.host,
        "--port", str(port),
        "--max-model-len", str(config.n_ctx),
        "--max-num-seqs", str(config.n_parallel),
        *config.extra_args,
    ]  # fmt: skip


def server_command(config: ModelServerConfig, port: int) -> list[str]:
    if config.mode == "llama_cpp":
        return llama_cpp_command(config, port)
    if config.mode == "llama_server":
        return llama_server_command(config, port)
    if config.mode == "vllm":
        return vllm_command(config, port)
    raise ValueError("an external endpoint has no command")


def _log_tail(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _LOG_TAIL_CHARS))
            return handle.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is still alive after `grace_s`."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        logger.warning("model server pid %d ignored SIGTERM for %.0fs; killing it", process.pid, grace_s)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # exited between the timeout and the kill
        process.wait()


class ModelServer:
    """One running model server (or an external endpoint); use as a context manager. Thread-safe."""

    def __init__(self, config: ModelServerConfig) -> None:
        self.config = config
        self._base_url: str | None = None
        self._log_path: Path | None = None
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the model server is not running; call start() first")
        return self._base_url

    @property
    def model(self) -> str:
        return self.config.model_name

    @property
    def running(self) -> bool:
        return self._base_url is not None

    @property
    def alive(self) -> bool:
        """Running and its process has not exited (an external endpoint counts as alive while started)."""
        if self._base_url is None:
            return False
        return self._process is None or self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> ModelServer:
        """Start the server and wait until it lists its models; idempotent while running."""
        with self._lock:
            if self._base_url is not None:
                return self
            if self.config.mode == "external":
                self._base_url = str(self.config.base_url).rstrip("/")
                return self
            self._launch()
        return self

    def _launch(self) -> None:
        config = self.config
        port = config.port or free_port(config.host)
        command = server_command(config, port)
        if shutil.which(command[0]) is None:
            how = "; build it with `make llama-server`" if config.mode == "llama_server" else ""
            raise ModelServerError(f"cannot start the {config.mode} server: {command[0]!r} is not installed{how}")
        if config.log_path:
            log_path = Path(config.log_path)
            log_path.parent.mkdir(parents=True, exist_ok=True)
        else:  # a temporary file, removed when the server stops (its tail is in every startup error)
            handle, name = tempfile.mkstemp(prefix=f"{config.mode}-server-", suffix=".log")
            os.close(handle)
            log_path = Path(name)
        base_url = f"http://{config.host}:{port}/v1"
        logger.info("starting %s server for %s on %s (log %s)", config.mode, config.model_path, base_url, log_path)
        with log_path.open("ab") as log:
            # Its own session, so stopping it stops whatever it forked; and it dies with this process, so kill -9
            # of a run leaves no server listening.
            process = spawn_dying_with_parent(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        # Stops the server if the owner forgets to, including at interpreter exit.
        finalizer = weakref.finalize(self, stop_process_group, process, config.stop_timeout_s)
        try:
            wait_until_ready(base_url, config.model_name, config.startup_timeout_s, process, log_path)
        except BaseException:
            finalizer()
            if not config.log_path:
                log_path.unlink(missing_ok=True)
            raise
        self._finalizer, self._log_path, self._base_url = finalizer, log_path, base_url
        self._process = process
        logger.info("%s server ready on %s (pid %d)", config.mode, base_url, process.pid)

    def stop(self) -> None:
        """Stop the server process (no-op for external endpoints and when not running)."""
        with self._lock:
            finalizer, self._finalizer, self._base_url = self._finalizer, None, None
            self._process = None
        if finalizer is not None:
            finalizer()
            if not self.config.log_path and self._log_path is not None:
                self._log_path.unlink(missing_ok=True)
                self._log_path = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def wait_until_ready(
    base_url: str, model: str, timeout_s: float, process: subprocess.Popen | None = None, log_path: Path | None = None
) -> None:
    """Poll `GET {base_url}/models` until it lists `model`; fail fast if the process exits, or at the deadline."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if process is not None and process.poll() is not None:
                tail = _log_tail(log_path) if log_path else ""
                raise ModelServerError(
                    f"model server for {model} exited with code {process.returncode} before it was ready"
                    + (f"; log tail:\n{tail}" if tail else "")
                )
            try:
                response = client.get(f"{base_url}/models")
                if response.status_code == 200:
                    ids = [item.get("id") for item in response.json().get("data", [])]
                    if model in ids:
                        return
                    last_error = f"it serves {ids}, not {model!r}"
                else:
                    last_error = f"HTTP {response.status_code}"
            except (httpx.HTTPError, ValueError) as error:
                last_error = f"{type(error).__name__}: {error}"
            if time.monotonic() >= deadline:
                tail = _log_tail(log_path) if log_path else ""
                raise ModelServerError(
                    f"model server at {base_url} was not ready within {timeout_s:g}s ({last_error})"
                    + (f"; log tail:\n{tail}" if tail else "")
                )
            time.sleep(_POLL_INTERVAL_S)
