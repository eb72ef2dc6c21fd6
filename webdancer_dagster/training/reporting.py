"""What both training entry points share: reporting to Dagster, resuming, and the device-level arguments.

Both `sft` and `dapo` are plain programs first: without a Dagster launch (`DAGSTER_PIPES_*` unset) they train
and print; launched through the torchrun resource, global rank 0 streams progress lines into the run's logs and
reports the final metadata, while the other ranks stay silent so nothing is reported twice.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

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
        _wait_for_device()
        self._started = time.perf_counter()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        _wait_for_device()
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


def _wait_for_device() -> None:
    """GPU kernels run asynchronously: without this a step's time would be the time to queue it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@contextmanager
def pipes_on_rank_zero() -> Iterator[PipesContext | None]:
    """Open Pipes only on global rank 0 of a Dagster launch; every other case trains without reporting."""
    if int(os.environ.get("RANK", "0")) != 0 or not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        yield None
        return
    with open_dagster_pipes() as pipes:
        yield pipes


class TrainingResult(Protocol):
    checkpoint_sha256: str

    def pipes_metadata(self) -> dict[str, dict[str, Any]]: ...


ResultT = TypeVar("ResultT", bound=TrainingResult)


def train_and_report(train: Callable[[PipesContext | None], ResultT | None]) -> ResultT | None:
    """Run `train` with Pipes open on rank 0, report its result there, and close the process group either way."""
    import torch

    try:
        with pipes_on_rank_zero() as pipes:
            result = train(pipes)
            if pipes is not None and result is not None:
                pipes.report_asset_materialization(
                    metadata=result.pipes_metadata(), data_version=result.checkpoint_sha256
                )
    finally:
        # accelerate opens a process group under torchrun and leaves it open; NCCL warns of leaks at exit.
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return result


def resume_point(output_dir: Path) -> tuple[str | None, int]:
    """The newest complete checkpoint in `output_dir` and its step, or (None, 0) for a fresh run.

    The trainer writes a checkpoint's weights first and its `trainer_state.json` last, into the folder itself: a
    folder without a readable trainer state is what a kill while saving leaves. It is passed over (the run saves that
    step again when it gets there), never resumed from, which would fail on the missing state every time."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    numbered = {}
    for folder in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if output_dir.is_dir() else []:
        number = folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if folder.is_dir() and number.isdigit():
            numbered[int(number)] = folder
    for number in sorted(numbered, reverse=True):
        checkpoint = numbered[number]
        try:
            step = TrainerState.load_from_json(str(checkpoint / "trainer_state.json")).global_step
        except (OSError, ValueError) as error:  # missing, or cut off mid-write (JSONDecodeError is a ValueError)
            logger.warning("not resuming from %s: a kill while saving left it incomplete (%s)", checkpoint, error)
            continue
        logger.info("resuming from %s (step %d)", checkpoint, step)
        return str(checkpoint), step
    return None, 0


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): only there does autocast speed training up;
    elsewhere bf16 is emulated. torch's own probe (cpuinfo), which has no public name yet."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe() for probe in probes if probe is not None)


def bf16_autocast(on_gpu: bool, bf16: bool | None) -> bool:
    """`bf16` as asked; None: wherever the hardware does bf16 natively (a GPU, or a CPU with AVX512-BF16 or AMX)."""
    if bf16 is not None:
        return bf16
    return on_gpu or cpu_has_native_bf16()


def runtime_arguments(on_gpu: bool, bf16: bool | None) -> dict[str, Any]:
    """TrainingArguments both entry points share: the device, bf16 autocast (`bf16_autocast`), the process group,
    checkpoints, no progress bars."""
    return {
        "save_strategy": "steps",
        "bf16": bf16_autocast(on_gpu, bf16),
        "use_cpu": not on_gpu,
        # Naming a backend makes accelerate initialise a process group, so only under a multi-process launch.
        "ddp_backend": ("nccl" if on_gpu else "gloo") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        "ddp_find_unused_parameters": False,
        "dataloader_pin_memory": on_gpu,
        "report_to": "none",
        "disable_tqdm": True,
    }
