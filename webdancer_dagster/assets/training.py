"""Stage 5, training: the base model folder, then SFT on the funnel's trajectories through the torchrun launcher.

`base_model` and `sft_checkpoint` each record their folder (path, sha256) in a one-row warehouse table, so the next
step and the checks find it there. SFT runs go to a folder named by a hash of their inputs: a rerun with the same
data, base model and hyperparameters reuses the finished run (or resumes a killed one) instead of training again.
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.training.artifacts import (
    describe_tokenizer,
    model_folder_sha256,
    plot_loss_curve,
    png_markdown,
    prepare_sft_run,
    probe_checkpoint,
    read_run_record,
    write_run_record,
)
from webdancer_dagster.training.base_model import folder_sha256, prepare_base_model
from webdancer_dagster.training.config import SFTHyperparameters, to_cli_args

SFT_MODULE = "webdancer_dagster.training.sft"
BASE_MODEL_TABLE = "base_model"
SFT_CHECKPOINT_TABLE = "sft_checkpoint"


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


class SFTCheckpointConfig(dg.Config):
    """SFT hyperparameters (see `SFTHyperparameters`); the defaults are the CPU smoke run."""

    max_steps: int = Field(default=4, description="Optimizer steps; -1 trains for num_train_epochs.")
    num_train_epochs: float = Field(default=1.0, description="Epochs over the data when max_steps is -1.")
    learning_rate: float = Field(default=5e-5, description="Peak AdamW learning rate.")
    per_device_train_batch_size: int = Field(default=1, description="Chats per device per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(default=1024, description="Longest tokenized chat, in tokens.")
    truncation: str = Field(default="truncate", description="Longer chats: 'truncate' or 'drop' (counted).")
    warmup_ratio: float = Field(default=0.1, description="Share of steps with linear warmup.")
    lr_scheduler_type: str = Field(default="cosine", description="transformers scheduler name.")
    save_steps: int = Field(default=50, description="Save a resumable checkpoint every N steps.")
    seed: int = Field(default=42, description="Seed for data order and initialisation.")

    def hyperparameters(self) -> SFTHyperparameters:
        return SFTHyperparameters(**self.model_dump())


@dg.asset(deps=["sft_dataset", base_model], group_name="training", kinds={"pytorch", "huggingface"})
def sft_checkpoint(
    context: dg.AssetExecutionContext, config: SFTCheckpointConfig, warehouse: Warehouse, torchrun: TorchrunLauncher
) -> dg.MaterializeResult:
    """SFT of the base model on `sft_dataset` (assistant turns only), launched under torchrun through Pipes."""
    store = warehouse.store()
    rows = store.read_table("sft_dataset")
    if rows.empty:
        raise ValueError("table sft_dataset has no rows: materialize the sft_dataset asset (the funnel) first")
    base = store.read_table(BASE_MODEL_TABLE).iloc[0]
    hparams = config.hyperparameters()
    run = prepare_sft_run(
        rows.to_dict("records"), base["sha256"], hparams.to_dict(), store.artifact_dir("sft_checkpoint")
    )
    record = read_run_record(run.output_dir)
    reused = record is not None
    if record is None:
        args = ["--train_file", str(run.train_file), "--model_dir", base["path"], "--output_dir", str(run.output_dir)]
        invocation = torchrun.run(context, SFT_MODULE, [*args, *to_cli_args(hparams)], run.output_dir / "logs")
        reported = invocation.get_materialize_result().metadata
        record = {key: value.value for key, value in reported.items()}
        write_run_record(run.output_dir, record)
    else:
        context.log.info(f"reusing the finished run {run.output_dir} (same data, base model and hyperparameters)")
    plot = plot_loss_curve(record["loss_curve"], run.output_dir / "loss_curve.png")
    store.replace_table(
        SFT_CHECKPOINT_TABLE,
        pd.DataFrame(
            [
                {
                    "path": record["checkpoint_path"],
                    "sha256": record["checkpoint_sha256"],
                    "run_key": run.run_key,
                    "steps": record["steps"],
                    "dataset_sha256": run.dataset_sha256,
                    "base_model_sha256": base["sha256"],
                }
            ]
        ),
    )
    return dg.MaterializeResult(
        metadata={
            "loss_curve": dg.MetadataValue.md(png_markdown(plot, "SFT loss curve")),
            "loss_curve_png": dg.MetadataValue.path(str(plot)),
            "loss_history": dg.MetadataValue.json(record["loss_curve"]),
            "final_loss": dg.MetadataValue.float(float(record["final_loss"])),
            "steps": record["steps"],
            "resumed_from_step": record["resumed_from_step"],
            "reused": reused,
            "examples": record["examples"],
            "sft_rows": run.examples,
            "dropped": dg.MetadataValue.json(record["dropped"]),
            "truncated": record["truncated"],
            "dataset_tokens": record["dataset_tokens"],
            "labelled_tokens": record["labelled_tokens"],
            "tokens_seen": record["tokens_seen"],
            "masked_token_share": dg.MetadataValue.float(float(record["masked_token_share"])),
            "seconds_per_step": dg.MetadataValue.float(float(record["seconds_per_step"])),
            "checkpoint_path": dg.MetadataValue.path(record["checkpoint_path"]),
            "checkpoint_sha256": record["checkpoint_sha256"],
            "run_key": run.run_key,
            "upstream_data_versions": dg.MetadataValue.json(
                {"sft_dataset": run.dataset_sha256, "base_model": base["sha256"]}
            ),
            "hyperparameters": dg.MetadataValue.json(hparams.to_dict()),
        },
        data_version=dg.DataVersion(record["checkpoint_sha256"]),
    )


@dg.asset_check(asset=sft_checkpoint, blocking=True)
def sft_checkpoint_loads(warehouse: Warehouse) -> dg.AssetCheckResult:
    """The final checkpoint loads with `from_pretrained`, is the one recorded, and gives finite logits."""
    recorded = warehouse.store().read_table(SFT_CHECKPOINT_TABLE).iloc[0]
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
