"""kill -9 of SFT while it saves a checkpoint: the rerun resumes from the last complete checkpoint (weights, optimizer,
data order) and ends with the weights and losses of a run that was never stopped."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.sft import FINAL_MODEL_DIR, LOSS_HISTORY_FILE, SFTResult, main

KILLER = Path(__file__).with_name("sft_killer.py")
STEPS = 3


def sft_args(train_file: Path, model: BaseModel, output_dir: Path) -> list[str]:
    return [
        "--train_file", str(train_file), "--model_dir", str(model.path), "--output_dir", str(output_dir),
        "--max_length", "256", "--warmup_ratio", "0", "--learning_rate", "1e-3",
        "--max_steps", str(STEPS), "--save_steps", "1",
    ]  # fmt: skip


@pytest.mark.slow
def test_sft_killed_while_saving_a_checkpoint_resumes_from_the_last_complete_one(
    tmp_path: Path, tiny_model: BaseModel, short_chats_file: Path
) -> None:
    unbroken = main(sft_args(short_chats_file, tiny_model, tmp_path / "unbroken"))
    assert isinstance(unbroken, SFTResult) and unbroken.resumed_from_step == 0
    output_dir = tmp_path / "sft"
    args = sft_args(short_chats_file, tiny_model, output_dir)
    killed = subprocess.run(
        [sys.executable, str(KILLER), str(STEPS), *args], capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    half_saved = output_dir / f"checkpoint-{STEPS}"
    assert (half_saved / "model.safetensors").is_file() and not (half_saved / "trainer_state.json").exists()
    assert not (output_dir / FINAL_MODEL_DIR).exists()

    resumed = main(args)

    assert isinstance(resumed, SFTResult)
    assert (resumed.resumed_from_step, resumed.steps) == (STEPS - 1, STEPS)
    assert [entry["step"] for entry in resumed.loss_history] == list(range(1, STEPS + 1))
    for key in ("loss", "grad_norm", "learning_rate"):  # the same batches in the same order, the same optimizer
        resumed_values = [entry[key] for entry in resumed.loss_history]
        assert resumed_values == pytest.approx([entry[key] for entry in unbroken.loss_history], rel=1e-5)
    optimizer = torch.load(half_saved / "optimizer.pt", weights_only=False)
    assert {int(state["step"]) for state in optimizer["state"].values()} == {STEPS}, "the optimizer restarted"
    expected = load_file(unbroken.checkpoint_dir / "model.safetensors")
    for name, tensor in load_file(resumed.checkpoint_dir / "model.safetensors").items():
        torch.testing.assert_close(tensor, expected[name])
    assert json.loads((output_dir / LOSS_HISTORY_FILE).read_text()) == resumed.loss_history
