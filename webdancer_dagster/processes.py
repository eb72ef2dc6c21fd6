"""What every child process the project starts shares: it dies with the process that started it.

Linux's PR_SET_PDEATHSIG sends the child a signal when its parent dies, even by kill -9, so a killed run leaves
no model server or crawler behind. The signal fires when the *thread* that forked the child ends, not the
process, so children that must outlive the thread that asks for them (a model server started lazily from a worker
thread) are forked by `spawn_dying_with_parent` from one thread that lives as long as the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1  # prctl(2)
logger = logging.getLogger(__name__)


def die_with_parent() -> None:
    """`preexec_fn` for Linux children: SIGTERM when the thread that started them ends (see the module docstring)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


_requests: queue.SimpleQueue[tuple[Sequence[str], dict[str, Any], Future[subprocess.Popen]]] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def spawn_dying_with_parent(command: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(command, **popen_kwargs)` from the process's spawner thread, so the child gets SIGTERM
    when this process dies, whichever thread asked for it."""
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_spawn_forever, name="webdancer-child-spawner", daemon=True)
            _spawner.start()
    result: Future[subprocess.Popen] = Future()
    _requests.put((command, popen_kwargs, result))
    return result.result()


def _spawn_forever() -> None:
    while True:
        command, popen_kwargs, result = _requests.get()
        try:
            result.set_result(subprocess.Popen(command, preexec_fn=die_with_parent, **popen_kwargs))
        except BaseException as error:  # handed to the caller, which raises it in its own thread
            result.set_exception(error)


def run_until_signalled(command: Sequence[str], env: dict[str, str], grace_s: float = 30.0) -> int:
    """Run a long-lived service (`dagster dev`) in its own process group until it exits or this process gets SIGINT
    or SIGTERM; then SIGINT to the service (which stops its own children), and after `grace_s` SIGKILL to its whole
    group. Returns the service's exit code.

    The service's SIGINT is reset to the default: a program started in the background of a non-interactive shell
    inherits SIGINT ignored, and `dagster dev` would then outlive Ctrl-C. It dies with this process too."""

    def preexec() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent()

    child = subprocess.Popen(list(command), env=env, preexec_fn=preexec, start_new_session=True)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return child.wait(timeout=grace_s if stopping.is_set() else None)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop %gs after SIGINT: killing its process group", command[0], grace_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # whatever of its group is left once it has exited
