"""Hyperparameter dataclasses reject bad values on construction and round-trip through the command line."""

from __future__ import annotations

import json

import pytest

from webdancer_dagster.training.config import DAPOHyperparameters, SFTHyperparameters, to_cli_args
from webdancer_dagster.training.masking import TruncationPolicy
from webdancer_dagster.training.sft import SFTRunArguments, make_parser


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
    assert sft.truncation is TruncationPolicy.DROP
    assert (dapo.epsilon, dapo.epsilon_high, dapo.beta) == (0.2, 0.28, 0.0)
    assert (dapo.format_weight, dapo.answer_weight) == (0.1, 0.9)
    assert json.loads(json.dumps(sft.to_dict()))["truncation"] == "drop"


def test_truncation_given_as_text_becomes_the_enum() -> None:
    assert SFTHyperparameters(truncation="truncate").truncation is TruncationPolicy.TRUNCATE


def test_cli_args_parse_back_into_equal_hyperparameters() -> None:
    hparams = SFTHyperparameters(
        learning_rate=3e-4,
        max_steps=7,
        truncation="truncate",
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
