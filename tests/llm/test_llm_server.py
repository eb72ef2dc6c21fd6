"""The model server module: commands the real CLIs accept, start failures that end quickly and clean up."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from webdancer_dagster.llm.server import (
    ModelServer,
    ModelServerConfig,
    ModelServerError,
    free_port,
    llama_cpp_command,
    stop_process_group,
    vllm_command,
)


def processes_listening_on(port: int) -> list[str]:
    """Command lines of live processes started with `--port PORT` (what a leaked server would look like)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process exited while we looked
        if b"--port" in args and str(port).encode() in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_config_needs_what_each_mode_uses():
    with pytest.raises(ValueError, match="needs base_url"):
        ModelServerConfig(mode="external")
    with pytest.raises(ValueError, match="needs model_path"):
        ModelServerConfig(mode="llama_cpp")
    assert ModelServerConfig(model_path="/m/SmolLM2.Q4.gguf").model_name == "SmolLM2.Q4"
    with pytest.raises(ValueError, match="needs served_model_name"):
        _ = ModelServerConfig(mode="external", base_url="http://h/v1").model_name


def test_the_llama_cpp_command_parses_with_the_servers_own_cli():
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    config = ModelServerConfig(model_path="/m/x.gguf", served_model_name="x", n_ctx=4096, n_threads=3)
    command = llama_cpp_command(config, 8123)
    assert command[1:3] == ["-m", "llama_cpp.server"]
    parser = argparse.ArgumentParser()
    add_args_from_model(parser, Settings)
    args = parser.parse_args(command[3:])
    model = parse_model_from_args(ModelSettings, args)
    server = parse_model_from_args(ServerSettings, args)
    assert (model.model, model.model_alias, model.n_ctx, model.n_threads, model.logits_all) == (
        "/m/x.gguf",
        "x",
        4096,
        3,
        False,
    )
    assert (server.host, server.port) == ("127.0.0.1", 8123)


def test_the_vllm_command():
    config = ModelServerConfig(
        mode="vllm", model_path="Qwen/Qwen2.5-7B-Instruct", n_parallel=64, extra_args=("--tensor-parallel-size", "2")
    )
    assert vllm_command(config, 8000) == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name", "Qwen2.5-7B-Instruct",
        "--host", "127.0.0.1", "--port", "8000",
        "--max-model-len", "8192", "--max-num-seqs", "64",
        "--tensor-parallel-size", "2",
    ]  # fmt: skip


def test_vllm_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ModelServerError, match="'vllm' is not installed"):
        ModelServer(ModelServerConfig(mode="vllm", model_path="m")).start()


def test_external_mode_starts_nothing():
    with ModelServer(
        ModelServerConfig(mode="external", base_url="http://gpu-box:8000/v1/", served_model_name="m")
    ) as s:
        assert (s.base_url, s.model, s.log_path) == ("http://gpu-box:8000/v1", "m", None)
    assert not s.running


def test_a_server_that_exits_at_start_reports_its_log(tmp_path):
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"not a gguf file")
    config = ModelServerConfig(model_path=str(bogus), startup_timeout_s=60, log_path=str(tmp_path / "server.log"))
    started = time.perf_counter()
    with pytest.raises(ModelServerError, match=r"exited with code 1 before it was ready; log tail:\n") as error:
        ModelServer(config).start()
    assert time.perf_counter() - started < 30  # it noticed the exit, it did not wait for the deadline
    assert "not-a-model.gguf" in str(error.value)


def test_a_server_not_ready_by_the_deadline_is_stopped(tmp_path):
    port = free_port()
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"never read: the deadline passes before the server could load it")
    config = ModelServerConfig(model_path=str(gguf), port=port, startup_timeout_s=0.2)
    logs_before = set(Path(tempfile.gettempdir()).glob("llama_cpp-server-*.log"))
    with pytest.raises(ModelServerError, match=f"model server at http://127.0.0.1:{port}/v1 was not ready within 0.2s"):
        ModelServer(config).start()
    assert processes_listening_on(port) == []
    assert set(Path(tempfile.gettempdir()).glob("llama_cpp-server-*.log")) <= logs_before  # its temporary log is gone


def test_a_server_ignoring_sigterm_is_killed_after_the_grace_period():
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", ignore_term], stdout=subprocess.PIPE, start_new_session=True)
    assert process.stdout.readline() == b"up\n"  # the handler is installed before we signal
    started = time.perf_counter()
    stop_process_group(process, grace_s=0.3)
    assert process.returncode == -signal.SIGKILL
    assert 0.3 <= time.perf_counter() - started < 30  # the grace period was given; the child would sleep for 60 s


def test_stopping_ends_the_whole_process_group():
    shell = f"{sys.executable} -c 'import time; time.sleep(60)' & echo $!; wait"
    process = subprocess.Popen(["sh", "-c", shell], stdout=subprocess.PIPE, start_new_session=True)
    child = int(process.stdout.readline())
    stop_process_group(process, grace_s=5)
    deadline = time.monotonic() + 30  # a hang guard: SIGTERM ends it at once
    while is_running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(child)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whatever PID 1 is, maybe never)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_a_server_started_from_a_finished_thread_dies_with_its_process_on_kill_9(tmp_path):
    """kill -9 runs no finalizer: only the parent-death signal stops the server. The server is started lazily from
    a worker thread that has ended before the kill (as a role's first request does), and must stay up until then:
    Linux ties the signal to the forking thread, so the project forks from one thread that lives with the process."""
    pytest.importorskip("llama_cpp")
    from webdancer_dagster.llm.model_files import find_smollm2_gguf

    owner = (
        "import threading, time\n"
        "from webdancer_dagster.llm.server import ModelServer, ModelServerConfig\n"
        f"config = ModelServerConfig(model_path={str(find_smollm2_gguf())!r}, n_ctx=512, n_threads=1)\n"
        "servers = []\n"
        "worker = threading.Thread(target=lambda: servers.append(ModelServer(config).start()))\n"
        "worker.start(); worker.join()\n"
        "print(servers[0]._process.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", owner], stdout=subprocess.PIPE)
    server_pid = int(parent.stdout.readline())
    time.sleep(1.0)
    assert is_running(server_pid), "the server stopped when the thread that started it ended"
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while is_running(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    survived = is_running(server_pid)
    if survived:
        os.killpg(server_pid, signal.SIGKILL)
    assert not survived
