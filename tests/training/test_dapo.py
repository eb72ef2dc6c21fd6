"""The DAPO entry point: bad RL pools fail clearly, and one step on two gloo processes moves the weights."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch
from rl_helpers import RL_DATE, RL_QUESTION
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.shared.hashing import folder_sha256
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment, to_cli_args
from webdancer_dagster.training.dapo import (
    HISTORY_FILE,
    ROLLOUT_STATE_FILE,
    AgentRollout,
    DAPOResult,
    RLPrompt,
    ScoredRollout,
    hidden_states_row_by_row,
    main,
    score_completions_directly,
)
from webdancer_dagster.training.dynamic_sampling import FilledBatch, Group
from webdancer_dagster.training.rollout import RLSample, RolloutReward

DAPO_MODULE = "webdancer_dagster.training.dapo"
QUESTIONS = [RL_QUESTION, "What is the capital city of France?"]


def _environment_file(tmp_path: Path, index_dir: Path, judge_url: str) -> Path:
    environment = RolloutEnvironment(
        search_index=str(index_dir),
        judge=EndpointConfig(role="judge", base_url=judge_url, model="judge", max_attempts=1),
        summarizer=EndpointConfig(role="summarizer", base_url=judge_url, model="summarizer", max_attempts=1),
        current_date=RL_DATE,
    )
    path = tmp_path / "environment.json"
    path.write_text(environment.model_dump_json())
    return path


def _pool_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _pool_lines(questions: list[str]) -> list[str]:
    return [json.dumps({"id": f"q{i}", "question": q, "answers": ["Paris"]}) for i, q in enumerate(questions)]


def _args(pool: Path, environment: Path, model: Path, output_dir: Path, **overrides: object) -> list[str]:
    settings = {"max_steps": 1, "max_completion_length": 256, "max_turn_tokens": 64, "max_llm_calls": 3}
    hparams = DAPOHyperparameters(**{**settings, **overrides})
    return [
        *["--train_file", str(pool), "--environment_file", str(environment)],
        *["--model_dir", str(model), "--output_dir", str(output_dir), *to_cli_args(hparams)],
    ]


def test_empty_rl_pool_fails_naming_the_asset(tmp_path: Path, tiny_model, rl_index: Path) -> None:
    pool = _pool_file(tmp_path, [""])
    environment = _environment_file(tmp_path, rl_index, "http://127.0.0.1:9/v1")

    with pytest.raises(ValueError, match=f"RL pool {pool} holds no prompts: materialize rl_pool"):
        main(_args(pool, environment, tiny_model.path, tmp_path / "out"))


def test_a_pool_line_without_answers_is_rejected_with_its_number(tmp_path: Path, tiny_model, rl_index: Path) -> None:
    pool = _pool_file(tmp_path, [*_pool_lines(QUESTIONS[:1]), json.dumps({"question": "q", "answers": []})])
    environment = _environment_file(tmp_path, rl_index, "http://127.0.0.1:9/v1")

    with pytest.raises(ValueError, match=f"{pool}:2: expected a JSON object with 'question' and an 'answers' list"):
        main(_args(pool, environment, tiny_model.path, tmp_path / "out"))


def test_prompts_longer_than_the_limit_are_counted_and_none_left_is_an_error(
    tmp_path: Path, tiny_model, rl_index: Path
) -> None:
    pool = _pool_file(tmp_path, _pool_lines([RL_QUESTION, RL_QUESTION]))
    environment = _environment_file(tmp_path, rl_index, "http://127.0.0.1:9/v1")

    with pytest.raises(ValueError, match=r"none of the 2 RL prompts fits max_prompt_length=64 .*'too_long': 1, "
                                         r"'duplicate_question': 1"):  # fmt: skip
        main(_args(pool, environment, tiny_model.path, tmp_path / "out", max_prompt_length=64))


def test_one_dapo_step_under_bf16_autocast_on_cpu_trains_fp32_weights(
    tmp_path: Path, answering_model: Path, rl_index: Path, scripted
) -> None:
    """`bf16: true` on CPU: the step trains under autocast and the checkpoint keeps fp32 weights that moved."""
    judge = scripted(lambda request: "Incorrect")
    settings = {"learning_rate": 1e-3, "temperature": 0.5, "oversample_factor": 1.0, "max_refill_rounds": 3}
    pool, environment = (
        _pool_file(tmp_path, _pool_lines(QUESTIONS)),
        _environment_file(tmp_path, rl_index, judge.base_url),
    )

    result = main(_args(pool, environment, answering_model, tmp_path / "rl", bf16=True, **settings))

    assert isinstance(result, DAPOResult) and result.steps == 1 and result.tokens_trained > 0
    before, after = (
        load_file(answering_model / "model.safetensors"),
        load_file(result.checkpoint_dir / "model.safetensors"),
    )
    assert all(after[name].dtype == torch.float32 for name in after)
    assert any(not torch.equal(before[name], after[name]) for name in before), "no weight moved"


def test_a_killed_run_resumes_its_rollout_state_with_the_weights(
    tmp_path: Path, answering_model: Path, rl_index: Path, scripted
) -> None:
    """Token and group counts are run totals and the refill order carries on, as if the run had not stopped."""
    judge = scripted(lambda request: "Incorrect")
    pool = _pool_file(tmp_path, _pool_lines(QUESTIONS))
    environment = _environment_file(tmp_path, rl_index, judge.base_url)
    output_dir = tmp_path / "rl"
    # No refill rounds: every step samples the same number of groups, so the totals are exact.
    settings = {"temperature": 0.5, "oversample_factor": 1.0, "max_refill_rounds": 0, "save_steps": 1}

    first = main(_args(pool, environment, answering_model, output_dir, **settings))
    saved = json.loads((output_dir / "checkpoint-1" / ROLLOUT_STATE_FILE.format(rank=0)).read_text())
    resumed = main(_args(pool, environment, answering_model, output_dir, max_steps=2, **settings))

    assert isinstance(first, DAPOResult) and isinstance(resumed, DAPOResult)
    assert (saved["groups_sampled"], saved["tokens_generated"]) == (first.groups_sampled, first.tokens_generated)
    assert (resumed.resumed_from_step, resumed.steps) == (1, 2)
    assert resumed.groups_sampled == 2 * first.groups_sampled
    assert resumed.tokens_generated > first.tokens_generated
    final_state = json.loads((output_dir / "checkpoint-2" / ROLLOUT_STATE_FILE.format(rank=0)).read_text())
    assert final_state["groups_sampled"] == resumed.groups_sampled


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_from_it_with_its_optimizer_and_rollout_state(
    tmp_path: Path, answering_model: Path, rl_index: Path, scripted
) -> None:
    """A real kill (SIGKILL once checkpoint-1 is complete), then a rerun, which ends with the weights of a run that
    was never stopped: every rollout request samples from its own seeded stream, whatever thread timing does."""
    judge = scripted(lambda request: "Incorrect")
    pool = _pool_file(tmp_path, _pool_lines(QUESTIONS))
    environment = _environment_file(tmp_path, rl_index, judge.base_url)
    output_dir = tmp_path / "rl"
    settings = {"temperature": 0.5, "oversample_factor": 1.0, "max_refill_rounds": 0, "save_steps": 1, "max_steps": 2}
    args = _args(pool, environment, answering_model, output_dir, **settings)
    unbroken = main(_args(pool, environment, answering_model, tmp_path / "unbroken", **settings))
    assert isinstance(unbroken, DAPOResult) and unbroken.resumed_from_step == 0
    checkpoint = output_dir / "checkpoint-1"
    process = subprocess.Popen([sys.executable, "-m", DAPO_MODULE, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        # The rollout state is written last, by the trainer's on_save callback: then the checkpoint is complete.
        while not (checkpoint / ROLLOUT_STATE_FILE.format(rank=0)).is_file():
            assert process.poll() is None, f"the run ended (exit {process.returncode}) before checkpoint-1"
            assert time.monotonic() < deadline, "no checkpoint-1 within 300 s"
            time.sleep(0.05)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (output_dir / "final").exists()
    resumed_from = max(int(path.name.split("-")[1]) for path in output_dir.glob("checkpoint-*"))

    resumed = main(args)

    assert isinstance(resumed, DAPOResult)
    assert (resumed.resumed_from_step, resumed.steps) == (resumed_from, 2)
    assert resumed.groups_sampled == 2, "one group a step, counted over the whole run"
    optimizer = torch.load(output_dir / "checkpoint-2" / "optimizer.pt", weights_only=False)
    assert {int(state["step"]) for state in optimizer["state"].values()} == {2}, "the optimizer restarted"
    last = load_file(output_dir / "checkpoint-2" / "model.safetensors")
    final = load_file(resumed.checkpoint_dir / "model.safetensors")
    assert all(torch.equal(final[name], last[name]) for name in last), "the final model is not the last step's"
    expected = load_file(unbroken.checkpoint_dir / "model.safetensors")
    initial = load_file(answering_model / "model.safetensors")
    assert any(not torch.equal(expected[name], initial[name]) for name in initial), "the unbroken run did not train"
    for name, weight in expected.items():
        torch.testing.assert_close(final[name], weight, rtol=0, atol=1e-6, msg=f"{name}: not the unbroken run's")
    assert resumed.groups_sampled == unbroken.groups_sampled


class TinyDAPOConfig(dg.Config):
    args: list[str]
    output_dir: str


@dg.asset
def tiny_rl_checkpoint(
    context: dg.AssetExecutionContext, config: TinyDAPOConfig, launcher: TorchrunLauncher
) -> dg.MaterializeResult:
    """Test-only: what `rl_checkpoint` does, reduced to the launch."""
    invocation = launcher.run(context, DAPO_MODULE, config.args, Path(config.output_dir) / "logs")
    return invocation.get_materialize_result()


def test_one_dapo_step_on_two_cpu_processes_moves_the_weights_and_reports_rewards(
    tmp_path: Path, answering_model: Path, rl_index: Path, scripted
) -> None:
    judge = scripted(lambda request: "Incorrect")  # only an exact "Paris" is right; the judge rejects the rest
    output_dir = tmp_path / "rl"
    args = _args(
        _pool_file(tmp_path, _pool_lines(QUESTIONS)),
        _environment_file(tmp_path, rl_index, judge.base_url),
        answering_model,
        output_dir,
        learning_rate=1e-3,
        temperature=0.5,  # sharp on the learned format, still 50/50 between the two answers
        oversample_factor=1.0,
        max_refill_rounds=3,
    )
    instance = dg.DagsterInstance.ephemeral()

    result = dg.materialize(
        [tiny_rl_checkpoint],
        resources={"launcher": TorchrunLauncher(nproc_per_node=2, device="cpu")},
        run_config={"ops": {"tiny_rl_checkpoint": {"config": {"args": args, "output_dir": str(output_dir)}}}},
        instance=instance,
    )

    metadata = result.asset_materializations_for_node("tiny_rl_checkpoint")[0].metadata
    assert metadata["steps"].value == 1
    [entry] = metadata["train_history"].value
    format_mean, answer_mean = entry["rewards/format_reward/mean"], entry["rewards/answer_reward/mean"]
    assert entry["reward"] == pytest.approx(0.1 * format_mean + 0.9 * answer_mean, abs=1e-5)
    assert 0 < answer_mean < 1, "dynamic sampling should have kept only groups whose answers disagree"
    assert metadata["groups_sampled"].value >= 1 and metadata["tokens_trained"].value > 0
    assert 0 < metadata["masked_token_share"].value < 1 and 0 < metadata["rollout_time_share"].value < 1
    streamed = [record.user_message for record in instance.all_logs(result.run_id)]
    assert any("step 1/1 loss" in message and "reward" in message for message in streamed)
    checkpoint = Path(metadata["checkpoint_path"].value)
    assert metadata["checkpoint_sha256"].value == folder_sha256(checkpoint)
    assert (output_dir / HISTORY_FILE).is_file()
    before, after = load_file(answering_model / "model.safetensors"), load_file(checkpoint / "model.safetensors")
    assert all(not torch.equal(before[name], after[name]) for name in before), "a weight did not move"
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, local_files_only=True)
    torch.testing.assert_close(loaded.get_input_embeddings().weight, after["model.embed_tokens.weight"])


def test_direct_completion_scoring_matches_trls_chunked_kernel(tiny_model) -> None:
    """The CPU replacement gives TRL's log-probabilities, entropies and gradients on the completion positions."""
    models = [AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True) for _ in range(2)]
    for model in models:
        add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    score_completions_directly(models[1], temperature=0.7)
    input_ids = torch.randint(0, 1000, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[:, :25] = -100  # the prompt: only the last 15 positions are a completion
    labels[1, 35:] = -100  # padding after a shorter completion

    outputs = [model(input_ids=input_ids, labels=labels, fused_lm_head=True) for model in models]
    for output in outputs:
        (output.log_probs.sum() + output.entropy.sum()).backward()

    torch.testing.assert_close(outputs[1].log_probs, outputs[0].log_probs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outputs[1].entropy, outputs[0].entropy, rtol=1e-4, atol=1e-5)
    assert torch.equal(outputs[1].label_mask, outputs[0].label_mask)
    for (name, trl_param), direct_param in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(direct_param.grad, trl_param.grad, rtol=1e-3, atol=1e-6, msg=name)


def test_padded_rows_are_scored_as_each_row_alone(tiny_model) -> None:
    """Left and right padding: each row's log-probabilities are those of its own tokens scored unpadded."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True)
    score_completions_directly(model, temperature=0.7)
    input_ids = torch.randint(0, 1000, (3, 30), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0  # a shorter prompt, left-padded
    attention_mask[1, 26:] = 0  # a shorter completion, right-padded
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :18] = -100  # the completion is the last 12 positions

    shapes = []
    model.model.register_forward_pre_hook(
        lambda _, args, kwargs: shapes.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    output.log_probs.sum().backward()
    assert shapes == [(1, 26), (1, 26), (1, 30)], "each row should run on its own tokens, without pads"

    for row in range(3):
        start, last = attention_mask[row].nonzero().flatten()[[0, -1]].tolist()
        alone = input_ids[row : row + 1, start : last + 1]
        with torch.no_grad():
            logits = model.lm_head(model.model(input_ids=alone).last_hidden_state)
        expected = torch.log_softmax(logits[0, :-1] / 0.7, dim=-1).gather(-1, alone[0, 1:, None])[:, 0]
        scored = labels[row, 1:] != -100
        torch.testing.assert_close(output.log_probs[row][scored], expected[scored[start:last]], rtol=1e-4, atol=1e-5)
        assert not output.log_probs[row][~scored].any()
    assert all(param.grad is not None for param in model.parameters() if param.requires_grad)


def test_a_mask_with_a_hole_is_scored_padded(tiny_model) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True)
    input_ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(2))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 5] = 0  # not left or right padding: only the padded batch can mean this

    with torch.no_grad():
        padded = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        hidden = hidden_states_row_by_row(model, input_ids=input_ids, attention_mask=attention_mask)

    torch.testing.assert_close(hidden, padded)


def test_a_masked_filler_group_costs_the_trainer_one_masked_token_a_rollout(
    tmp_path: Path, tokenizer, rl_index
) -> None:
    environment = RolloutEnvironment(
        search_index=str(rl_index),
        summarizer=EndpointConfig(role="summarizer", base_url="http://127.0.0.1:9/v1", model="s"),
    )
    rollout = AgentRollout(
        [RLPrompt("q0", RL_QUESTION, ["Paris"])],
        environment,
        tokenizer,
        DAPOHyperparameters(num_generations=2, per_device_train_batch_size=4),
        seed=0,
        work_dir=tmp_path,
    )
    sample = RLSample(prompt_ids=[1, 2, 3], completion_ids=[4, 5, 6, 7], env_mask=[1, 1, 0, 1], truncated=False)

    def group(answers: list[float]) -> Group[ScoredRollout]:
        rollouts = [ScoredRollout(sample, RolloutReward(1.0, answer, "exact"), 0) for answer in answers]
        return Group(RL_QUESTION, rollouts, answers, generated_tokens=8)

    batch = FilledBatch([group([0.0, 1.0]), group([0.0, 0.0])], [False, True], 1, 2, 1, 16)

    inputs = rollout._trainer_inputs(batch)

    assert inputs["completion_ids"] == [[4, 5, 6, 7]] * 2 + [[4]] * 2
    assert inputs["env_mask"] == [[1, 1, 0, 1]] * 2 + [[0]] * 2
    assert inputs["prompt_ids"] == [[1, 2, 3]] * 4 and inputs["answer_reward"] == [0.0, 1.0, 0.0, 0.0]
    assert rollout.masked_token_share == pytest.approx(0.25), "fillers do not count towards the trained tokens"


@pytest.mark.parametrize(("metric", "kept"), [("answer", False), ("reward", True)])
def test_an_all_wrong_group_that_differs_in_format_is_kept_only_when_dynamic_sampling_compares_whole_rewards(
    tmp_path: Path, tokenizer, rl_index, metric: str, kept: bool
) -> None:
    """DAPO's accuracy filter drops it (every answer wrong); comparing 0.1 format + 0.9 answer keeps it, so the
    rollout that broke the format gets a negative advantage of its own."""
    environment = RolloutEnvironment(
        search_index=str(rl_index),
        summarizer=EndpointConfig(role="summarizer", base_url="http://127.0.0.1:9/v1", model="s"),
    )
    rollout = AgentRollout(
        [RLPrompt("q0", RL_QUESTION, ["Paris"])],
        environment,
        tokenizer,
        DAPOHyperparameters(dynamic_sampling_metric=metric),
        seed=0,
        work_dir=tmp_path,
    )
    sample = RLSample(prompt_ids=[1], completion_ids=[2], env_mask=[1], truncated=False)
    rollouts = [ScoredRollout(sample, RolloutReward(fmt, 0.0, "exact"), 0) for fmt in (1.0, 0.0, 1.0, 1.0)]

    compared = rollout._compared_rewards(rollouts)

    assert compared == ([0.0] * 4 if metric == "answer" else pytest.approx([0.1, 0.0, 0.1, 0.1]))
    assert Group(RL_QUESTION, rollouts, compared, generated_tokens=4).informative is kept


def test_an_unknown_dynamic_sampling_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="dynamic_sampling_metric must be one of \\('answer', 'reward'\\), got 'acc'"):
        DAPOHyperparameters(dynamic_sampling_metric="acc")
