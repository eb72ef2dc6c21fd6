"""What TRL's `SFTTrainer` does with our labels: the loss it computes is taken over the assistant tokens only.

The trainer is built the way `sft.train_sft` builds it (its `_tokenize`, `sft_config` and `_SFTTrainer`, the same
dataset columns), and the batch comes from the trainer's own dataloader and collator. Both loss paths are checked:
the model's cross-entropy (the CPU default) and TRL's fused LM head (the GPU default).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from webdancer_dagster.training import sft
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.config import SFTHyperparameters
from webdancer_dagster.training.masking import IGNORE_INDEX, TokenizedDataset, assistant_char_spans

Chat = list[dict[str, str]]
FUSED = pytest.mark.parametrize("fused", [False, True], ids=["model_loss", "fused_lm_head"])


def _build(tiny_model: BaseModel, chats: list[Chat], tmp_path: Path, fused: bool) -> tuple[Any, TokenizedDataset]:
    """`train_sft`'s trainer for `chats`, all of them in one micro-batch."""
    folder = Path(tempfile.mkdtemp(dir=tmp_path))
    train_file = folder / "chats.jsonl"
    train_file.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in chats))
    hparams = SFTHyperparameters(
        max_length=256, per_device_train_batch_size=len(chats), max_steps=1, warmup_ratio=0.0, fused_lm_head=fused
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)
    data = sft._tokenize(train_file, tokenizer, hparams)
    trainer = sft._SFTTrainer(
        fused_lm_head=fused,
        model=AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True, dtype=torch.float32),
        args=sft.sft_config(hparams, folder / "out", on_gpu=False),
        train_dataset=Dataset.from_dict(
            {
                "input_ids": [example.input_ids for example in data.examples],
                "labels": [example.labels for example in data.examples],
            }
        ),
        processing_class=tokenizer,
    )
    return trainer, data


def _batch(trainer: Any) -> dict[str, torch.Tensor]:
    """The first micro-batch as `train()` would feed it to `compute_loss`: dataloader, collator, device."""
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _loss(trainer: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, dict(inputs))


@contextmanager
def _final_hidden_states(trainer: Any, edit: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Pass the backbone's last hidden states (the LM head's input: row t gives the logits that score token t+1)
    through `edit`; the norm is after the last attention layer, so an edited row changes only its own logits."""
    handle = trainer.model.model.norm.register_forward_hook(lambda module, args, output: edit(output))
    try:
        yield
    finally:
        handle.remove()


def _row_of(batch: dict[str, torch.Tensor], example_ids: list[int]) -> int:
    """The batch row that holds the example (the dataloader shuffles)."""
    for row, ids in enumerate(batch["input_ids"].tolist()):
        if ids[: len(example_ids)] == example_ids and batch["attention_mask"][row].sum() == len(example_ids):
            return row
    raise AssertionError("example not found in the batch")


def _positions_of(tokenizer: PreTrainedTokenizerBase, chat: Chat, needle: str) -> list[int]:
    """Token positions of the rendered chat whose text starts inside the (last) occurrence of `needle`."""
    text, _ = assistant_char_spans(tokenizer, chat)
    start = text.rindex(needle)
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [i for i, (begin, end) in enumerate(offsets) if end > begin and start <= begin < start + len(needle)]


@FUSED
def test_loss_is_the_mean_cross_entropy_over_the_assistant_tokens_only(
    tmp_path: Path, tiny_model: BaseModel, short_chats: list[Chat], fused: bool
) -> None:
    trainer, data = _build(tiny_model, short_chats[:2], tmp_path, fused)
    inputs = _batch(trainer)

    # The collator pads and passes our labels through unchanged: nothing relabels the observations.
    for example in data.examples:
        row = _row_of(inputs, example.input_ids)
        labels = inputs["labels"][row].tolist()
        assert labels[: len(example.labels)] == example.labels
        assert set(labels[len(example.labels) :]) <= {IGNORE_INDEX}
    labels = inputs["labels"]
    with torch.no_grad():
        logits = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    targets = labels[:, 1:]
    learned = targets != IGNORE_INDEX
    assert 0 < learned.sum() < (inputs["attention_mask"][:, 1:] == 1).sum()
    expected = torch.nn.functional.cross_entropy(logits[:, :-1][learned].float(), targets[learned])

    loss = _loss(trainer, inputs)

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


@FUSED
def test_the_loss_gradient_reaches_exactly_the_logits_that_score_assistant_tokens(
    tmp_path: Path, tiny_model: BaseModel, short_chats: list[Chat], fused: bool
) -> None:
    trainer, data = _build(tiny_model, short_chats[:2], tmp_path, fused)
    inputs = _batch(trainer)
    scores_assistant = torch.zeros_like(inputs["input_ids"], dtype=torch.bool)  # from the masking, not the batch
    for example in data.examples:
        learned = torch.tensor(example.labels[1:]) != IGNORE_INDEX
        scores_assistant[_row_of(inputs, example.input_ids), : len(learned)] = learned
    captured: list[torch.Tensor] = []

    def keep(hidden: torch.Tensor) -> torch.Tensor:
        hidden.retain_grad()
        captured.append(hidden)
        return hidden

    with _final_hidden_states(trainer, keep):
        trainer.compute_loss(trainer.model, dict(inputs)).backward()

    [hidden] = captured
    reached = hidden.grad.abs().sum(-1) > 0  # (batch, positions): row t's logits score token t + 1
    assert torch.equal(reached, scores_assistant)


@FUSED
def test_perturbing_an_observation_tokens_logits_leaves_the_loss_and_an_assistant_tokens_changes_it(
    tmp_path: Path, tiny_model: BaseModel, short_chats: list[Chat], fused: bool
) -> None:
    chats = short_chats[:2]
    trainer, data = _build(tiny_model, chats, tmp_path, fused)
    inputs = _batch(trainer)
    row = _row_of(inputs, data.examples[0].input_ids)
    observation = _positions_of(trainer.processing_class, chats[0], chats[0][3]["content"])
    answer = _positions_of(trainer.processing_class, chats[0], chats[0][4]["content"])
    labels = inputs["labels"][row]
    assert observation and all(labels[t] == IGNORE_INDEX for t in observation)
    assert answer and all(labels[t] != IGNORE_INDEX for t in answer)
    delta = 10 * torch.randn(trainer.model.config.hidden_size, generator=torch.Generator().manual_seed(0))

    def logits_of(position: int) -> torch.Tensor:
        """The loss with the logits that score the token at `position` pushed far off."""

        def edit(hidden: torch.Tensor) -> torch.Tensor:
            edited = hidden.clone()
            edited[row, position - 1] += delta
            return edited

        with _final_hidden_states(trainer, edit):
            return _loss(trainer, inputs)

    loss = _loss(trainer, inputs)

    for position in (observation[0], observation[len(observation) // 2], observation[-1]):
        assert torch.equal(logits_of(position), loss), f"the observation token at {position} carries loss"
    for position in (answer[0], answer[-1]):
        assert abs(logits_of(position) - loss) > 1e-3, f"the assistant token at {position} carries no loss"


@FUSED
def test_perturbing_an_observation_tokens_label_leaves_the_loss_and_an_assistant_tokens_changes_it(
    tmp_path: Path, tiny_model: BaseModel, short_chats: list[Chat], fused: bool
) -> None:
    """A chat that ends in its observation: those tokens reach the loss only as targets (no assistant token comes
    after them), so changing them changes only their labels. Token counts are kept, so shapes are the same."""
    chat = short_chats[0][:4]
    observation, thought = chat[3]["content"], chat[2]["content"]
    assert "a tragedy by William Shakespeare" in observation and "I should search." in thought
    other_observation = [*chat[:3], {**chat[3], "content": observation.replace("a tragedy", "a comedy")}]
    other_thought = [*chat[:2], {**chat[2], "content": thought.replace("I should", "I must")}, chat[3]]

    def loss_of(variant: Chat) -> tuple[torch.Tensor, list[int]]:
        trainer, _ = _build(tiny_model, [variant], tmp_path, fused)
        inputs = _batch(trainer)
        return _loss(trainer, inputs), inputs["input_ids"][0].tolist()

    loss, ids = loss_of(chat)
    observation_loss, observation_ids = loss_of(other_observation)
    thought_loss, thought_ids = loss_of(other_thought)

    for other_ids in (observation_ids, thought_ids):
        assert len(other_ids) == len(ids) and other_ids != ids
    assert torch.equal(observation_loss, loss), "a label of the observation reached the loss"
    assert abs(thought_loss - loss) > 1e-3, "a label of the assistant's turn did not reach the loss"


def test_in_training_the_model_returns_its_loss_without_the_logits_and_in_evaluation_both(
    tmp_path: Path, tiny_model: BaseModel, short_chats: list[Chat]
) -> None:
    """On the model-loss path the Trainer reads only the loss; accelerate would cast the (tokens x vocabulary) logits
    to fp32 under bf16 autocast for nothing, so the forward leaves them out while training, and only then."""
    trainer, _ = _build(tiny_model, short_chats[:2], tmp_path, fused=False)
    inputs = _batch(trainer)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True, dtype=torch.float32)

    with torch.no_grad():
        expected = reference(**inputs)
        trained = trainer.model.train()(**inputs)
        evaluated = trainer.model.eval()(**inputs)

    assert trained.logits is None and "logits" not in trained
    torch.testing.assert_close(trained.loss, expected.loss)
    torch.testing.assert_close(evaluated.loss, expected.loss)
    torch.testing.assert_close(evaluated.logits, expected.logits)
