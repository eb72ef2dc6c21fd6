"""Hyperparameter dataclasses reject bad values on construction, round-trip through the command line, and are the
one source of the training assets' config defaults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import dagster as dg
import pytest

from webdancer_dagster.assets.training import RLCheckpointConfig, SFTCheckpointConfig
from webdancer_dagster.pipeline import load_profile
from webdancer_dagster.training import reporting
from webdancer_dagster.training.config import DAPOHyperparameters, SFTHyperparameters, to_cli_args
from webdancer_dagster.training.dapo import dapo_config
from webdancer_dagster.training.dapo import make_parser as dapo_parser
from webdancer_dagster.training.masking import TruncationPolicy
from webdancer_dagster.training.sft import SFTRunArguments, make_parser, sft_config


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_steps": -1, "num_train_epochs": 0.0}, "num_train_epochs"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"max_length": 8}, "max_length"),
        ({"truncation": "shorten"}, "shorten"),
        ({"truncation": "truncate"}, "truncate"),
        ({"warmup_ratio": 1.0}, "warmup_ratio"),
        ({"lr_scheduler_type": "exponential-ish"}, "lr_scheduler_type"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"logging_steps": 0}, "logging_steps"),
        ({"save_steps": 0}, "save_steps"),
        ({"save_total_limit": 0}, "save_total_limit"),
    ],
)
def test_sft_hyperparameters_reject_bad_values(overrides: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SFTHyperparameters(**overrides)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"num_generations": 1}, "num_generations"),
        ({"epsilon": 0.3, "epsilon_high": 0.2}, "epsilon_high"),
        ({"format_weight": 0.2, "answer_weight": 0.9}, "must be 1"),
        ({"beta": -0.1}, "beta"),
        ({"oversample_factor": 0.5}, "oversample_factor"),
    ],
)
def test_dapo_hyperparameters_reject_bad_values(overrides: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        DAPOHyperparameters(**overrides)


def test_defaults_are_valid_and_follow_dapo_recipe() -> None:
    sft = SFTHyperparameters()
    dapo = DAPOHyperparameters()
    assert sft.truncation is TruncationPolicy.SHORTEN_OBSERVATIONS
    assert (dapo.epsilon, dapo.epsilon_high, dapo.beta) == (0.2, 0.28, 0.0)
    assert (dapo.format_weight, dapo.answer_weight) == (0.1, 0.9)
    assert json.loads(json.dumps(sft.to_dict()))["truncation"] == "shorten_observations"


def test_defaults_fit_webdancer_trajectories() -> None:
    """The shipped WebDancer chats have a median of 4,650 SmolLM2 tokens and their assistant turns a p95 of 970."""
    sft, dapo = SFTHyperparameters(), DAPOHyperparameters()
    assert sft.max_length >= 4096 and sft.learning_rate == 1e-5
    assert dapo.max_turn_tokens >= 870


def test_truncation_given_as_text_becomes_the_enum() -> None:
    assert SFTHyperparameters(truncation="drop").truncation is TruncationPolicy.DROP
    assert SFTHyperparameters(truncation="shorten_observations").truncation is TruncationPolicy.SHORTEN_OBSERVATIONS


def test_cli_args_parse_back_into_equal_hyperparameters() -> None:
    hparams = SFTHyperparameters(
        learning_rate=3e-4,
        max_steps=7,
        truncation="drop",
        activation_checkpointing=True,
        fused_lm_head=False,
        lr_scheduler_type="linear",
    )
    run = ["--train_file", "t.jsonl", "--model_dir", "m", "--output_dir", "o"]

    parsed_run, parsed = make_parser().parse_args_into_dataclasses(args=run + to_cli_args(hparams))

    assert parsed == hparams
    assert parsed_run == SFTRunArguments(train_file="t.jsonl", model_dir="m", output_dir="o")


def test_parser_rejects_an_invalid_value() -> None:
    run = ["--train_file", "t.jsonl", "--model_dir", "m", "--output_dir", "o"]
    with pytest.raises(ValueError, match="learning_rate"):
        make_parser().parse_args_into_dataclasses(args=[*run, "--learning_rate", "-1"])


@pytest.mark.parametrize(
    ("config_class", "hyperparameters", "asset_only"),
    [
        (SFTCheckpointConfig, SFTHyperparameters, set()),
        (RLCheckpointConfig, DAPOHyperparameters, {"start_from", "max_prompts", "pool_sources"}),
    ],
)
def test_asset_config_defaults_and_descriptions_are_the_dataclass_ones(
    config_class: type[dg.Config], hyperparameters: type, asset_only: set[str]
) -> None:
    fields = {spec.name: spec for spec in dataclasses.fields(hyperparameters)}
    shared = set(config_class.model_fields) - asset_only
    assert shared and shared <= set(fields), "every training field of the asset config is a hyperparameter"
    for name in shared:
        config_field = config_class.model_fields[name]
        assert config_field.default == fields[name].default, name
        assert config_field.description == fields[name].metadata["help"], name
    assert config_class().hyperparameters() == hyperparameters()


@pytest.mark.parametrize("profile", ["smoke", "full", "learn"])
def test_profiles_build_valid_training_hyperparameters(profile: str) -> None:
    ops = load_profile(profile)["ops"]
    sft = SFTCheckpointConfig(**ops["sft_checkpoint"]["config"]).hyperparameters()
    dapo = RLCheckpointConfig(**ops["rl_checkpoint"]["config"]).hyperparameters()
    if profile == "smoke":
        assert (sft.max_steps, sft.max_length, dapo.max_steps) == (4, 2048, 2)
    elif profile == "learn":  # the bar: RL curves over at least 30 steps on CPU
        assert dapo.max_steps >= 30 and sft.max_steps > 0
    else:
        assert sft.max_steps == -1 and sft.max_length >= SFTHyperparameters().max_length


def test_help_text_renders_on_the_command_line() -> None:
    """argparse formats help with %, so a bare % in a field's help would crash `--help`."""
    assert "shorten_observations" in make_parser().format_help()
    assert "max_turn_tokens" in dapo_parser().format_help()


@pytest.mark.parametrize(
    ("bf16", "native_cpu", "autocast"),
    [(None, False, False), (None, True, True), (False, True, False), (True, False, True)],
)
def test_bf16_autocast_on_cpu_where_asked_or_native(
    tmp_path, monkeypatch, bf16: bool | None, native_cpu: bool, autocast: bool
) -> None:
    """Empty: bf16 where the CPU does it in hardware; `false` and `true` decide alone, for both trainers."""
    monkeypatch.setattr(reporting, "cpu_has_native_bf16", lambda: native_cpu)
    sft_args = sft_config(SFTHyperparameters(bf16=bf16), tmp_path / "sft", on_gpu=False)
    dapo_args = dapo_config(DAPOHyperparameters(bf16=bf16), tmp_path / "dapo", on_gpu=False)
    assert (sft_args.bf16, dapo_args.bf16) == (autocast, autocast)
    assert sft_args.use_cpu and dapo_args.use_cpu


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the CPU flags Linux lists")
def test_the_native_bf16_probe_agrees_with_the_cpu_flags_linux_lists() -> None:
    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert reporting.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
