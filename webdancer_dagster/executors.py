"""Where a job's steps run, chosen when the definitions load: `$WEBDANCER_EXECUTOR`.

Unset: Dagster's default (every step in the run's process, or several processes with the launchpad's `execution:`
config, `deploy/multiprocess.yaml`). `celery` and `k8s` hand each step to a Celery worker or a Kubernetes pod;
their packages are the `cluster` extra (`pip install -e .[cluster]`), not installed by default.
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "WEBDANCER_EXECUTOR"
EXECUTORS = ("default", "multiprocess", "celery", "k8s")


def executor_from_environment(value: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor `$WEBDANCER_EXECUTOR` (or `value`) names; None for Dagster's default."""
    name = (value if value is not None else os.environ.get(EXECUTOR_ENV, "")).strip().lower() or "default"
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_ENV}={name!r}: expected one of {', '.join(EXECUTORS)}")
    if name == "default":
        return None
    if name == "multiprocess":
        return dg.multiprocess_executor
    try:
        if name == "celery":
            from dagster_celery import celery_executor

            return celery_executor
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    except ImportError as error:
        raise ImportError(
            f"{EXECUTOR_ENV}={name} needs the cluster extra: pip install -e '.[cluster]' ({error})"
        ) from error
