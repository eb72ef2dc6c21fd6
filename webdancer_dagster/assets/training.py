"""Stage 5, training: the base model folder, SFT on the funnel's trajectories, then DAPO on the RL pool.

`base_model`, `sft_checkpoint` and `rl_checkpoint` each record their folder (path, sha256) in a one-row warehouse
table, so the next step, the checks and evaluation find it there. Training runs go through the torchrun launcher
to a folder named by a hash of their inputs: a rerun with the same data, start model and settings reuses the
finished run (or resumes a killed one) instead of training again. Non-blocking checks warn when SFT dropped or
shortened most chats (or learned from no token) and when DAPO steps trained on nothing.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.assets.automation import automate_training, training_condition
from webdancer_dagster.assets.check_results import check_latest_metadata, counts_text
from webdancer_dagster.concurrency import TRAINING_POOL
from webdancer_dagster.evaluation.models import TRAINED_TURN_COLUMN, trained_turn_tokens_p95
from webdancer_dagster.files import write_text_atomic
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.resources.llm import LLMEndpointResource
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.artifacts import (
    RunInputs,
    describe_tokenizer,
    model_folder_sha256,
    plot_curves,
    png_markdown,
    prepare_run,
    probe_checkpoint,
    read_run_record,
    remove_resume_checkpoints,
    rl_jsonl,
    sft_jsonl,
    write_run_record,
)
from webdancer_dagster.training.base_model import prepare_base_model
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment, SFTHyperparameters, to_cli_args
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.scope import LocalSites, WebScope

SFT_MODULE = "webdancer_dagster.training.sft"
DAPO_MODULE = "webdancer_dagster.training.dapo"
BASE_MODEL_TABLE = "base_model"
SFT_CHECKPOINT_TABLE = "sft_checkpoint"
RL_CHECKPOINT_TABLE = "rl_checkpoint"
ENVIRONMENT_FILE = "rollout_environment.json"
# Training follows a new sft_dataset / rl_pool / checkpoint data version only with $WEBDANCER_AUTOMATE_TRAINING=1.
TRAINING_AUTOMATION = training_condition(automate_training())
REWARD_SERIES = {
    "reward": "reward of the trained batch (0.1 format + 0.9 answer)",
    "rewards/format_reward/mean": "format, trained batch",
    "rewards/answer_reward/mean": "answer, trained batch",
    "rollouts/sampled_format_mean": "format, all rollouts sampled",
    "rollouts/sampled_answer_mean": "answer, all rollouts sampled",
    "dynamic_sampling/dropped_group_share": "dropped group share",
}


class BaseModelConfig(dg.Config):
    source: str | None = Field(
        default=None,
        description="A transformers model folder or a .gguf file; empty: the offline SmolLM2-135M-Instruct GGUF.",
    )


@dg.asset(group_name="training", kinds={"pytorch", "huggingface"})
def base_model(
    context: dg.AssetExecutionContext, config: BaseModelConfig, warehouse: Warehouse
) -> dg.MaterializeResult:
    """The full-precision transformers folder SFT starts from (a GGUF is converted once, cached by its hash)."""
    store = warehouse.store()
    source = Path(config.source) if config.source else find_smollm2_gguf()
    model = prepare_base_model(source, store.artifact_dir("base_model"))
    sha256 = model_folder_sha256(model, source)
    store.replace_table(
        BASE_MODEL_TABLE,
        pd.DataFrame(
            [{"path": str(model.path), "sha256": sha256, "source": model.source, "parameters": model.parameters}]
        ),
    )
    context.log.info(f"base model {model.path}: {model.parameters:,} parameters, sha256 {sha256[:12]}")
    return dg.MaterializeResult(
        metadata={
            "parameters": model.parameters,
            "vocab_size": model.vocab_size,
            "tokenizer": dg.MetadataValue.json(describe_tokenizer(model.path)),
            "source": model.source,
            "path": dg.MetadataValue.path(str(model.path)),
            "sha256": sha256,
        },
        data_version=dg.DataVersion(sha256),
    )


def _hyperparameter(hyperparameters: type, name: str) -> Any:
    """A config field with the dataclass field's default and help text, so run config and the command line agree.

    The smoke and full runs set their own values in `profiles/`; the class defaults are the training defaults.
    """
    spec = next(spec for spec in dataclasses.fields(hyperparameters) if spec.name == name)
    default = spec.default.value if isinstance(spec.default, Enum) else spec.default
    return Field(default=default, description=spec.metadata["help"])


def _sft(name: str) -> Any:
    return _hyperparameter(SFTHyperparameters, name)


def _dapo(name: str) -> Any:
    return _hyperparameter(DAPOHyperparameters, name)


class SFTCheckpointConfig(dg.Config):
    """SFT hyperparameters: a subset of `SFTHyperparameters`, with its defaults and descriptions."""

    max_steps: int = _sft("max_steps")
    num_train_epochs: float = _sft("num_train_epochs")
    learning_rate: float = _sft("learning_rate")
    per_device_train_batch_size: int = _sft("per_device_train_batch_size")
    gradient_accumulation_steps: int = _sft("gradient_accumulation_steps")
    max_length: int = _sft("max_length")
    truncation: str = _sft("truncation")
    warmup_ratio: float = _sft("warmup_ratio")
    lr_scheduler_type: str = _sft("lr_scheduler_type")
    save_steps: int = _sft("save_steps")
    bf16: bool | None = _sft("bf16")
    seed: int = _sft("seed")

    def hyperparameters(self) -> SFTHyperparameters:
        return SFTHyperparameters(**self.model_dump())


def _train_or_reuse(
    context: dg.AssetExecutionContext, run: RunInputs, launch: Callable[[], dg.PipesClientCompletedInvocation]
) -> tuple[dict[str, Any], bool]:
    """The record of the finished run in `run.output_dir`; `launch` (or resume) the run only when there is none."""
    record = read_run_record(run.output_dir)
    if record is not None:
        context.log.info(f"reusing the finished run {run.output_dir} (same data, start model and settings)")
        return record, True
    invocation = launch()
    reported = invocation.get_materialize_result().metadata
    record = {key: value.value for key, value in reported.items()}
    write_run_record(run.output_dir, record)
    freed = remove_resume_checkpoints(run.output_dir)  # after the record: a kill in between leaves a finished run
    context.log.info(f"removed the finished run's resume checkpoints: {freed / 1e6:.1f} MB freed")
    return record, False


def _record_checkpoint(
    store: WarehouseStore, table: str, record: dict[str, Any], run: RunInputs, **columns: str | int
) -> None:
    """The one-row table that tells checks, later steps and evaluation which checkpoint is current (and the
    `columns` they need about it: lineage, what it was trained on)."""
    row = {
        "path": record["checkpoint_path"],
        "sha256": record["checkpoint_sha256"],
        "run_key": run.run_key,
        "steps": record["steps"],
        "dataset_sha256": run.dataset_sha256,
        **columns,
    }
    store.replace_table(table, pd.DataFrame([row]))


def _read_rows(store: WarehouseStore, table: str, hint: str) -> pd.DataFrame:
    rows = store.read_table(table) if store.table_exists(table) else pd.DataFrame()
    if rows.empty:
        raise ValueError(f"table {table} has no rows: {hint}")
    return rows


@dg.asset(
    deps=["sft_dataset", base_model],
    group_name="training",
    kinds={"pytorch", "huggingface"},
    automation_condition=TRAINING_AUTOMATION,
    pool=TRAINING_POOL,
)
def sft_checkpoint(
    context: dg.AssetExecutionContext, config: SFTCheckpointConfig, warehouse: Warehouse, torchrun: TorchrunLauncher
) -> dg.MaterializeResult:
    """SFT of the base model on `sft_dataset` (assistant turns only), launched under torchrun through Pipes."""
    store = warehouse.store()
    rows = _read_rows(store, "sft_dataset", "materialize the sft_dataset asset (the funnel) first")
    base = store.read_table(BASE_MODEL_TABLE).iloc[0]
    hparams = config.hyperparameters()
    records = rows.to_dict("records")
    run = prepare_run(
        sft_jsonl(records), len(records), base["sha256"], hparams.to_dict(), store.artifact_dir("sft_checkpoint")
    )
    args = ["--train_file", str(run.train_file), "--model_dir", base["path"], "--output_dir", str(run.output_dir)]
    record, reused = _train_or_reuse(
        context, run, lambda: torchrun.run(context, SFT_MODULE, [*args, *to_cli_args(hparams)], run.output_dir / "logs")
    )
    # Evaluation compares a policy's turn budget against the turns this checkpoint learned to write.
    trained_p95 = int(record["assistant_turn_tokens"]["p95"])
    _record_checkpoint(
        store, SFT_CHECKPOINT_TABLE, record, run, base_model_sha256=base["sha256"], **{TRAINED_TURN_COLUMN: trained_p95}
    )
    return dg.MaterializeResult(
        metadata={
            **_sft_metadata(record, run),
            "reused": reused,
            "upstream_content_hashes": dg.MetadataValue.json(
                {"sft_dataset": run.dataset_sha256, "base_model": base["sha256"]}
            ),
            "hyperparameters": dg.MetadataValue.json(hparams.to_dict()),
        },
        data_version=dg.DataVersion(record["checkpoint_sha256"]),
    )


def _sft_metadata(record: dict[str, Any], run: RunInputs) -> dict[str, object]:
    """The loss curve, what the run trained on (lengths, drops, shortened chats, masked share) and where it went."""
    plot = plot_curves(
        record["loss_curve"], {"loss": "loss"}, run.output_dir / "loss_curve.png", "SFT training loss",
        "loss (assistant tokens)",
    )  # fmt: skip
    return {
        "loss_curve": dg.MetadataValue.md(png_markdown(plot, "SFT loss curve")),
        "loss_curve_png": dg.MetadataValue.path(str(plot)),
        # The step-by-step history is a file, not JSON metadata: hundreds of steps would make the asset page endless.
        "loss_history_file": dg.MetadataValue.path(record["loss_history_file"]),
        "first_loss": dg.MetadataValue.float(float(record["loss_curve"][0]["loss"]) if record["loss_curve"] else 0.0),
        "lowest_loss": dg.MetadataValue.float(min((float(e["loss"]) for e in record["loss_curve"]), default=0.0)),
        "final_loss": dg.MetadataValue.float(float(record["final_loss"])),
        "steps": record["steps"],
        "resumed_from_step": record["resumed_from_step"],
        "examples": record["examples"],
        "sft_rows": run.examples,
        "dropped": dg.MetadataValue.json(record["dropped"]),
        "shortened": dg.MetadataValue.json(record["shortened"]),
        "chat_tokens": dg.MetadataValue.json(record["chat_tokens"]),
        "assistant_turn_tokens": dg.MetadataValue.json(record["assistant_turn_tokens"]),
        "dataset_tokens": record["dataset_tokens"],
        "labelled_tokens": record["labelled_tokens"],
        "tokens_seen": record["tokens_seen"],
        "masked_token_share": dg.MetadataValue.float(float(record["masked_token_share"])),
        "seconds_per_step": dg.MetadataValue.float(float(record["seconds_per_step"])),
        "checkpoint_path": dg.MetadataValue.path(record["checkpoint_path"]),
        "checkpoint_sha256": record["checkpoint_sha256"],
        "run_key": run.run_key,
    }


@dg.asset_check(asset=sft_checkpoint, blocking=True)
def sft_checkpoint_loads(warehouse: Warehouse) -> dg.AssetCheckResult:
    """The SFT checkpoint loads with `from_pretrained`, is the one recorded, and gives finite logits."""
    return _checkpoint_check(warehouse.store().read_table(SFT_CHECKPOINT_TABLE).iloc[0])


def _checkpoint_check(recorded: pd.Series) -> dg.AssetCheckResult:
    folder = Path(recorded["path"])
    actual_sha256 = folder_sha256(folder)
    probe = probe_checkpoint(folder)
    return dg.AssetCheckResult(
        passed=probe.finite and actual_sha256 == recorded["sha256"],
        metadata={
            "expected": "loads with AutoModelForCausalLM.from_pretrained; finite logits; sha256 as recorded",
            "actual": f"logits {list(probe.logits_shape)}, {probe.non_finite} non-finite",
            "non_finite_logits": probe.non_finite,
            "threshold": 0,
            "expected_sha256": recorded["sha256"],
            "actual_sha256": actual_sha256,
            "checkpoint_path": dg.MetadataValue.path(str(folder)),
        },
    )


class RLCheckpointConfig(dg.Config):
    """DAPO hyperparameters: a subset of `DAPOHyperparameters`, with its defaults and descriptions."""

    start_from: str = Field(default="sft", description="'sft' (WebDancer: RL after the cold start) or 'base'.")
    max_prompts: int | None = Field(default=None, description="Use the first N RL-pool prompts (by id); empty: all.")
    pool_sources: list[str] | None = Field(
        default=None,
        description="Train only on RL-pool pairs of these sources (crawlqa, e2hqa, webdancer_sample); empty: all. The "
        "released pairs need the live web: on the local web no rollout can answer them, so no group is kept.",
    )
    max_steps: int = _dapo("max_steps")
    learning_rate: float = _dapo("learning_rate")
    num_generations: int = _dapo("num_generations")
    per_device_train_batch_size: int = _dapo("per_device_train_batch_size")
    gradient_accumulation_steps: int = _dapo("gradient_accumulation_steps")
    temperature: float = _dapo("temperature")
    max_prompt_length: int = _dapo("max_prompt_length")
    max_completion_length: int = _dapo("max_completion_length")
    max_turn_tokens: int = _dapo("max_turn_tokens")
    max_llm_calls: int = _dapo("max_llm_calls")
    oversample_factor: float = _dapo("oversample_factor")
    max_refill_rounds: int = _dapo("max_refill_rounds")
    dynamic_sampling_metric: str = _dapo("dynamic_sampling_metric")
    save_steps: int = _dapo("save_steps")
    rollout_backend: str = _dapo("rollout_backend")
    sync_every_steps: int = _dapo("sync_every_steps")
    rollout_server_threads: int | None = _dapo("rollout_server_threads")
    rollout_gguf_outtype: str = _dapo("rollout_gguf_outtype")
    max_rollout_retries: int = _dapo("max_rollout_retries")
    bf16: bool | None = _dapo("bf16")
    seed: int = _dapo("seed")

    def hyperparameters(self) -> DAPOHyperparameters:
        return DAPOHyperparameters(**self.model_dump(exclude={"start_from", "max_prompts", "pool_sources"}))


@dg.asset(
    deps=["rl_pool", sft_checkpoint, base_model, "search_index"],
    group_name="training",
    automation_condition=TRAINING_AUTOMATION,
    pool=TRAINING_POOL,
    kinds={"pytorch", "huggingface"},
)
def rl_checkpoint(
    context: dg.AssetExecutionContext,
    config: RLCheckpointConfig,
    warehouse: Warehouse,
    web: WebEnvironment,
    judge: LLMEndpointResource,
    summarizer: LLMEndpointResource,
    torchrun: TorchrunLauncher,
) -> dg.MaterializeResult:
    """DAPO on `rl_pool`: the agent's multi-turn rollouts on the non-benchmark local web, judged by `judge`."""
    if config.start_from not in ("sft", "base"):
        raise ValueError(f"start_from must be 'sft' or 'base', got {config.start_from!r}")
    store = warehouse.store()
    records = _rl_prompts(store, config)
    start_table = SFT_CHECKPOINT_TABLE if config.start_from == "sft" else BASE_MODEL_TABLE
    start = _read_rows(store, start_table, f"materialize {start_table} first, or set start_from").iloc[0]
    hparams = config.hyperparameters()
    settings = _rl_run_settings(hparams, judge, web)
    trained_p95 = _trained_turn_budget(context, start, start_table, hparams)
    run = prepare_run(rl_jsonl(records), len(records), start["sha256"], settings, store.artifact_dir("rl_checkpoint"))
    launch = partial(_launch_dapo, context, run, start["path"], hparams, store, web, judge, summarizer, torchrun)
    record, reused = _train_or_reuse(context, run, launch)
    lineage = {"start_model_sha256": start["sha256"], "start_from": config.start_from}
    if trained_p95 is not None:  # the SFT set behind the start model is the one behind this checkpoint too
        lineage[TRAINED_TURN_COLUMN] = trained_p95
    _record_checkpoint(store, RL_CHECKPOINT_TABLE, record, run, **lineage)
    upstream = {"rl_pool": run.dataset_sha256, start_table: start["sha256"], "search_index": settings["search_index"]}
    settings_metadata = {
        "start_from": config.start_from,
        "judge": settings["judge"],
        "max_turn_tokens": hparams.max_turn_tokens,
        "search_results_per_query": settings["search_results_per_query"],
        "trained_turn_tokens_p95": trained_p95 if trained_p95 is not None else dg.MetadataValue.null(),
        "hyperparameters": dg.MetadataValue.json(hparams.to_dict()),
        "upstream_content_hashes": dg.MetadataValue.json(upstream),
    }
    metadata = {**_rl_metadata(record, run), **settings_metadata, "reused": reused}
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(record["checkpoint_sha256"]))


def _rl_run_settings(hparams: DAPOHyperparameters, judge: LLMEndpointResource, web: WebEnvironment) -> dict[str, Any]:
    """Everything besides the data and the start model that makes one DAPO run differ from another: its run key."""
    return {
        **hparams.to_dict(),
        "judge": judge.judge_name(),
        "search_index": web.local_index_content(),
        "search_results_per_query": web.search_results_per_query,
    }


def _trained_turn_budget(
    context: dg.AssetExecutionContext, start: pd.Series, start_table: str, hparams: DAPOHyperparameters
) -> int | None:
    """The p95 assistant turn of the SFT set behind the start model (None: it saw none), with a warning when the
    rollouts' turn budget would cut turns of that length."""
    trained_p95 = trained_turn_tokens_p95(start)
    if trained_p95 is not None and hparams.max_turn_tokens < trained_p95:
        context.log.warning(
            f"rl_checkpoint: max_turn_tokens {hparams.max_turn_tokens} is below the p95 assistant turn "
            f"({trained_p95} tokens) of the SFT set behind {start_table}: rollouts will cut turns it learned to write"
        )
    return trained_p95


def _rl_prompts(store: WarehouseStore, config: RLCheckpointConfig) -> list[dict[str, Any]]:
    """The RL pool's pairs of the chosen sources, in id order, the first `max_prompts` of them."""
    pool = _read_rows(store, "rl_pool", "materialize rl_pool (the funnel); it holds the pairs SFT could not solve")
    if config.pool_sources is not None:
        pool = pool[pool["source"].isin(config.pool_sources)]
        if pool.empty:
            raise ValueError(f"the RL pool holds no pair of the sources {config.pool_sources}")
    return sorted(pool.to_dict("records"), key=lambda row: str(row["id"]))[: config.max_prompts]


def _launch_dapo(
    context: dg.AssetExecutionContext,
    run: RunInputs,
    start_path: str,
    hparams: DAPOHyperparameters,
    store: WarehouseStore,
    web: WebEnvironment,
    judge: LLMEndpointResource,
    summarizer: LLMEndpointResource,
    torchrun: TorchrunLauncher,
) -> dg.PipesClientCompletedInvocation:
    """Serve the non-benchmark web for the run's lifetime and tell every rank where it and the judges are.

    The rules judge every answer; the judge model only what they leave open, and only when declared capable."""
    with web.serve() as proxy_url:
        scope = WebScope.synthesis(LocalSites.of_home(store), proxy_url)
        environment = RolloutEnvironment.of_scope(
            scope,
            search_index=str(web.local_index_dir()),
            judge=judge.endpoint_config() if judge.capable_judge else None,
            summarizer=summarizer.endpoint_config(),
            search_results_per_query=web.search_results_per_query,
        )
        environment_file = run.output_dir / ENVIRONMENT_FILE
        write_text_atomic(environment_file, environment.model_dump_json(indent=1))
        args = [
            *["--train_file", str(run.train_file), "--environment_file", str(environment_file)],
            *["--model_dir", start_path, "--output_dir", str(run.output_dir), *to_cli_args(hparams)],
        ]
        return torchrun.run(context, DAPO_MODULE, args, run.output_dir / "logs")


def _history_file(record: Mapping[str, Any], run: RunInputs) -> str:
    """Where the DAPO program wrote its step history (runs recorded before it reported the path: the same place)."""
    return str(record.get("train_history_file") or run.output_dir / "train_history.json")


def _rl_metadata(record: dict[str, Any], run: RunInputs) -> dict[str, object]:
    """Reward and loss curves per step, what dynamic sampling kept, where the time went, and the checkpoint."""
    history = record["train_history"]
    rewards_plot = plot_curves(
        history, REWARD_SERIES, run.output_dir / "reward_curve.png", "DAPO rewards per step", "mean reward"
    )
    loss_plot = plot_curves(history, {"loss": "loss"}, run.output_dir / "loss_curve.png", "DAPO loss", "loss")
    return {
        "reward_curve": dg.MetadataValue.md(png_markdown(rewards_plot, "DAPO reward curve")),
        "loss_curve": dg.MetadataValue.md(png_markdown(loss_plot, "DAPO loss curve")),
        # The step-by-step history is a file, not JSON metadata: hundreds of steps would make the asset page endless.
        "train_history_file": dg.MetadataValue.path(_history_file(record, run)),
        "idle_steps": dg.MetadataValue.json(idle_steps(history)),
        "final_reward": dg.MetadataValue.float(float(record["final_reward"] or 0.0)),
        "steps": record["steps"],
        "resumed_from_step": record["resumed_from_step"],
        "prompts": record["prompts"],
        "dropped_prompts": dg.MetadataValue.json(record["dropped_prompts"]),
        "groups_sampled": record["groups_sampled"],
        "dropped_group_share": dg.MetadataValue.float(float(record["dropped_group_share"])),
        "tokens_generated": record["tokens_generated"],
        "tokens_trained": record["tokens_trained"],
        "trained_token_share": dg.MetadataValue.float(float(record["trained_token_share"])),
        "rollout_time_share": dg.MetadataValue.float(float(record["rollout_time_share"])),
        "masked_token_share": dg.MetadataValue.float(float(record["masked_token_share"])),
        "seconds_per_step": dg.MetadataValue.float(float(record["seconds_per_step"])),
        "rollout_backend": record.get("rollout_backend", "local"),
        "sync_time_share": dg.MetadataValue.float(float(record.get("sync_time_share", 0.0))),
        "weight_syncs": dg.MetadataValue.json(record.get("weight_syncs", [])),
        "policy_staleness": dg.MetadataValue.json(record.get("policy_staleness", [])),
        "rollout_retries": record.get("rollout_retries", 0),
        "pool_pass_rates": dg.MetadataValue.json(record.get("pool_pass_rates", {})),
        "checkpoint_path": dg.MetadataValue.path(record["checkpoint_path"]),
        "checkpoint_sha256": record["checkpoint_sha256"],
        "run_key": run.run_key,
    }


@dg.asset_check(asset=rl_checkpoint, blocking=True)
def rl_checkpoint_loads(warehouse: Warehouse) -> dg.AssetCheckResult:
    """The RL checkpoint loads with `from_pretrained`, is the one recorded, and gives finite logits."""
    return _checkpoint_check(warehouse.store().read_table(RL_CHECKPOINT_TABLE).iloc[0])


def sft_training_problems(record: Mapping[str, Any], max_length: int | None = None) -> list[str]:
    """Words for an SFT run that trained on 0 labelled tokens, or that dropped or shortened most chats to fit them;
    `record` is the run record or the asset's metadata (examples, dropped, shortened, labelled_tokens)."""
    dropped, shortened = dict(record["dropped"]), dict(record["shortened"])
    chats = int(record["examples"]) + sum(dropped.values())
    changed = sum(dropped.values()) + sum(shortened.values())
    problems = []
    if int(record["labelled_tokens"]) == 0:
        problems.append("SFT trained on 0 labelled (assistant) tokens: no chat left a token to learn from.")
    if chats and 2 * changed > chats:
        fit = f" into max_length={max_length} tokens" if max_length else ""
        problems.append(
            f"the trainer dropped {sum(dropped.values())} and shortened {sum(shortened.values())} of {chats} chats to "
            f"fit them{fit} (dropped: {counts_text(dropped) or 'none'}; shortened: {counts_text(shortened) or 'none'})"
            ": most of the SFT set was not trained on as it is. See chat_tokens, dropped and shortened in the "
            "materialization metadata; raise max_length or keep shorter trajectories."
        )
    return problems


@dg.asset_check(
    asset=sft_checkpoint,
    blocking=False,
    description="A warning (the pipeline goes on) when SFT trained on 0 labelled tokens, or dropped or shortened most "
    "chats to fit max_length (read from the latest materialization's metadata).",
)
def sft_checkpoint_trained_on_its_chats(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return check_latest_metadata(context, "sft_checkpoint", _sft_verdict)


def _sft_verdict(record: Mapping[str, Any]) -> tuple[list[str], str, dict[str, object]]:
    max_length = (record.get("hyperparameters") or {}).get("max_length")
    return (
        sft_training_problems(record, max_length),
        f"trained on {record['examples']} chats ({record['labelled_tokens']} labelled tokens)",
        {
            "examples": int(record["examples"]),
            "labelled_tokens": int(record["labelled_tokens"]),
            "dropped": dg.MetadataValue.json(dict(record["dropped"])),
            "shortened": dg.MetadataValue.json(dict(record["shortened"])),
        },
    )


def idle_steps(history: Sequence[Mapping[str, float]]) -> list[int]:
    """The DAPO steps in which dynamic sampling dropped every group (dropped share 1): they trained on nothing."""
    return sorted(
        {
            int(entry.get("step", index + 1))
            for index, entry in enumerate(history)
            if entry.get("dynamic_sampling/dropped_group_share", 0.0) >= 1.0
        }
    )


def rl_training_problems(idle: Sequence[int], steps: int) -> list[str]:
    """Words for a DAPO run of `steps` steps of which the `idle` ones trained on nothing."""
    if not idle:
        return []
    steps = max(steps, len(idle))
    shown = ", ".join(map(str, idle[:10])) + (" …" if len(idle) > 10 else "")
    return [
        f"dynamic sampling dropped every group in {len(idle)} of {steps} steps (step {shown}): all rollouts of each "
        "group got the same reward, so those steps trained on nothing (loss 0). The start model never (or always) "
        "answers the RL pool's questions on this web, or the judge never credits an answer; see train_history_file and "
        "reward_curve in the materialization metadata."
    ]


@dg.asset_check(
    asset=rl_checkpoint,
    blocking=False,
    description="A warning (the pipeline goes on) when dynamic sampling dropped every group in a DAPO step, so the "
    "step trained on nothing; says how many (read from the latest materialization's metadata).",
)
def rl_checkpoint_every_step_trained(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    return check_latest_metadata(context, "rl_checkpoint", _rl_verdict)


def _rl_verdict(record: Mapping[str, Any]) -> tuple[list[str], str, dict[str, object]]:
    # Materializations recorded before `idle_steps` was metadata carry the whole history instead.
    idle = record["idle_steps"] if "idle_steps" in record else idle_steps(record["train_history"])
    return (
        rl_training_problems(idle, int(record["steps"])),
        f"every one of {record['steps']} steps trained on at least one group",
        {
            "steps": int(record["steps"]),
            "steps_trained_on_nothing": len(idle),
            "idle_steps": dg.MetadataValue.json(idle),
        },
    )
