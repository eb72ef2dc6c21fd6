"""Thread pools that a stopped run leaves at once.

Dagster turns SIGTERM and Ctrl-C into an exception in the run's main thread (`DagsterExecutionInterruptedError`, a
`BaseException` like `KeyboardInterrupt`). Leaving `with ThreadPoolExecutor()` on it would still wait for every
queued job (hundreds of agent runs in scoring), so `webdancer materialize` ignored SIGTERM. `worker_pool` drops the
queued jobs and does not wait for the running ones: the step fails now, its resources are torn down (the model
server the jobs call), and the running jobs end on their next request.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


@contextmanager
def worker_pool(max_workers: int, thread_name_prefix: str = "") -> Iterator[ThreadPoolExecutor]:
    """A `ThreadPoolExecutor` that waits for its jobs on a normal exit or an error, as `with ThreadPoolExecutor()`
    does, and on an interrupt (any `BaseException` that is not an `Exception`) cancels the queued jobs and returns
    without waiting for the running ones."""
    pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
    try:
        yield pool
    except Exception:
        pool.shutdown(wait=True)
        raise
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
