"""What the tests that start the Dagster webserver share: waiting until it answers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_for_webserver(url: str, process: subprocess.Popen, timeout_s: float, log: Callable[[], str] = str) -> None:
    """Return once `url`/server_info answers 200; fail, with `log()`, when `process` exits first or `timeout_s`
    passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert process.poll() is None, f"the server exited with {process.returncode} before it answered: {log()}"
        try:
            if httpx.get(f"{url}/server_info", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"no webserver at {url} within {timeout_s:g} s: {log()}"
        time.sleep(1)
