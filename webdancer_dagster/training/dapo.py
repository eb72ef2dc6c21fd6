"""DAPO on the RL pool: the program `torchrun` starts on every rank.

TRL's `GRPOTrainer` with `loss_type="dapo"` supplies the token-level loss and clip-higher (`epsilon` 0.2,
`epsilon_high` 0.28) with no KL term (`beta` 0) and truncated rollouts masked out. What TRL does not have lives
here: multi-turn rollouts of the real agent (`rollout.py`, observations masked through `env_mask`), the reward
0.1 x format + 0.9 x judged answer (two reward functions, so each is logged on its own), and DAPO's dynamic
sampling (`dynamic_sampling.py`). Like the SFT entry point it runs without Dagster:

    torchrun --standalone --nproc_per_node=2 -m webdancer_dagster.training.dapo \\
        --train_file pool.jsonl --environment_file env.json --model_dir ckpt/final --output_dir /tmp/rl --max_steps 4

`pool.jsonl` holds `{"id", "question", "answers": [...]}` lines; `env.json` is a `RolloutEnvironment` (search
index, site proxy, judge and summarizer endpoints), so every rank reaches the same local web the agent uses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import statistics
import sys
import time
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
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import FusedCausalLMOutput

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.agent.loop import ReactAgent, run_agents
from webdancer_dagster.agent.prompts import system_message, user_message
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.llm.client import ChatModel, LLMEndpoint, LLMEndpointError, SamplingParams
from webdancer_dagster.llm.server import default_threads
from webdancer_dagster.shared.hashing import folder_sha256, stable_id
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment
from webdancer_dagster.training.dynamic_sampling import FilledBatch, Group, PromptDrawer, fill_groups
from webdancer_dagster.training.masking import IGNORE_INDEX
from webdancer_dagster.training.reporting import (
    StepTimer,
    resume_point,
    runtime_arguments,
    train_and_report,
    typed_metadata,
)
from webdancer_dagster.training.rollout import (
    LocalPolicy,
    RLSample,
    RolloutReward,
    chat_prompt_ids,
    rl_sample,
    score_rollout,
)
from webdancer_dagster.training.served_policy import PolicyServer, ServedPolicy
from webdancer_dagster.web.search import LocalSearch

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final"
HISTORY_FILE = "train_history.json"
ROLLOUT_STATE_FILE = "rollout_state_rank{rank}.json"
AGENT_STOP = ("\n<tool_response>", "<tool_response>")


@dataclass
class DAPORunArguments:
    """Where the RL pool, the web and the model come from and where the results go."""

    train_file: str = field(metadata={"help": "JSONL, one {'id', 'question', 'answers': [...]} RL prompt a line."})
    environment_file: str = field(metadata={"help": "JSON RolloutEnvironment: search index, proxy, judge, summarizer."})
    model_dir: str = field(metadata={"help": "Transformers model folder (weights and tokenizer) to start from."})
    output_dir: str = field(metadata={"help": "Checkpoints, the final model and train_history.json go here."})


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    id: str
    question: str
    answers: list[str]


@dataclasses.dataclass(frozen=True)
class ScoredRollout:
    sample: RLSample
    reward: RolloutReward
    policy_version: int  # the optimizer step whose weights sampled it


@dataclasses.dataclass(frozen=True)
class DAPOResult:
    """What a finished run produced; rank 0 reports it to Dagster."""

    checkpoint_dir: Path
    checkpoint_sha256: str
    steps: int
    resumed_from_step: int
    prompts: int
    dropped_prompts: dict[str, int]
    history: list[dict[str, float]]
    step_seconds: list[float]
    rollout_seconds: float
    tokens_generated: int
    tokens_trained: int
    groups_sampled: int
    groups_dropped: int
    masked_token_share: float
    bf16_autocast: bool
    rollout_backend: str = "local"
    sync_seconds: float = 0.0
    weight_syncs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    policy_staleness: list[int] = dataclasses.field(default_factory=list)
    rollout_retries: int = 0
    pool_pass_rates: dict[str, int] = dataclasses.field(default_factory=dict)  # PromptDrawer.pass_rates

    @property
    def seconds_per_step(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else 0.0

    @property
    def rollout_time_share(self) -> float:
        """Share of optimizer-step wall time spent generating and scoring rollouts."""
        total = sum(self.step_seconds)
        return min(1.0, self.rollout_seconds / total) if total else 0.0

    @property
    def sync_time_share(self) -> float:
        """Share of optimizer-step wall time spent syncing weights into the rollout server."""
        total = sum(self.step_seconds)
        return min(1.0, self.sync_seconds / total) if total else 0.0

    @property
    def trained_token_share(self) -> float:
        """Share of generated tokens that reached a gradient step after dynamic sampling."""
        return self.tokens_trained / self.tokens_generated if self.tokens_generated else 0.0

    def pipes_metadata(self) -> dict[str, dict[str, Any]]:
        rewards = [entry["reward"] for entry in self.history if "reward" in entry]
        return typed_metadata(
            {
                "checkpoint_path": (str(self.checkpoint_dir), "path"),
                "checkpoint_sha256": (self.checkpoint_sha256, "text"),
                "steps": (self.steps, "int"),
                "resumed_from_step": (self.resumed_from_step, "int"),
                "prompts": (self.prompts, "int"),
                "dropped_prompts": (self.dropped_prompts, "json"),
                "train_history": (self.history, "json"),
                "train_history_file": (str(self.checkpoint_dir.parent / HISTORY_FILE), "path"),
                "final_reward": (rewards[-1] if rewards else None, "float" if rewards else "null"),
                "seconds_per_step": (round(self.seconds_per_step, 4), "float"),
                "step_seconds": ([round(seconds, 4) for seconds in self.step_seconds], "json"),
                "bf16_autocast": (self.bf16_autocast, "bool"),
                "rollout_time_share": (round(self.rollout_time_share, 4), "float"),
                "tokens_generated": (self.tokens_generated, "int"),
                "tokens_trained": (self.tokens_trained, "int"),
                "trained_token_share": (round(self.trained_token_share, 4), "float"),
                "groups_sampled": (self.groups_sampled, "int"),
                "groups_dropped": (self.groups_dropped, "int"),
                "dropped_group_share": (
                    round(self.groups_dropped / self.groups_sampled, 4) if self.groups_sampled else 0.0,
                    "float",
                ),
                "masked_token_share": (round(self.masked_token_share, 4), "float"),
                "rollout_backend": (self.rollout_backend, "text"),
                "sync_seconds": (round(self.sync_seconds, 3), "float"),
                "sync_time_share": (round(self.sync_time_share, 4), "float"),
                "weight_syncs": (self.weight_syncs, "json"),
                "policy_staleness": (self.policy_staleness, "json"),
                "rollout_retries": (self.rollout_retries, "int"),
                "pool_pass_rates": (self.pool_pass_rates, "json"),
            }
        )


def make_parser() -> HfArgumentParser:
    return HfArgumentParser((DAPORunArguments, DAPOHyperparameters))


@record
def main(args: Sequence[str] | None = None) -> DAPOResult | None:
    """Parse `args` (default: `sys.argv`), train, and report to Dagster when launched through Pipes."""
    run, hparams = make_parser().parse_args_into_dataclasses(args=args)
    return train_and_report(lambda pipes: train_dapo(run, hparams, pipes=pipes))


def read_rl_pool(path: Path) -> list[RLPrompt]:
    """The RL prompts; an empty pool is an error naming the asset that makes it."""
    prompts: list[RLPrompt] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            answers = row.get("answers") if isinstance(row, dict) else None
            if not isinstance(row, dict) or not row.get("question") or not answers or not isinstance(answers, list):
                raise ValueError(f"{path}:{number}: expected a JSON object with 'question' and an 'answers' list")
            prompts.append(RLPrompt(str(row.get("id", number)), row["question"], [str(a) for a in answers]))
    if not prompts:
        raise ValueError(f"RL pool {path} holds no prompts: materialize rl_pool (the funnel) with unsolved pairs")
    return prompts


def train_dapo(
    run: DAPORunArguments, hparams: DAPOHyperparameters, pipes: PipesContext | None = None
) -> DAPOResult | None:
    """Train, resuming from the newest checkpoint in `output_dir`; returns the result on rank 0, else None."""
    output_dir = Path(run.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir, local_files_only=True)
    environment = RolloutEnvironment.model_validate_json(Path(run.environment_file).read_text(encoding="utf-8"))
    pool, dropped = _fitting_prompts(read_rl_pool(Path(run.train_file)), tokenizer, hparams, environment)
    on_gpu = torch.cuda.is_available()
    rank = int(os.environ.get("RANK", 0))
    rollout = AgentRollout(
        pool,
        environment,
        tokenizer,
        hparams,
        seed=hparams.seed + rank,
        work_dir=output_dir / f"rollout_server_rank{rank}",
    )
    timer = StepTimer(pipes)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(run.model_dir, local_files_only=True, dtype=torch.float32),
        reward_funcs=[format_reward, answer_reward],
        args=dapo_config(hparams, output_dir, on_gpu=on_gpu),
        train_dataset=Dataset.from_dict({"prompt": [prompt.question for prompt in pool]}),
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[timer, RolloutStateSaver(rollout)],
    )
    if not (on_gpu if hparams.fused_lm_head is None else hparams.fused_lm_head):
        score_completions_directly(trainer.model, hparams.temperature)
    last_checkpoint, resumed_from_step = resume_point(output_dir)
    if last_checkpoint is not None:
        rollout.restore_from(Path(last_checkpoint))
    try:
        trainer.train(resume_from_checkpoint=last_checkpoint)
    finally:
        rollout.close()
    final_dir = output_dir / FINAL_MODEL_DIR
    trainer.save_model(str(final_dir))
    if not trainer.is_world_process_zero():
        return None
    history = [_history_entry(entry) for entry in trainer.state.log_history if "loss" in entry]
    (output_dir / HISTORY_FILE).write_text(json.dumps(history, indent=1))
    result = DAPOResult(
        checkpoint_dir=final_dir,
        checkpoint_sha256=folder_sha256(final_dir),
        steps=trainer.state.global_step,
        resumed_from_step=resumed_from_step,
        prompts=len(pool),
        dropped_prompts=dropped,
        history=history,
        step_seconds=timer.step_seconds,
        rollout_seconds=rollout.seconds,
        tokens_generated=rollout.tokens_generated,
        tokens_trained=rollout.tokens_trained,
        groups_sampled=rollout.groups_sampled,
        groups_dropped=rollout.groups_dropped,
        masked_token_share=rollout.masked_token_share,
        bf16_autocast=trainer.args.bf16,
        rollout_backend=hparams.rollout_backend,
        sync_seconds=rollout.sync_seconds,
        weight_syncs=[sync.record() for sync in rollout.served.syncs] if rollout.served is not None else [],
        policy_staleness=rollout.policy_staleness,
        rollout_retries=rollout.rollout_retries,
        pool_pass_rates=rollout.drawer.pass_rates(),
    )
    logger.info(
        "DAPO done: %d steps, %.2f s/step, %.0f%% of step time in rollouts, %.0f%% of generated tokens trained",
        result.steps,
        result.seconds_per_step,
        100 * result.rollout_time_share,
        100 * result.trained_token_share,
    )
    return result


def dapo_config(hparams: DAPOHyperparameters, output_dir: Path, on_gpu: bool) -> GRPOConfig:
    """TRL's GRPO config in its DAPO setting, with the rewards weighted 0.1 format / 0.9 answer by default."""
    return GRPOConfig(
        output_dir=str(output_dir),
        **runtime_arguments(on_gpu, hparams.bf16),
        loss_type="dapo",
        epsilon=hparams.epsilon,
        epsilon_high=hparams.epsilon_high,
        beta=hparams.beta,
        mask_truncated_completions=hparams.mask_truncated_completions,
        reward_weights=[hparams.format_weight, hparams.answer_weight],
        num_generations=hparams.num_generations,
        max_completion_length=hparams.max_completion_length,
        temperature=hparams.temperature,
        top_p=hparams.top_p,
        learning_rate=hparams.learning_rate,
        lr_scheduler_type="constant",
        max_steps=hparams.max_steps,
        per_device_train_batch_size=hparams.per_device_train_batch_size,
        gradient_accumulation_steps=hparams.gradient_accumulation_steps,
        logging_steps=hparams.logging_steps,
        save_steps=hparams.save_steps,
        save_total_limit=hparams.save_total_limit,
        seed=hparams.seed,
        log_completions=False,
    )


def score_completions_directly(model: PreTrainedModel, temperature: float) -> None:
    """Replace TRL's chunked LM-head kernel with a plain log-softmax over the completion positions only.

    Without Triton, TRL's kernel projects every position of every sequence (the long system prompt included) and
    recomputes each tile in backward; the completion positions are a fraction of them, so scoring just those is
    several times faster on CPU. The outputs are the same fields, equal up to float rounding (tested); models
    with logit soft-capping or scaling keep TRL's kernel. The transformer runs each padded row on its own tokens
    (`hidden_states_row_by_row`).
    """
    config = model.config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None) not in (None, 1.0):
        return
    trl_forward = model.forward

    def forward(*args: Any, fused_lm_head: bool = False, labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if not fused_lm_head or labels is None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        hidden = hidden_states_row_by_row(model, *args, **kwargs)[:, :-1]
        targets = labels[:, 1:]
        mask = targets != IGNORE_INDEX
        log_softmax = torch.log_softmax(model.lm_head(hidden[mask]).float() / temperature, dim=-1)
        token_log_probs = log_softmax.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        log_probs = hidden.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, token_log_probs)
        normalizer = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / normalizer,
            log_probs=log_probs,
            entropy=log_probs.new_zeros(mask.shape).masked_scatter(mask, entropy),
            label_mask=mask,
        )

    model.forward = forward


def hidden_states_row_by_row(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    """The last hidden states of a padded batch, each row computed from its own tokens alone, pads left as zeros.

    Given padding, transformers hands SDPA an explicit mask, and on CPU attention then computes every block of the
    square where a causal call without a mask skips the upper half, besides the pads themselves: forward and
    backward of 4 chats of 1,500 to 2,300 tokens took 22 to 26 s padded and 12.3 s row by row. A row's positions
    count from its first token, as when it was sampled. The padded path remains for a batch without padding, with
    other per-row inputs, or whose rows are not one span of tokens each (left and right padding only).
    """
    spans = [_token_span(row) for row in attention_mask] if attention_mask is not None else []
    if (
        attention_mask is None
        or bool(attention_mask.all())
        or any(isinstance(value, torch.Tensor) for value in kwargs.values())
        or any(span is None for span in spans)
        or not any(end > start for start, end in spans)
    ):
        outputs = model.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return outputs.last_hidden_state
    hidden = {
        index: model.model(
            input_ids=input_ids[index : index + 1, start:end], use_cache=False, **kwargs
        ).last_hidden_state[0]
        for index, (start, end) in enumerate(spans)
        if end > start
    }
    length, template = input_ids.shape[1], next(iter(hidden.values()))
    return torch.stack(
        [
            torch.nn.functional.pad(hidden[index], (0, 0, start, length - end))
            if index in hidden
            else template.new_zeros(length, template.shape[-1])
            for index, (start, end) in enumerate(spans)
        ]
    )


def _token_span(mask: torch.Tensor) -> tuple[int, int] | None:
    """(start, end) of a mask row's ones when they are contiguous, (0, 0) when there are none, else None."""
    positions = mask.nonzero().flatten()
    if positions.numel() == 0:
        return 0, 0
    start, end = int(positions[0]), int(positions[-1]) + 1
    return (start, end) if positions.numel() == end - start else None


def format_reward(completions: list[Any], format_reward: list[float], **_: Any) -> list[float]:
    """1 when the whole rollout is in WebDancer's format (computed with the rollout; see `score_rollout`)."""
    return list(format_reward)


def answer_reward(
    completions: list[Any], answer_reward: list[float], log_metric: Any = None, **extra: Any
) -> list[float]:
    """1 when the judge finds the answer correct; also logs the dynamic-sampling figures of this batch."""
    if log_metric is not None:
        for name in ("dropped_group_share", "trained_token_share", "refill_rounds"):
            if extra.get(name):
                log_metric(f"dynamic_sampling/{name}", float(extra[name][0]))
        for name in ("policy_staleness", "sampled_format_mean", "sampled_answer_mean"):
            if extra.get(name):
                log_metric(f"rollouts/{name}", float(extra[name][0]))
    return list(answer_reward)


def _rollout_state_path(checkpoint: Path) -> Path:
    return checkpoint / ROLLOUT_STATE_FILE.format(rank=os.environ.get("RANK", "0"))


class RolloutStateSaver(TrainerCallback):
    """Saves the rollout state into every checkpoint the trainer writes, so a killed run resumes it too."""

    def __init__(self, rollout: AgentRollout) -> None:
        self._rollout = rollout

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():
            self._rollout.save_to(checkpoint)


class AgentRollout:
    """TRL's `rollout_func`: groups of agent rollouts for the sampler's prompts, after dynamic sampling."""

    def __init__(
        self,
        pool: Sequence[RLPrompt],
        environment: RolloutEnvironment,
        tokenizer: PreTrainedTokenizerBase,
        hparams: DAPOHyperparameters,
        seed: int,
        work_dir: Path,
    ) -> None:
        self.answers = {prompt.question: prompt.answers for prompt in pool}
        self.environment = environment
        self.tokenizer = tokenizer
        self.hparams = hparams
        self.judge = LLMEndpoint(environment.judge) if environment.judge is not None else None
        self.summarizer = LLMEndpoint(environment.summarizer)
        self.search = LocalSearch(Path(environment.search_index))
        self.scope = environment.scope()
        self.seed = seed
        self.drawer = PromptDrawer(list(self.answers), seed)
        self.sampling = SamplingParams(
            temperature=hparams.temperature, top_p=hparams.top_p, max_tokens=hparams.max_turn_tokens, stop=AGENT_STOP
        )
        self.work_dir = work_dir
        self.policy: ChatModel | None = None
        self._local: LocalPolicy | None = None
        self.served: PolicyServer | None = None
        self.policy_version = 0
        self.policy_staleness: list[int] = []  # one entry a rollout call: steps between its weights and the trainer's
        self.sync_seconds = 0.0
        self.rollout_retries = 0
        self.seconds = 0.0
        self.tokens_generated = self.tokens_trained = 0
        self.groups_sampled = self.groups_dropped = 0
        self._step_rewards: list[RolloutReward] = []  # every rollout sampled for the current step, kept or not
        self._step = self._step_rounds = 0  # the current step, and how many rounds of groups it has sampled
        self._completion_tokens = self._masked_tokens = 0

    @property
    def masked_token_share(self) -> float:
        """Share of trained completion tokens that are observations or scaffolding (env_mask 0)."""
        return self._masked_tokens / self._completion_tokens if self._completion_tokens else 0.0

    def __call__(self, prompts: list[str], trainer: GRPOTrainer) -> dict[str, Any]:
        size = self.hparams.num_generations
        questions = prompts[::size]
        if len(prompts) != len(questions) * size or any(
            prompts[i * size : (i + 1) * size] != [question] * size for i, question in enumerate(questions)
        ):
            raise ValueError(f"rollout prompts must come in whole groups of {size} identical prompts")
        step = trainer.state.global_step
        self._prepare_policy(trainer.accelerator.unwrap_model(trainer.model), step, max_batch=len(prompts))
        self.policy_staleness.append(step - self.policy_version)
        started = time.perf_counter()  # after the weight sync, which is reported on its own
        self._step_rewards = []
        self._step, self._step_rounds = step, 0
        batch = fill_groups(
            questions,
            self._sample_groups,
            self.drawer,
            oversample_factor=self.hparams.oversample_factor,
            max_refill_rounds=self.hparams.max_refill_rounds,
        )
        output = self._trainer_inputs(batch, staleness=self.policy_staleness[-1])
        self.seconds += time.perf_counter() - started
        return output

    def _prepare_policy(self, model: PreTrainedModel, step: int, max_batch: int) -> None:
        """Make `self.policy` sample from the trainer's weights: in process, or from the server, synced when its
        weights are `sync_every_steps` old."""
        if self.hparams.rollout_backend == "local":
            if self._local is None:
                self._local = LocalPolicy(
                    model,
                    self.tokenizer,
                    self.sampling,
                    max_batch=max_batch * max(1, int(self.hparams.oversample_factor)),
                )
            self.policy, self.policy_version = self._local, step
            return
        if self.served is None:
            local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            self.served = ServedPolicy(
                self.tokenizer,
                self.sampling,
                self.work_dir,
                n_ctx=self._context_tokens(),
                n_threads=self.hparams.rollout_server_threads or max(1, default_threads() // local_ranks),
                outtype=self.hparams.rollout_gguf_outtype,  # type: ignore[arg-type]
            )
        if self.served.version is not None and step - self.served.version < self.hparams.sync_every_steps:
            return
        sync = self.served.sync(model, step)
        self.policy, self.policy_version = self.served.endpoint, step
        self.sync_seconds += sync.seconds

    def close(self) -> None:
        if self.served is not None:
            self.served.close()
        if self._local is not None:
            self._local.close()
        if self.judge is not None:
            self.judge.close()
        self.summarizer.close()

    def state(self) -> dict[str, Any]:
        """What a resumed run needs to go on as this one would: the refill order and the run's token counts."""
        return {
            "drawer": self.drawer.state(),
            "tokens_generated": self.tokens_generated,
            "tokens_trained": self.tokens_trained,
            "groups_sampled": self.groups_sampled,
            "groups_dropped": self.groups_dropped,
            "completion_tokens": self._completion_tokens,
            "masked_tokens": self._masked_tokens,
            "policy_staleness": self.policy_staleness,
            "sync_seconds": self.sync_seconds,
            "rollout_retries": self.rollout_retries,
        }

    def save_to(self, checkpoint: Path) -> None:
        """Write this rank's state into `checkpoint`; each rank has its own drawer seed."""
        path = _rollout_state_path(checkpoint)
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(self.state()), encoding="utf-8")
        os.replace(staging, path)  # a kill mid-write leaves the previous state or none, never half a file

    def restore_from(self, checkpoint: Path) -> None:
        """Continue from the state saved with `checkpoint` (a checkpoint from before it was saved starts afresh)."""
        path = _rollout_state_path(checkpoint)
        if not path.is_file():
            logger.warning("%s holds no rollout state: refill prompts restart from the seed", checkpoint)
            return
        state = json.loads(path.read_text(encoding="utf-8"))
        self.drawer.restore(state["drawer"])
        self.tokens_generated, self.tokens_trained = state["tokens_generated"], state["tokens_trained"]
        self.groups_sampled, self.groups_dropped = state["groups_sampled"], state["groups_dropped"]
        self._completion_tokens, self._masked_tokens = state["completion_tokens"], state["masked_tokens"]
        self.policy_staleness = list(state.get("policy_staleness", []))
        self.sync_seconds = float(state.get("sync_seconds", 0.0))
        self.rollout_retries = int(state.get("rollout_retries", 0))
        logger.info("rollout state restored from %s: %d groups sampled so far", path, self.groups_sampled)

    def _sample_groups(self, questions: Sequence[str]) -> list[Group[ScoredRollout]]:
        assert self.policy is not None
        # Every round of every step samples from its own seed, so a resumed run draws what the unbroken one drew.
        round_seed = int(stable_id(str(self.seed), str(self._step), str(self._step_rounds)), 16) % 2**31
        self._step_rounds += 1
        agent = build_web_agent(
            self.policy,
            self.summarizer,
            self.search,
            self.scope,
            self.tokenizer,
            n_ctx=self._context_tokens(),
            max_llm_calls=self.hparams.max_llm_calls,
            current_date=self.environment.current_date,
            seed=round_seed,
            search_results_per_query=self.environment.search_results_per_query,
        )
        size = self.hparams.num_generations
        trajectories = self._run_with_retries(agent, questions)
        groups = []
        for index, question in enumerate(questions):
            group = trajectories[index * size : (index + 1) * size]
            rollouts = [
                ScoredRollout(
                    rl_sample(self.tokenizer, trajectory, self.hparams.max_completion_length),
                    score_rollout(question, self.answers[question], trajectory, self.judge),
                    self.policy_version,
                )
                for trajectory in group
            ]
            self._step_rewards.extend(rollout.reward for rollout in rollouts)
            generated = sum(trajectory.completion_tokens for trajectory in group)
            answers = [rollout.reward.answer for rollout in rollouts]
            self.drawer.record(question, answers)  # refills prefer the prompts the policy sometimes answers
            groups.append(Group(question, rollouts, self._compared_rewards(rollouts), generated))
        return groups

    def _compared_rewards(self, rollouts: Sequence[ScoredRollout]) -> list[float]:
        """The rewards dynamic sampling keeps a group by (`dynamic_sampling_metric`)."""
        if self.hparams.dynamic_sampling_metric == "answer":
            return [rollout.reward.answer for rollout in rollouts]
        weights = (self.hparams.format_weight, self.hparams.answer_weight)
        return [rollout.reward.total(*weights) for rollout in rollouts]

    def _run_with_retries(self, agent: ReactAgent, questions: Sequence[str]) -> list[Trajectory]:
        """All rollouts of `questions`, or none: a rollout server that died is restarted and every group sampled
        again (counted), so no group is trained half-finished."""
        size = self.hparams.num_generations
        # No more rollouts at once than the policy answers at once: a llama.cpp server then takes each rollout's
        # turns one after another and reuses its cached prefix (the previous turn) instead of reading it again.
        assert self.policy is not None
        workers = min(len(questions) * size, self.policy.max_concurrency)
        attempt = 0
        while True:
            try:
                return run_agents(agent, questions, samples_per_question=size, max_workers=workers)
            except LLMEndpointError:
                if self.served is None or attempt >= self.hparams.max_rollout_retries or not self.served.revive():
                    raise
                attempt += 1
                self.rollout_retries += 1
                logger.warning(
                    "the rollout server was restarted; sampling the %d groups again (retry %d of %d)",
                    len(questions),
                    attempt,
                    self.hparams.max_rollout_retries,
                )

    def _context_tokens(self) -> int:
        """The agent's window: the longest prompt plus the completion budget plus room for one more turn."""
        return self.hparams.max_prompt_length + self.hparams.max_completion_length + 2 * self.hparams.max_turn_tokens

    def _trainer_inputs(self, batch: FilledBatch[ScoredRollout], staleness: int = 0) -> dict[str, Any]:
        self.tokens_generated += batch.tokens_generated
        self.tokens_trained += batch.tokens_trained
        self.groups_sampled += batch.groups_sampled
        self.groups_dropped += batch.groups_dropped
        columns: dict[str, list[Any]] = {
            "prompt_ids": [],
            "completion_ids": [],
            "env_mask": [],
            "format_reward": [],
            "answer_reward": [],
        }
        for group, masked in zip(batch.groups, batch.masked, strict=True):
            for rollout in group.rollouts:
                sample = rollout.sample
                # A masked filler only holds a place in the batch: one masked token costs the trainer no pass over
                # a completion that would get no gradient anyway.
                completion_ids = sample.completion_ids[:1] if masked else sample.completion_ids
                env_mask = [0] if masked else sample.env_mask
                if not masked and not sample.truncated:
                    self._completion_tokens += len(env_mask)
                    self._masked_tokens += len(env_mask) - sum(env_mask)
                columns["prompt_ids"].append(sample.prompt_ids)
                columns["completion_ids"].append(completion_ids)
                columns["env_mask"].append(env_mask)
                columns["format_reward"].append(rollout.reward.format)
                columns["answer_reward"].append(rollout.reward.answer)
        rows = len(columns["prompt_ids"])
        logger.info(
            "rollouts: %d groups sampled in %d refill rounds, %d dropped (%.0f%%), %d masked fillers",
            batch.groups_sampled,
            batch.rounds,
            batch.groups_dropped,
            100 * batch.dropped_share,
            sum(batch.masked),
        )
        return {
            **columns,
            "logprobs": None,
            "dropped_group_share": [batch.dropped_share] * rows,
            "trained_token_share": [batch.trained_token_share] * rows,
            "policy_staleness": [float(staleness)] * rows,
            # The trained batch holds the kept groups (and fillers): these are the policy's own rates this step.
            "sampled_format_mean": [_mean([reward.format for reward in self._step_rewards])] * rows,
            "sampled_answer_mean": [_mean([reward.answer for reward in self._step_rewards])] * rows,
            "refill_rounds": [float(batch.rounds)] * rows,
        }


def _fitting_prompts(
    pool: list[RLPrompt],
    tokenizer: PreTrainedTokenizerBase,
    hparams: DAPOHyperparameters,
    environment: RolloutEnvironment,
) -> tuple[list[RLPrompt], dict[str, int]]:
    """Drop (and count) prompts longer than `max_prompt_length` and repeated questions; none left is an error."""
    date = environment.current_date or dt.date.today()
    kept: list[RLPrompt] = []
    seen: set[str] = set()
    dropped = {"too_long": 0, "duplicate_question": 0}
    for prompt in pool:
        if prompt.question in seen:
            dropped["duplicate_question"] += 1
            continue
        seen.add(prompt.question)
        messages = [
            {"role": "system", "content": system_message(date)},
            {"role": "user", "content": user_message(prompt.question, environment.search_results_per_query)},
        ]
        if len(chat_prompt_ids(tokenizer, messages)) > hparams.max_prompt_length:
            dropped["too_long"] += 1
            continue
        kept.append(prompt)
    if not kept:
        raise ValueError(
            f"none of the {len(pool)} RL prompts fits max_prompt_length={hparams.max_prompt_length} (dropped {dropped})"
        )
    return kept, dropped


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _history_entry(entry: dict[str, float]) -> dict[str, float]:
    keys = (
        "step",
        "loss",
        "reward",
        "reward_std",
        "rewards/format_reward/mean",
        "rewards/answer_reward/mean",
        "dynamic_sampling/dropped_group_share",
        "dynamic_sampling/trained_token_share",
        "rollouts/policy_staleness",
        "rollouts/sampled_format_mean",
        "rollouts/sampled_answer_mean",
        "completions/mean_length",
        "completions/clipped_ratio",
        "learning_rate",
        "grad_norm",
    )
    return {key: entry[key] for key in keys if key in entry}


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    main()
