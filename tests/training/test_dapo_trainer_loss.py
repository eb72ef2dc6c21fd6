"""What TRL's `GRPOTrainer` does with our DAPO config and rollouts: the loss it computes, not only our inputs to it.

The trainer is built the way `dapo.train_dapo` builds it (`dapo_config`, the two reward functions, a prompt dataset,
`score_completions_directly` on CPU); its `rollout_func` hands TRL what `AgentRollout._trainer_inputs` makes of a
filled batch: a kept group, a kept group with a truncated rollout, and a masked filler group. TRL turns that into the
batch its `compute_loss` reads (`_generate_and_score_completions`), and the tests perturb that batch.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from rl_helpers import RL_QUESTION, rl_chat
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from trl import GRPOTrainer

from webdancer_dagster.agent.trajectory import ChatMessage, Step, Trajectory
from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment
from webdancer_dagster.training.dapo import (
    AgentRollout,
    RLPrompt,
    ScoredRollout,
    answer_reward,
    dapo_config,
    format_reward,
    score_completions_directly,
)
from webdancer_dagster.training.dynamic_sampling import FilledBatch, Group
from webdancer_dagster.training.rollout import RLSample, RolloutReward, rl_sample

OBSERVATION = "A Google search for 'capital of France' found 1 results:\n1. Paris is the capital of France."
GROUP_SIZE = 2
ROWS = 6  # three groups of two: kept, kept with a truncated rollout, masked filler
KEPT, TRUNCATED, FILLER = [0, 1, 3], [2], [4, 5]


def _trajectory(answer: str) -> Trajectory:
    counts = {"llm_latency_s": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "context_tokens": 0}
    return Trajectory(
        question=RL_QUESTION,
        messages=[ChatMessage(**message) for message in rl_chat(OBSERVATION, answer)],
        steps=[
            Step(index=0, thought="", action="search", finish_reason="stop", **counts),
            Step(index=1, thought="", action="answer", answer=answer, finish_reason="stop", **counts),
        ],
        answer=answer,
        termination="answer",
        llm_calls=2,
        tool_calls=1,
        format_errors=0,
        prompt_tokens=0,
        completion_tokens=0,
        cached_calls=0,
        latency_s=0.0,
        endpoint="test",
        model="test",
        cot_mode="short",
    )


def _cut_after_the_first_turn(tokenizer: PreTrainedTokenizerBase) -> RLSample:
    """A rollout cut at `max_completion_length` right after the first turn's end-of-turn token."""
    whole = rl_sample(tokenizer, _trajectory("Paris"), max_completion_length=4096)
    first_turn_end = whole.completion_ids.index(tokenizer.eos_token_id) + 1
    return rl_sample(tokenizer, _trajectory("Paris"), max_completion_length=first_turn_end)


class Prepared:
    """The trainer and the batch TRL prepared for `compute_loss`, with the env_mask each row was given."""

    def __init__(self, trainer: GRPOTrainer, inputs: dict[str, Any], env_masks: list[list[int]]) -> None:
        self.trainer = trainer
        self.inputs = inputs
        self.env_masks = env_masks

    def loss(self, **replace: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.trainer.compute_loss(self.trainer.model, {**copy.copy(self.inputs), **replace})

    def per_token_logps(self) -> torch.Tensor:
        inputs = self.inputs
        with torch.no_grad():
            logps, _, _ = self.trainer._get_per_token_logps_and_entropies(
                self.trainer.model,
                torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
                torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
                inputs["completion_ids"].size(1),
            )
        return logps

    @property
    def loss_mask(self) -> torch.Tensor:
        """The mask TRL's loss multiplies by: completion mask times env_mask (as `tool_mask`)."""
        return self.inputs["completion_mask"] * self.inputs["tool_mask"]

    def expected_mask(self) -> torch.Tensor:
        """Our env_mask on the kept, finished rollouts; nothing of the truncated one or the fillers."""
        mask = torch.zeros_like(self.inputs["completion_mask"])
        for row in KEPT:
            mask[row, : len(self.env_masks[row])] = torch.tensor(self.env_masks[row])
        return mask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tiny_model: BaseModel, rl_index: Path) -> Prepared:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)
    hparams = DAPOHyperparameters(num_generations=GROUP_SIZE, per_device_train_batch_size=ROWS, max_steps=1)
    environment = RolloutEnvironment(
        search_index=str(rl_index),
        summarizer=EndpointConfig(role="summarizer", base_url="http://127.0.0.1:9/v1", model="s"),
    )
    work = tmp_path_factory.mktemp("dapo-loss")
    rollout = AgentRollout([RLPrompt("q0", RL_QUESTION, ["Paris"])], environment, tokenizer, hparams, 0, work)

    def scored(sample: RLSample, answer: float) -> ScoredRollout:
        return ScoredRollout(sample, RolloutReward(1.0, answer, "exact"), 0)

    right = scored(rl_sample(tokenizer, _trajectory("Paris"), 4096), 1.0)
    wrong = scored(rl_sample(tokenizer, _trajectory("London"), 4096), 0.0)
    cut = scored(_cut_after_the_first_turn(tokenizer), 1.0)
    groups = [[right, wrong], [cut, wrong], [wrong, wrong]]
    batch = FilledBatch(
        [Group(RL_QUESTION, g, [r.reward.answer for r in g], 10) for g in groups], [False, False, True], 1, 3, 1, 30
    )
    trainer_inputs = rollout._trainer_inputs(batch)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True, dtype=torch.float32),
        reward_funcs=[format_reward, answer_reward],
        args=dapo_config(hparams, work / "out", on_gpu=False),
        train_dataset=Dataset.from_dict({"prompt": [RL_QUESTION]}),
        processing_class=tokenizer,
        rollout_func=lambda prompts, trainer: copy.deepcopy(trainer_inputs),
    )
    score_completions_directly(trainer.model, hparams.temperature)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = hparams.gradient_accumulation_steps  # what `train()` sets
    inputs = trainer._generate_and_score_completions([{"prompt": RL_QUESTION} for _ in range(ROWS)])
    return Prepared(trainer, inputs, trainer_inputs["env_mask"])


def test_the_config_we_build_is_dapo_and_the_trainer_runs_it(prepared: Prepared) -> None:
    """The fixture's config is `dapo_config` of the default hyperparameters but for batch size and steps (a second
    TrainingArguments here would reset the accelerator state the module's trainer holds)."""
    config = prepared.trainer.args
    assert config.loss_type == "dapo"
    assert (config.epsilon, config.epsilon_high, config.beta) == (0.2, 0.28, 0.0)
    assert config.mask_truncated_completions is True
    assert config.reward_weights == [0.1, 0.9]
    trainer = prepared.trainer
    assert trainer.loss_type == "dapo"
    assert (trainer.epsilon_low, trainer.epsilon_high, trainer.beta) == (0.2, 0.28, 0.0)
    assert trainer.mask_truncated_completions is True and trainer.ref_model is None


def test_the_loss_mask_is_env_mask_on_kept_finished_rollouts_and_nothing_else(prepared: Prepared) -> None:
    expected = prepared.expected_mask()
    assert 0 < expected[KEPT].sum() < sum(len(prepared.env_masks[row]) for row in KEPT), "no observation to mask"
    assert torch.equal(prepared.loss_mask.to(expected.dtype), expected)
    assert prepared.inputs["num_items_in_batch"] == expected.sum(), "DAPO's token count includes masked tokens"


def test_a_rollout_cut_right_after_an_end_of_turn_token_is_recognised_as_truncated(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    """TRL knows a truncated rollout only by its missing end-of-turn token; a cut that lands just after one must not
    leave it there, or the trainer trains on the cut rollout as if it had finished."""
    cut = _cut_after_the_first_turn(tokenizer)

    assert cut.truncated
    assert cut.completion_ids[-1] not in (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert len(cut.completion_ids) == len(cut.env_mask)


def test_the_loss_is_the_token_sum_of_advantages_over_the_trained_tokens(prepared: Prepared) -> None:
    advantages = prepared.inputs["advantages"]
    assert advantages[KEPT].abs().min() > 0 and torch.equal(advantages[FILLER], torch.zeros(len(FILLER)))
    mask = prepared.expected_mask().float()
    # On-policy (ratio 1): -sum over trained tokens of the advantage, over their count (DAPO's token-level mean).
    expected = -(advantages.unsqueeze(1) * mask).sum() / mask.sum()

    torch.testing.assert_close(prepared.loss(), expected, rtol=1e-6, atol=1e-7)


def test_masked_positions_logprobs_and_advantages_do_not_reach_the_loss(prepared: Prepared) -> None:
    """Observations, the truncated rollout and the filler group: perturbing their old log-probabilities (so their
    importance ratio is far from 1) or their advantages leaves TRL's loss exactly as it was."""
    logps, advantages = prepared.per_token_logps(), prepared.inputs["advantages"]
    tokens = torch.zeros_like(logps, dtype=torch.bool)  # every completion token we sent, padding excluded
    for row, env_mask in enumerate(prepared.env_masks):
        tokens[row, : len(env_mask)] = True
    masked = tokens & (prepared.expected_mask() == 0)
    observation = masked.clone()
    observation[TRUNCATED + FILLER] = False
    assert observation[KEPT].any() and masked[TRUNCATED].any() and masked[FILLER].any()
    noise = torch.randn(logps.shape, generator=torch.Generator().manual_seed(0))
    per_token_advantages = advantages.unsqueeze(1).expand_as(logps)
    loss = prepared.loss(old_per_token_logps=logps)

    for where in (masked, observation):
        assert torch.equal(prepared.loss(old_per_token_logps=torch.where(where, logps + 3 * noise, logps)), loss)
        assert torch.equal(prepared.loss(advantages=torch.where(where, 5 * noise, per_token_advantages)), loss)
    filler_advantages = advantages.clone()
    filler_advantages[TRUNCATED + FILLER] = 5.0
    assert torch.equal(prepared.loss(advantages=filler_advantages), loss), "a masked rollout reached the loss"

    trained = prepared.expected_mask() == 1
    one_trained = trained & (torch.cumsum(trained.int(), dim=1) == 1) & (torch.arange(ROWS) == KEPT[0]).unsqueeze(1)
    assert one_trained.sum() == 1
    assert not torch.equal(prepared.loss(old_per_token_logps=torch.where(one_trained, logps - 1.0, logps)), loss)
    assert not torch.equal(prepared.loss(advantages=torch.where(one_trained, 5.0, per_token_advantages)), loss)


@pytest.mark.parametrize("ratio", [2.0, 0.5])
def test_importance_ratios_are_clipped_at_one_minus_0_2_and_one_plus_0_28(prepared: Prepared, ratio: float) -> None:
    """The pessimistic clipped objective with clip-higher: -min(r A, clip(r, 0.8, 1.28) A) per trained token."""
    logps, advantages = prepared.per_token_logps(), prepared.inputs["advantages"].unsqueeze(1)
    mask = prepared.expected_mask().float()
    clipped = min(max(ratio, 1 - 0.2), 1 + 0.28)
    per_token = -torch.minimum(ratio * advantages, clipped * advantages).expand_as(logps)
    expected = (per_token * mask).sum() / mask.sum()

    loss = prepared.loss(old_per_token_logps=logps - math.log(ratio))

    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, prepared.loss(old_per_token_logps=logps), rtol=1e-3)
