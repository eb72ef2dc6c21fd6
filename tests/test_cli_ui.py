"""`webdancer ui` stops with everything it started on one SIGINT, also when it was started with SIGINT ignored (a
background job of a non-interactive shell), which `dagster dev` alone would then outlive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from webserver_wait import wait_for_webserver

from webdancer_dagster.llm.server import free_port

pytestmark = pytest.mark.slow
START_S = 300  # dagster dev loads the project twice (webserver, code server): minutes on a busy machine
STOP_S = 120  # webdancer ui waits 30 s for dagster dev after SIGINT, then kills its group


def _processes_with_home(home: Path) -> list[int]:
    """Live processes whose environment names this test's home: webdancer, dagster dev and all it started."""
    marker = f"WEBDANCER_HOME={home}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0") and "Z" not in (environ.parent / "stat").read_text():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_one_sigint_stops_the_ui_and_everything_it_started(isolated_home: Path) -> None:
    port = free_port()
    command = [sys.executable, "-c", "from webdancer_dagster.cli import app; app()", "ui", "--port", str(port),
               "--home", str(isolated_home)]  # fmt: skip
    env = {**os.environ, "WEBDANCER_HOME": str(isolated_home)}
    ui = subprocess.Popen(command, env=env, preexec_fn=_ignore_sigint, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_webserver(f"http://127.0.0.1:{port}", ui, START_S)
        started = _processes_with_home(isolated_home)
        assert len(started) >= 3, f"expected webdancer, dagster dev and its servers, found {started}"

        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=STOP_S)
        deadline = time.monotonic() + 10  # the kernel reaps the last members of the group
        while _processes_with_home(isolated_home) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_with_home(isolated_home) == [], "a process of the UI outlived webdancer ui"
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
        for pid in _processes_with_home(isolated_home):
            os.kill(pid, signal.SIGKILL)
