"""What the training entry points tell Dagster while and after they run (rank 0 only, and only under Pipes).

Both `sft` and `dapo` are plain programs first: without a Dagster launch (`DAGSTER_PIPES_*` unset) they train
and print; launched through the torchrun resource, global rank 0 streams progress lines into the run's logs and
reports the final metadata, while the other ranks stay silent so nothing is reported twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

PROGRESS_KEYS = ("loss", "reward", "rewards/answer_reward/mean", "dynamic_sampling/dropped_group_share")


def typed_metadata(values: Mapping[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    """`{key: (value, pipes type)}` in the form `report_asset_materialization` expects."""
    return {key: {"raw_value": value, "type": kind} for key, (value, kind) in values.items()}


class StepTimer(TrainerCallback):
    """Times optimizer steps and streams each logged loss (and reward, for RL) to Dagster during the run."""

    def __init__(self, pipes: PipesContext | None) -> None:
        self.step_seconds: list[float] = []
        self._pipes = pipes
        self._started = 0.0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._started = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.step_seconds.append(time.perf_counter() - self._started)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        shown = {key: logs[key] for key in PROGRESS_KEYS if logs and key in logs}
        if self._pipes is not None and "loss" in shown:
            values = " ".join(f"{key} {value:.4f}" for key, value in shown.items())
            self._pipes.log.info(f"step {state.global_step}/{state.max_steps} {values}")


@contextmanager
def pipes_on_rank_zero() -> Iterator[PipesContext | None]:
    """Open Pipes only on global rank 0 of a Dagster launch; every other case trains without reporting."""
    if int(os.environ.get("RANK", "0")) != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes
