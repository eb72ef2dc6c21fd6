"""What every child process the project starts shares: it dies with the process that started it."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """`preexec_fn` for Linux children: SIGTERM when their parent dies, so a killed run leaves nothing running.

    Linux sends it when the *thread* that started the child ends, so start such children from a thread that lives
    as long as they should (a process's main thread)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
