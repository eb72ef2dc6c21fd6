"""The SFT entry point in-process (no torchrun, no Dagster): bad input fails clearly, a killed run resumes exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.sft import FINAL_MODEL_DIR, LOSS_HISTORY_FILE, SFTResult, main


def _args(train_file: Path, model: BaseModel, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--train_file",
        str(train_file),
        "--model_dir",
        str(model.path),
        "--output_dir",
        str(output_dir),
        "--max_length",
        "256",
        "--warmup_ratio",
        "0",
        "--learning_rate",
        "1e-3",
        *extra,
    ]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_empty_dataset_fails_naming_the_file(tmp_path: Path, tiny_model: BaseModel) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")

    with pytest.raises(ValueError, match=f"SFT dataset {empty} holds no chats"):
        main(_args(empty, tiny_model, tmp_path / "out", "--max_steps", "1"))


def test_dataset_with_nothing_short_enough_fails_with_the_drop_counts(
    tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path
) -> None:
    with pytest.raises(ValueError, match=r"none of the 4 chats .* max_length=16 .*'too_long': 4"):
        main(_args(short_chats_file, tiny_model, tmp_path / "out", "--max_steps", "1", "--max_length", "16"))


def test_record_without_messages_is_rejected_with_its_line(tmp_path: Path, tiny_model: BaseModel) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n" + json.dumps({"msgs": []}))

    with pytest.raises(ValueError, match=f"{bad}:2: expected a JSON object with a 'messages' list"):
        main(_args(bad, tiny_model, tmp_path / "out", "--max_steps", "1"))


def test_killed_run_resumes_from_its_last_checkpoint_and_ends_where_an_unbroken_run_ends(
    tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path
) -> None:
    output_dir = tmp_path / "out"
    args = _args(short_chats_file, tiny_model, output_dir, "--max_steps", "3", "--save_steps", "1")
    unbroken = main(args)
    assert isinstance(unbroken, SFTResult)
    unbroken_weights = _weights(unbroken.checkpoint_dir)
    # A kill after step 2's checkpoint: step 3's checkpoint and the final model were never written.
    shutil.rmtree(output_dir / "checkpoint-3")
    shutil.rmtree(output_dir / FINAL_MODEL_DIR)
    (output_dir / LOSS_HISTORY_FILE).unlink()

    resumed = main(args)

    assert isinstance(resumed, SFTResult)
    assert (unbroken.resumed_from_step, resumed.resumed_from_step) == (0, 2)
    assert resumed.steps == 3
    assert [entry["step"] for entry in resumed.loss_history] == [1, 2, 3]
    for key in ("loss", "grad_norm", "learning_rate"):
        resumed_values = [entry[key] for entry in resumed.loss_history]
        assert resumed_values == pytest.approx([entry[key] for entry in unbroken.loss_history], rel=1e-5)
    for name, tensor in _weights(resumed.checkpoint_dir).items():
        torch.testing.assert_close(tensor, unbroken_weights[name])
    assert json.loads((output_dir / LOSS_HISTORY_FILE).read_text()) == resumed.loss_history
    assert resumed.checkpoint_sha256 == folder_sha256(output_dir / FINAL_MODEL_DIR)
    assert (resumed.examples, resumed.shortened, resumed.dropped) == (4, {}, {})
    assert resumed.chat_tokens["p50"] <= resumed.chat_tokens["p95"] <= resumed.chat_tokens["max"] <= 256
    turns = resumed.assistant_turn_tokens
    assert 0 < turns["p50"] <= turns["p95"] <= turns["max"] < resumed.chat_tokens["max"]
    reported = resumed.pipes_metadata()
    for key in ("shortened", "dropped", "chat_tokens", "assistant_turn_tokens"):
        assert reported[key] == {"raw_value": getattr(resumed, key), "type": "json"}
    assert 0.3 < resumed.masked_share < 0.7
    assert resumed.labelled_tokens < resumed.tokens


def test_model_loss_matches_trls_fused_lm_head(tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path) -> None:
    """The CPU path swaps TRL's fused LM head for the model's own cross-entropy; both must train the same (in fp32:
    under bf16 autocast the two would part by bf16 rounding)."""
    results = {
        fused: main(
            _args(
                short_chats_file,
                tiny_model,
                tmp_path / fused,
                "--max_steps",
                "1",
                "--fused_lm_head",
                fused,
                "--bf16",
                "False",
            )
        )
        for fused in ("True", "False")
    }

    fused, plain = results["True"], results["False"]
    assert fused.loss_history[0]["loss"] == pytest.approx(plain.loss_history[0]["loss"], rel=1e-5)
    assert fused.loss_history[0]["grad_norm"] == pytest.approx(plain.loss_history[0]["grad_norm"], rel=1e-4)
    initial, fused_weights = _weights(tiny_model.path), _weights(fused.checkpoint_dir)
    for name, tensor in _weights(plain.checkpoint_dir).items():
        torch.testing.assert_close(tensor, fused_weights[name], rtol=1e-4, atol=1e-6)
        assert not torch.equal(tensor, initial[name]), f"{name} did not move in the training step"


def test_bf16_autocast_on_cpu_trains_the_fp32_weights_close_to_an_fp32_step(
    tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path
) -> None:
    """`bf16: true` runs the step under bf16 autocast on CPU too: the loss moves by bf16 rounding, not more, and the
    checkpoint keeps fp32 weights."""
    results = {
        bf16: main(_args(short_chats_file, tiny_model, tmp_path / bf16, "--max_steps", "1", "--bf16", bf16))
        for bf16 in ("True", "False")
    }

    autocast, full = results["True"].loss_history[0]["loss"], results["False"].loss_history[0]["loss"]
    assert autocast != full, "the same loss to the last bit: the step did not run under autocast"
    assert autocast == pytest.approx(full, rel=2e-2)
    initial = _weights(tiny_model.path)
    for name, tensor in _weights(results["True"].checkpoint_dir).items():
        assert tensor.dtype == torch.float32, name
        assert not torch.equal(tensor, initial[name]), f"{name} did not move in the training step"
