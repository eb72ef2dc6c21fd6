"""How many heavy things run at once: the pools the assets claim a slot of, and the instance config (`dagster.yaml`)
the CLI writes into a new run history, which holds the run queue and the pools' limit.

A pool is a Dagster concurrency pool: a step of an asset in a pool waits until one of the pool's slots is free,
whichever run it belongs to (UI, schedule, sensor or `webdancer materialize`).
"""

from __future__ import annotations

# One training step at a time on this machine (its GPUs, or its cores on CPU): sft_checkpoint and rl_checkpoint.
TRAINING_POOL = "training"
# The steps whose cost is LLM calls to the roles' endpoint (by default one llama.cpp server on this machine, started
# by the step): crawlqa_pairs, e2hqa_pairs, trajectories, the funnel and benchmark_scores.
LLM_POOL = "llm"

DAGSTER_YAML = """\
# The Dagster instance of this WebDancer home, written by `webdancer` when it created this run history. Edit it
# freely: webdancer writes it only when it is missing (see the README, "Concurrency"). Sized for 2 CPU cores.
telemetry:
  enabled: false

# Runs launched from the UI, by schedules and by the automation sensor wait in a queue (webdancer materialize runs
# its own, outside the queue, but its steps take the same pool slots).
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator

concurrency:
  runs:
    max_concurrent_runs: 1  # runs in progress at once; a bigger machine: raise it
  pools:
    # The limit of every pool not set on its own: `training` (sft_checkpoint, rl_checkpoint: one training step per
    # machine or GPU) and `llm` (the LLM-heavy steps, one endpoint). Set one pool on its own with
    # `dagster instance concurrency set llm 8` or in the UI (Deployment > Concurrency).
    default_limit: 1
    granularity: op

# Gives a finished run's pool slots back, also when its process was killed and the run was reported failed later.
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 30
"""

# What earlier versions wrote: a file still holding exactly this was never edited, so it is replaced.
EARLIER_DAGSTER_YAMLS = ("telemetry:\n  enabled: false\n",)
