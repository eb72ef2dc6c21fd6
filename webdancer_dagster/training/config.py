"""Training hyperparameters as TRL-style dataclasses: every field documented, validated on construction.

They parse from the command line with `transformers.HfArgumentParser` (the torchrun entry points) and are
built directly from Dagster run config by the assets, so one definition serves both.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.training.masking import TruncationPolicy
from webdancer_dagster.web.scope import WebScope
from webdancer_dagster.web.search import TOP_K
from webdancer_dagster.web.visit import FetchPolicy

ROLLOUT_BACKENDS = ("local", "llama_cpp")
DYNAMIC_SAMPLING_METRICS = ("answer", "reward")
BF16_HELP = (
    "Train the fp32 weights under bf16 autocast. Empty: where the hardware does bf16 natively, a GPU or a CPU with "
    "AVX512-BF16 or AMX (a TRL SFT step of SmolLM2-135M over 1,536 tokens took 9.75 s against 15.39 in fp32 on 2 Zen 4 "
    "cores); elsewhere fp32, as bf16 would be emulated. The run reports which it used."
)


@dataclass
class SFTHyperparameters:
    """Supervised fine-tuning on WebDancer trajectories (assistant turns only)."""

    learning_rate: float = field(default=1e-5, metadata={"help": "Peak AdamW learning rate."})
    num_train_epochs: float = field(
        default=2.0, metadata={"help": "Epochs over the dataset (ignored if max_steps > 0)."}
    )
    max_steps: int = field(default=-1, metadata={"help": "Total optimizer steps; -1 trains for num_train_epochs."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Chats per device per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    max_length: int = field(
        default=4096,
        metadata={
            "help": "Longest training chat, in tokens. The shipped WebDancer trajectories (SmolLM2 tokens) have "
            "chats of median 4,650 and p95 6,500 tokens, assistant turns of median 520 and p95 970: at 4096, 199 of "
            "200 fit, most with shortened observations."
        },
    )
    truncation: TruncationPolicy = field(
        default=TruncationPolicy.SHORTEN_OBSERVATIONS,
        metadata={
            "help": "Chats longer than max_length: 'shorten_observations' cuts the <tool_response> texts, longest "
            "first, until the chat fits, and drops it when it does not fit even with empty observations; 'drop' "
            "drops every long chat. Both are counted; the assistant's text is never cut."
        },
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps with linear learning-rate warmup."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss and throughput every N steps."})
    save_steps: int = field(default=50, metadata={"help": "Save a resumable checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    activation_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in backward to fit longer chats."}
    )
    fused_lm_head: bool | None = field(
        default=None,
        metadata={
            "help": "Score the LM head with TRL's chunked kernel: no full logits in memory for long chats, at 0.93 "
            "to 1.23x the time per step on an H100 and 2-3x on CPU against the model's own loss. Empty: on GPU only."
        },
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    seed: int = field(default=42, metadata={"help": "Seed for data order and initialisation."})

    def __post_init__(self) -> None:
        from transformers import SchedulerType  # transformers loads in seconds: not when the definitions load

        self.truncation = TruncationPolicy(self.truncation)
        _require(self.learning_rate > 0, "learning_rate must be positive")
        _require(self.max_steps == -1 or self.max_steps > 0, "max_steps must be -1 or positive")
        _require(self.max_steps > 0 or self.num_train_epochs > 0, "set max_steps or a positive num_train_epochs")
        _require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1")
        _require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
        _require(self.max_length >= 16, "max_length must be at least 16 tokens")
        _require(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio must be in [0, 1)")
        _require(
            self.lr_scheduler_type in {scheduler.value for scheduler in SchedulerType},
            f"lr_scheduler_type {self.lr_scheduler_type!r} is not a transformers scheduler",
        )
        _require(self.weight_decay >= 0, "weight_decay must be >= 0")
        _require(self.max_grad_norm > 0, "max_grad_norm must be positive")
        _require(self.logging_steps >= 1, "logging_steps must be >= 1")
        _require(self.save_steps >= 1, "save_steps must be >= 1")
        _require(self.save_total_limit >= 1, "save_total_limit must be >= 1 (resume needs a checkpoint)")

    def to_dict(self) -> dict[str, Any]:
        return {
            key: str(value) if isinstance(value, TruncationPolicy) else value for key, value in asdict(self).items()
        }


@dataclass
class DAPOHyperparameters:
    """DAPO reinforcement learning (TRL GRPOTrainer with loss_type='dapo') plus dynamic sampling."""

    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (constant, as in DAPO)."})
    max_steps: int = field(default=100, metadata={"help": "Total optimizer steps."})
    num_generations: int = field(default=4, metadata={"help": "Rollouts per prompt (the group size)."})
    per_device_train_batch_size: int = field(
        default=4, metadata={"help": "Rollouts per device per micro-batch; with accumulation, whole groups."}
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range of the importance ratio."})
    epsilon_high: float = field(default=0.28, metadata={"help": "Upper clip range (DAPO clip-higher)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; DAPO uses 0 (no reference model)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of rollouts."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of rollouts."})
    max_prompt_length: int = field(
        default=2048, metadata={"help": "Longest prompt (system + question) in tokens; longer ones are dropped."}
    )
    max_completion_length: int = field(
        default=4096,
        metadata={
            "help": "Longest multi-turn completion (turns and observations) in tokens. The agent's window is "
            "max_prompt_length + this + 2 x max_turn_tokens: 8,192 by default, SmolLM2's context."
        },
    )
    max_turn_tokens: int = field(
        default=1024,
        metadata={
            "help": "Longest single assistant turn in tokens. The assistant turns of the shipped WebDancer "
            "trajectories have a median of 520 SmolLM2 tokens and a p95 of 970; a smaller budget cuts the turns SFT "
            "taught (sft_checkpoint records their p95)."
        },
    )
    mask_truncated_completions: bool = field(
        default=True, metadata={"help": "Exclude rollouts cut at a token limit from the loss."}
    )
    max_llm_calls: int = field(default=8, metadata={"help": "Agent turns per rollout before it is stopped."})
    format_weight: float = field(default=0.1, metadata={"help": "Reward weight of the format score."})
    answer_weight: float = field(default=0.9, metadata={"help": "Reward weight of the judged answer."})
    oversample_factor: float = field(
        default=2.0, metadata={"help": "Prompts sampled per needed group, so dropped groups can be replaced."}
    )
    max_refill_rounds: int = field(
        default=2, metadata={"help": "Extra sampling rounds to refill groups dropped by dynamic sampling."}
    )
    dynamic_sampling_metric: str = field(
        default="answer",
        metadata={
            "help": "What a group's rollouts must differ in to be trained on: 'answer' (DAPO's accuracy: groups all "
            "right or all wrong are dropped) or 'reward' (the whole weighted reward, verl's `seq_reward`: an all-wrong "
            "group in which some rollouts broke the format is kept, so the format keeps a gradient of its own)."
        },
    )
    logging_steps: int = field(default=1, metadata={"help": "Log rewards and drops every N steps."})
    save_steps: int = field(default=25, metadata={"help": "Save a resumable checkpoint every N steps."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    fused_lm_head: bool | None = field(
        default=None,
        metadata={
            "help": "Score completions with TRL's chunked LM-head kernel (no full logits in memory); without Triton "
            "it scores every prompt position too, several times slower. Empty: on GPU only."
        },
    )
    bf16: bool | None = field(default=None, metadata={"help": BF16_HELP})
    rollout_backend: str = field(
        default="local",
        metadata={
            "help": "Where rollouts are sampled: 'local' (transformers generate on the trainer's own weights) or "
            "'llama_cpp' (the project's llama.cpp server on 127.0.0.1, one per rank, serving the trainer's weights "
            "exported to GGUF at each sync; several times faster on CPU). vLLM's weight-update path is not built "
            "(served_policy.PolicyServer is its interface)."
        },
    )
    sync_every_steps: int = field(
        default=1,
        metadata={
            "help": "llama_cpp: sync the trainer's weights into the server every N optimizer steps; in between, "
            "rollouts come from weights up to N-1 steps old (bounded staleness, reported per step)."
        },
    )
    rollout_server_threads: int | None = field(
        default=None,
        metadata={"help": "llama_cpp: CPU threads of each rank's server. Empty: half the cores, shared by the ranks."},
    )
    rollout_gguf_outtype: str = field(
        default="f16", metadata={"help": "llama_cpp: weights of the synced GGUF ('f32', 'f16' or 'q8_0')."}
    )
    max_rollout_retries: int = field(
        default=2,
        metadata={
            "help": "llama_cpp: when the server dies during a step's rollouts, restart it and sample the step's "
            "groups again, at most this many times; a step never trains on a half-finished group."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for prompt order and sampling."})

    def __post_init__(self) -> None:
        _require(self.learning_rate > 0, "learning_rate must be positive")
        _require(self.max_steps > 0, "max_steps must be positive")
        _require(
            self.dynamic_sampling_metric in DYNAMIC_SAMPLING_METRICS,
            f"dynamic_sampling_metric must be one of {DYNAMIC_SAMPLING_METRICS}, got {self.dynamic_sampling_metric!r}",
        )
        _require(
            self.rollout_backend in ROLLOUT_BACKENDS,
            f"rollout_backend must be one of {ROLLOUT_BACKENDS}, got {self.rollout_backend!r}"
            + (
                ": vLLM rollouts with weight sync are not implemented (served_policy.PolicyServer is where they would "
                "go); use 'local' on GPU"
                if self.rollout_backend == "vllm"
                else ""
            ),
        )
        _require(self.sync_every_steps >= 1, "sync_every_steps must be >= 1")
        _require(
            self.rollout_server_threads is None or self.rollout_server_threads >= 1,
            "rollout_server_threads must be >= 1 (or empty)",
        )
        _require(self.rollout_gguf_outtype in ("f32", "f16", "q8_0"), "rollout_gguf_outtype must be f32, f16 or q8_0")
        _require(self.max_rollout_retries >= 0, "max_rollout_retries must be >= 0")
        _require(self.num_generations >= 2, "num_generations must be >= 2 (advantages compare within a group)")
        _require(self.per_device_train_batch_size >= 1, "per_device_train_batch_size must be >= 1")
        _require(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
        _require(
            self.per_device_train_batch_size * self.gradient_accumulation_steps % self.num_generations == 0,
            "per_device_train_batch_size x gradient_accumulation_steps must be a multiple of num_generations: "
            "dynamic sampling needs every rank to hold whole groups",
        )
        _require(0 < self.epsilon < 1, "epsilon must be in (0, 1)")
        _require(self.epsilon_high >= self.epsilon, "epsilon_high must be >= epsilon (clip-higher)")
        _require(self.beta >= 0, "beta must be >= 0")
        _require(self.temperature > 0, "temperature must be positive (rollouts are sampled)")
        _require(0 < self.top_p <= 1, "top_p must be in (0, 1]")
        _require(self.max_prompt_length >= 16, "max_prompt_length must be at least 16 tokens")
        _require(self.max_completion_length >= 16, "max_completion_length must be at least 16 tokens")
        _require(self.max_turn_tokens >= 1, "max_turn_tokens must be >= 1")
        _require(self.max_llm_calls >= 1, "max_llm_calls must be >= 1")
        _require(self.format_weight >= 0 and self.answer_weight >= 0, "reward weights must be >= 0")
        _require(abs(self.format_weight + self.answer_weight - 1.0) < 1e-9, "format_weight + answer_weight must be 1")
        _require(self.oversample_factor >= 1.0, "oversample_factor must be >= 1")
        _require(self.max_refill_rounds >= 0, "max_refill_rounds must be >= 0")
        _require(self.logging_steps >= 1, "logging_steps must be >= 1")
        _require(self.save_steps >= 1, "save_steps must be >= 1")
        _require(self.save_total_limit >= 1, "save_total_limit must be >= 1 (resume needs a checkpoint)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RolloutEnvironment(BaseModel):
    """The web and the judges one rollout needs, as a file every rank reads (endpoint API keys stay env vars)."""

    model_config = ConfigDict(frozen=True)

    search_index: str
    blocked_hosts: list[str] = []
    allowed_hosts: list[str] | None = None
    proxy_url: str | None = None
    direct_hosts: list[str] = []  # declared live sites: fetched directly, not through the proxy
    private_network_hosts: list[str] = []
    judge: EndpointConfig | None = None  # None: the judging rules alone (no capable judge declared)
    summarizer: EndpointConfig
    current_date: dt.date | None = None
    search_results_per_query: int = Field(TOP_K, ge=1)

    def scope(self) -> WebScope:
        """What the rollouts' tools may reach: the hosts and proxy the asset chose (`WebScope.synthesis`)."""
        allowed = frozenset(self.allowed_hosts) if self.allowed_hosts is not None else None
        fetch = FetchPolicy(
            allowed_hosts=allowed,
            proxy_url=self.proxy_url,
            direct_hosts=frozenset(self.direct_hosts),
            private_network_hosts=frozenset(self.private_network_hosts),
        )
        return WebScope(fetch, frozenset(self.blocked_hosts))

    @classmethod
    def of_scope(cls, scope: WebScope, **fields: Any) -> RolloutEnvironment:
        """The environment file's view of `scope` (what every rank rebuilds with `scope()`), with the other fields."""
        return cls(
            blocked_hosts=sorted(scope.blocked_hosts),
            allowed_hosts=sorted(scope.fetch.allowed_hosts) if scope.fetch.allowed_hosts is not None else None,
            proxy_url=scope.fetch.proxy_url,
            direct_hosts=sorted(scope.fetch.direct_hosts),
            private_network_hosts=sorted(scope.fetch.private_network_hosts),
            **fields,
        )


def to_cli_args(hparams: SFTHyperparameters | DAPOHyperparameters) -> list[str]:
    """Command-line flags that `HfArgumentParser` parses back into an equal dataclass (unset options left out)."""
    return [
        token for key, value in hparams.to_dict().items() if value is not None for token in (f"--{key}", str(value))
    ]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
