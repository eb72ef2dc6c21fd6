"""Supervised fine-tuning on WebDancer trajectories: the program `torchrun` starts on every rank.

Only the agent's own words are learned (see `masking.py`): chats are tokenized here into `input_ids` + `labels`,
long ones fitted into `max_length` by shortening their observations (never the assistant's text), and TRL's
`SFTTrainer` trains on them as they are, with its own templating and truncation switched off. fp32 on
CPU (gloo), bf16 autocast on GPU (nccl); checkpoints are safetensors and a rerun resumes from the newest one, so
a killed run loses at most `save_steps` steps. When Dagster launched it through Pipes, rank 0 streams the loss and
reports the curve, token counts, the lengths of the chats and assistant turns, what was shortened or dropped, and
the checkpoint's path and sha256; without Dagster it is a plain program:

    torchrun --standalone --nproc_per_node=2 -m webdancer_dagster.training.sft \\
        --train_file data/webdancer_samples/sample_traj.jsonl --model_dir .webdancer/base_model/smollm2 \\
        --output_dir /tmp/sft --max_steps 20 --max_length 8192
"""

from __future__ import annotations

import functools
import json
import logging
import os
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dagster_pipes import PipesContext
from datasets import Dataset
from torch.distributed.elastic.multiprocessing.errors import record
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    HfArgumentParser,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
)
from transformers.utils import ModelOutput
from trl import SFTConfig, SFTTrainer

from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.config import SFTHyperparameters
from webdancer_dagster.training.masking import TokenizedDataset, TruncationPolicy, tokenize_chats
from webdancer_dagster.training.reporting import (
    StepTimer,
    resume_point,
    runtime_arguments,
    train_and_report,
    typed_metadata,
)

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final"
LOSS_HISTORY_FILE = "loss_history.json"


@dataclass
class SFTRunArguments:
    """Where the data and the model come from and where the results go."""

    train_file: str = field(metadata={"help": "JSONL, one {'messages': [{'role', 'content'}, ...]} chat a line."})
    model_dir: str = field(metadata={"help": "Transformers model folder (weights and tokenizer) to start from."})
    output_dir: str = field(metadata={"help": "Checkpoints, the final model and loss_history.json go here."})


@dataclass(frozen=True)
class SFTResult:
    """What a finished run produced; rank 0 reports it to Dagster and it is what callers assert on."""

    checkpoint_dir: Path
    checkpoint_sha256: str
    steps: int
    resumed_from_step: int
    examples: int
    dropped: dict[str, int]
    shortened: dict[str, int]
    chat_tokens: dict[str, int]
    """p50, p95 and max tokens of the chats before fitting."""
    assistant_turn_tokens: dict[str, int]
    """p50, p95 and max tokens of the assistant turns trained on (the turn budget a policy must allow)."""
    tokens: int
    labelled_tokens: int
    masked_share: float
    tokens_seen: int
    loss_history: list[dict[str, float]]
    step_seconds: list[float]
    bf16_autocast: bool

    @property
    def seconds_per_step(self) -> float:
        """Median over this run's optimizer steps: robust to the slow first step and to a busy machine."""
        return statistics.median(self.step_seconds) if self.step_seconds else 0.0

    def pipes_metadata(self) -> dict[str, dict[str, Any]]:
        """Metadata in the typed form `report_asset_materialization` expects."""
        losses = [entry["loss"] for entry in self.loss_history]
        values: dict[str, tuple[Any, str]] = {
            "checkpoint_path": (str(self.checkpoint_dir), "path"),
            "checkpoint_sha256": (self.checkpoint_sha256, "text"),
            "steps": (self.steps, "int"),
            "resumed_from_step": (self.resumed_from_step, "int"),
            "examples": (self.examples, "int"),
            "dropped": (self.dropped, "json"),
            "shortened": (self.shortened, "json"),
            "chat_tokens": (self.chat_tokens, "json"),
            "assistant_turn_tokens": (self.assistant_turn_tokens, "json"),
            "dataset_tokens": (self.tokens, "int"),
            "labelled_tokens": (self.labelled_tokens, "int"),
            "masked_token_share": (round(self.masked_share, 4), "float"),
            "tokens_seen": (self.tokens_seen, "int"),
            "bf16_autocast": (self.bf16_autocast, "bool"),
            "seconds_per_step": (round(self.seconds_per_step, 4), "float"),
            "step_seconds": ([round(seconds, 4) for seconds in self.step_seconds], "json"),
            "loss_curve": (self.loss_history, "json"),
            "loss_history_file": (str(self.checkpoint_dir.parent / LOSS_HISTORY_FILE), "path"),
            "final_loss": (losses[-1] if losses else None, "float" if losses else "null"),
        }
        return typed_metadata(values)


def make_parser() -> HfArgumentParser:
    """Command-line parser over the run arguments and the SFT hyperparameters."""
    return HfArgumentParser((SFTRunArguments, SFTHyperparameters))


@record
def main(args: Sequence[str] | None = None) -> SFTResult | None:
    """Parse `args` (default: `sys.argv`), train, and report to Dagster when launched through Pipes."""
    run, hparams = make_parser().parse_args_into_dataclasses(args=args)
    return train_and_report(lambda pipes: train_sft(run, hparams, pipes=pipes))


def read_chats(path: Path) -> list[list[dict[str, str]]]:
    """Read the `messages` of every JSONL record; an empty file is an error, not an empty run."""
    chats: list[list[dict[str, str]]] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list):
                raise ValueError(f"{path}:{number}: expected a JSON object with a 'messages' list")
            chats.append(messages)
    if not chats:
        raise ValueError(f"SFT dataset {path} holds no chats; there is nothing to train on")
    return chats


def train_sft(run: SFTRunArguments, hparams: SFTHyperparameters, pipes: PipesContext | None = None) -> SFTResult | None:
    """Train, resuming from the newest checkpoint in `output_dir`; returns the result on rank 0, else None."""
    output_dir = Path(run.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir, local_files_only=True)
    data = _tokenize(Path(run.train_file), tokenizer, hparams)
    on_gpu = torch.cuda.is_available()
    timer = StepTimer(pipes)
    trainer = _SFTTrainer(
        fused_lm_head=on_gpu if hparams.fused_lm_head is None else hparams.fused_lm_head,
        model=AutoModelForCausalLM.from_pretrained(run.model_dir, local_files_only=True, dtype=torch.float32),
        args=sft_config(hparams, output_dir, on_gpu=on_gpu),
        train_dataset=Dataset.from_dict(
            {
                "input_ids": [example.input_ids for example in data.examples],
                "labels": [example.labels for example in data.examples],
            }
        ),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    last_checkpoint, resumed_from_step = resume_point(output_dir)
    trainer.train(resume_from_checkpoint=last_checkpoint)
    final_dir = output_dir / FINAL_MODEL_DIR
    trainer.save_model(str(final_dir))
    if not trainer.is_world_process_zero():
        return None
    history = [
        {key: entry[key] for key in ("step", "loss", "learning_rate", "grad_norm") if key in entry}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    (output_dir / LOSS_HISTORY_FILE).write_text(json.dumps(history, indent=1))
    result = SFTResult(
        checkpoint_dir=final_dir,
        checkpoint_sha256=folder_sha256(final_dir),
        steps=trainer.state.global_step,
        resumed_from_step=resumed_from_step,
        examples=len(data.examples),
        dropped=_counts(data.dropped),
        shortened=_counts(data.shortened),
        chat_tokens=data.chat_tokens.to_dict(),
        assistant_turn_tokens=data.assistant_turn_tokens.to_dict(),
        tokens=data.tokens,
        labelled_tokens=data.labelled_tokens,
        masked_share=data.masked_share,
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        loss_history=history,
        step_seconds=timer.step_seconds,
        bf16_autocast=trainer.args.bf16,
    )
    logger.info(
        "SFT done: %d steps, final loss %s, %.3f s/step, checkpoint %s",
        result.steps,
        history[-1]["loss"] if history else None,
        result.seconds_per_step,
        final_dir,
    )
    return result


def sft_config(hparams: SFTHyperparameters, output_dir: Path, on_gpu: bool) -> SFTConfig:
    """TRL config for pre-tokenized chats: no templating or truncation by TRL, resumable safetensors checkpoints."""
    return SFTConfig(
        output_dir=str(output_dir),
        **runtime_arguments(on_gpu, hparams.bf16),
        learning_rate=hparams.learning_rate,
        num_train_epochs=hparams.num_train_epochs,
        max_steps=hparams.max_steps,
        per_device_train_batch_size=hparams.per_device_train_batch_size,
        gradient_accumulation_steps=hparams.gradient_accumulation_steps,
        # transformers 5 reads a float below 1 as a share of the total steps.
        warmup_steps=hparams.warmup_ratio,
        lr_scheduler_type=hparams.lr_scheduler_type,
        weight_decay=hparams.weight_decay,
        max_grad_norm=hparams.max_grad_norm,
        logging_steps=hparams.logging_steps,
        save_steps=hparams.save_steps,
        save_total_limit=hparams.save_total_limit,
        activation_checkpointing=hparams.activation_checkpointing,
        seed=hparams.seed,
        include_num_input_tokens_seen="non_padding",
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
    )


def _tokenize(train_file: Path, tokenizer: PreTrainedTokenizerBase, hparams: SFTHyperparameters) -> TokenizedDataset:
    chats = read_chats(train_file)
    data = tokenize_chats(tokenizer, chats, hparams.max_length, hparams.truncation)
    if not data.examples:
        hint = "raise max_length"
        if hparams.truncation == TruncationPolicy.DROP:
            hint += " or use truncation='shorten_observations'"
        raise ValueError(
            f"none of the {len(chats)} chats in {train_file} is trainable at max_length={hparams.max_length} "
            f"(dropped: {_counts(data.dropped)}; chat tokens {data.chat_tokens.to_dict()}); {hint}"
        )
    logger.info(
        "%d chats (tokens %s) -> %d examples, %d tokens (%.1f%% masked), assistant turn tokens %s, shortened %s, "
        "dropped %s",
        len(chats),
        data.chat_tokens.to_dict(),
        len(data.examples),
        data.tokens,
        100 * data.masked_share,
        data.assistant_turn_tokens.to_dict(),
        _counts(data.shortened),
        _counts(data.dropped),
    )
    return data


def _counts(reasons: Counter[str]) -> dict[str, int]:
    return {str(reason): count for reason, count in reasons.items()}


class _SFTTrainer(SFTTrainer):
    """TRL's SFTTrainer, with the model's own cross-entropy where TRL's fused LM head costs more than it saves.

    The fused head never builds the (tokens x vocabulary) logits, which keeps long chats in GPU memory. On an H100 a
    SmolLM2-sized step with it ran from 7% faster to 23% slower than with the model's own loss (three runs at 1024
    and 2048 tokens); on CPU, without Triton, it projects every position and recomputes each tile in backward, 2-3
    times slower (benchmarks/bench_sft.py). So it is the default on GPU only, where long chats would otherwise run
    out of memory first, and `fused_lm_head` overrides the choice.
    """

    def __init__(self, *args: Any, model: PreTrainedModel, fused_lm_head: bool, **kwargs: Any) -> None:
        if not fused_lm_head:
            _return_only_the_training_loss(model)
        super().__init__(*args, model=model, **kwargs)
        self._fused_lm_head = fused_lm_head

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        if self._fused_lm_head:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def _return_only_the_training_loss(model: PreTrainedModel) -> None:
    """Make `model`'s forward return just the loss when it computes one in training.

    Under autocast, accelerate casts every bf16 tensor a forward returns to fp32, the (tokens x vocabulary) logits
    included, though the loss has already been taken from them and the Trainer reads nothing else. On CPU that copy
    was about 120 ms of a 0.8 s step (bench_sft.py, 2,048 tokens). Evaluation and generation keep their logits.
    """
    forward = model.forward

    @functools.wraps(forward)
    def loss_only_in_training(*args: Any, **kwargs: Any) -> Any:
        outputs = forward(*args, **kwargs)
        if model.training and isinstance(outputs, ModelOutput) and outputs.get("loss") is not None:
            return type(outputs)(loss=outputs["loss"])
        return outputs

    model.forward = loss_only_in_training


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    main()
