"""What every child process the project starts shares: it dies with the process that started it.

Linux's PR_SET_PDEATHSIG sends the child a signal when its parent dies, even by kill -9, so a killed run leaves
no model server or crawler behind. The signal fires when the *thread* that forked the child ends, not the
process, so children that must outlive the thread that asks for them (a model server started lazily from a worker
thread) are forked by `spawn_dying_with_parent` from one thread that lives as long as the process.
"""

from __future__ import annotations

import ctypes
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

PR_SET_PDEATHSIG = 1  # prctl(2)


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
