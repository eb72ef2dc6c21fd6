"""Runs whose process was killed (kill -9, OOM, a closed laptop) stay STARTED in Dagster's run history forever:
nothing is left to report their end. The next run started from the CLI reports them failed, so the UI shows what
happened instead of a run that never ends, and the pool slots the killed run held are given back.

A run's processes are the pids its engine events name ("Executing steps in process (pid: ...)" and the like).
A run counts as orphaned when every one of them is gone, or was reused by a process that started after the run
did. This reads /proc, so it assumes what the project sets up: a run history on the machine that runs the runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import dagster as dg

logger = logging.getLogger(__name__)

_UNFINISHED = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
_ENDED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def fail_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Report every unfinished run whose processes are all gone as failed, then give back the pool slots of every
    ended run (these included); return the ids of the runs reported failed."""
    failed = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        run = record.dagster_run
        pids = run_process_ids(instance, run.run_id)
        started_at = record.start_time or record.create_timestamp.timestamp()
        if not pids or any(_alive_since(pid, started_at) for pid in pids):
            continue
        named = ", ".join(str(pid) for pid in sorted(pids))
        instance.report_run_failed(
            run, message=f"the process running it (pid {named}) exited without ending the run: killed or crashed"
        )
        logger.warning("run %s had no living process (pid %s): reported it failed", run.run_id, named)
        failed.append(run.run_id)
    free_slots_of_ended_runs(instance)
    return failed


def free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[str]:
    """Give back the pool slots (`concurrency.py`) still held by runs that ended; return those runs' ids.

    A step frees its slot when it finishes; a killed process never does, and Dagster frees the slots of an ended
    run only from the daemon's run monitoring (`webdancer ui`), so without it the pool would stay full and every
    later training or LLM step would wait forever."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    holders = storage.get_concurrency_run_ids()
    if not holders:
        return []
    ended = instance.get_run_records(filters=dg.RunsFilter(run_ids=sorted(holders), statuses=_ENDED))
    freed = []
    for record in ended:
        storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
        logger.warning("run %s ended holding pool slots: gave them back", record.dagster_run.run_id)
        freed.append(record.dagster_run.run_id)
    return freed


def run_process_ids(instance: dg.DagsterInstance, run_id: str) -> set[int]:
    """The pids a run's engine events name: the process that executes its steps, and any it started for them."""
    pids = set()
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        value = getattr(data, "metadata", {}).get("pid")
        raw = getattr(value, "value", value)
        if raw is not None and str(raw).isdigit():
            pids.add(int(str(raw)))
    return pids


def _alive_since(pid: int, started_at: float) -> bool:
    """Whether `pid` is a living process that already existed at `started_at` (so not a reused pid)."""
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): whether it lives is all that can be told
        return _exists(pid)
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    if fields[0] == "Z":
        return False
    boot_time = next(
        float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
    )
    process_started = boot_time + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return process_started <= started_at + 1.0  # btime has a resolution of one second


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
