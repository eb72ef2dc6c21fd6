"""Served rollouts: the trainer's weights behind a real llama.cpp server on 127.0.0.1, synced, verified, revived."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rl_helpers import RL_DATE, RL_QUESTION
from transformers import AutoModelForCausalLM, AutoTokenizer

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.agent.loop import run_agents
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment, to_cli_args
from webdancer_dagster.training.dapo import AGENT_STOP, AgentRollout, DAPOResult, RLPrompt, main
from webdancer_dagster.training.rollout import LocalPolicy, rl_sample, score_rollout
from webdancer_dagster.training.served_policy import ServedPolicy, trainer_probe
from webdancer_dagster.web.scope import WebScope
from webdancer_dagster.web.search import LocalSearch

pytest.importorskip("llama_cpp")

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=64, stop=AGENT_STOP)


def _agent_rollouts(policy, rl_index: Path, tokenizer, summarizer_url: str) -> list:
    summarizer = LLMEndpoint(EndpointConfig(role="summarizer", base_url=summarizer_url, model="s", max_attempts=1))
    agent = build_web_agent(policy, summarizer, LocalSearch(rl_index), WebScope.closed_book(),
                            tokenizer, n_ctx=4096, max_llm_calls=3, current_date=RL_DATE)  # fmt: skip
    return run_agents(agent, [RL_QUESTION], samples_per_question=1, max_workers=1)


def test_greedy_served_rollouts_equal_in_process_ones_with_the_same_masks_and_rewards(
    answering_model: Path, rl_index: Path, tmp_path: Path, scripted
) -> None:
    """f32 export, greedy: llama.cpp and transformers agree token for token on the tiny model, so the agent takes
    the same turns, and the trainer sees the same tokens, masks and rewards."""
    tokenizer = AutoTokenizer.from_pretrained(answering_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(answering_model, local_files_only=True)
    summarizer_url = scripted([]).base_url
    local = LocalPolicy(model, tokenizer, GREEDY)
    served = ServedPolicy(tokenizer, GREEDY, tmp_path / "served", n_ctx=4096, n_threads=1, outtype="f32")
    try:
        sync = served.sync(model, version=0)
        [in_process] = _agent_rollouts(local, rl_index, tokenizer, summarizer_url)
        [from_server] = _agent_rollouts(served.endpoint, rl_index, tokenizer, summarizer_url)
    finally:
        local.close()
        served.close()

    assert sync.probe_matches and sync.served_probe, (sync.served_probe, sync.trainer_probe)
    assert [m.content for m in from_server.messages] == [m.content for m in in_process.messages]
    assert from_server.steps[0].action == "search" and from_server.answer == in_process.answer
    assert rl_sample(tokenizer, from_server, 4096) == rl_sample(tokenizer, in_process, 4096)
    gold = ["Paris"]
    assert score_rollout(RL_QUESTION, gold, from_server, None) == score_rollout(RL_QUESTION, gold, in_process, None)
    assert not list((tmp_path / "served").glob("*.gguf")), "close() leaves no export behind"


def _rollout(tokenizer, rl_index: Path, summarizer_url: str, work_dir: Path, **overrides: object) -> AgentRollout:
    settings = {"max_completion_length": 256, "max_turn_tokens": 64, "max_llm_calls": 3, "temperature": 0.5}
    hparams = DAPOHyperparameters(rollout_backend="llama_cpp", **{**settings, **overrides})  # type: ignore[arg-type]
    environment = RolloutEnvironment(
        search_index=str(rl_index),
        summarizer=EndpointConfig(role="summarizer", base_url=summarizer_url, model="s", max_attempts=1),
        current_date=RL_DATE,
    )
    pool = [RLPrompt("q0", RL_QUESTION, ["Paris"])]
    return AgentRollout(pool, environment, tokenizer, hparams, seed=0, work_dir=work_dir)


def test_a_server_that_dies_before_a_step_is_restarted_and_the_whole_group_sampled_again(
    answering_model: Path, rl_index: Path, tmp_path: Path, scripted
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(answering_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(answering_model, local_files_only=True)
    rollout = _rollout(tokenizer, rl_index, scripted([]).base_url, tmp_path / "served")
    try:
        rollout._prepare_policy(model, step=0, max_batch=4)
        assert rollout.served is not None
        port = rollout.served.endpoint.config.base_url
        server = rollout.served._server
        assert server is not None and server.alive
        os.killpg(server._process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        server._process.wait()  # type: ignore[union-attr]

        [group] = rollout._sample_groups([RL_QUESTION])

        assert rollout.rollout_retries == 1 and rollout.served.restarts == 1
        assert rollout.served.endpoint.config.base_url == port, "the restarted server keeps its port"
        assert len(group.rollouts) == 4 and all(r.sample.completion_ids for r in group.rollouts)
        assert {r.policy_version for r in group.rollouts} == {0}
    finally:
        rollout.close()


def test_a_dead_server_that_will_not_stay_up_fails_the_step_after_the_allowed_retries(
    answering_model: Path, rl_index: Path, tmp_path: Path, scripted
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(answering_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(answering_model, local_files_only=True)
    rollout = _rollout(tokenizer, rl_index, scripted([]).base_url, tmp_path / "served", max_rollout_retries=0)
    try:
        rollout._prepare_policy(model, step=0, max_batch=4)
        assert rollout.served is not None and rollout.served._server is not None
        rollout.served._server.stop()
        with pytest.raises(Exception, match="policy endpoint"):
            rollout._sample_groups([RL_QUESTION])
        assert rollout.rollout_retries == 0
    finally:
        rollout.close()


def test_two_synced_dapo_steps_serve_the_trainers_new_weights(
    tmp_path: Path, answering_model: Path, rl_index: Path, scripted
) -> None:
    """Three steps, a sync every second step: the server starts on step 0's weights and serves step 2's after the
    trainer moved them; its greedy probe equals the trainer's at each sync and has changed between them."""
    judge = scripted(lambda request: "Incorrect")
    environment = RolloutEnvironment(
        search_index=str(rl_index),
        summarizer=EndpointConfig(role="summarizer", base_url=judge.base_url, model="s", max_attempts=1),
        current_date=RL_DATE,
    )
    (tmp_path / "environment.json").write_text(environment.model_dump_json())
    questions = [RL_QUESTION, "What is the capital city of France?"]
    (tmp_path / "pool.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "question": q, "answers": ["Paris"]}) + "\n" for i, q in enumerate(questions)
        )
    )
    hparams = DAPOHyperparameters(
        max_steps=3,
        learning_rate=5e-3,
        temperature=0.5,
        max_completion_length=256,
        max_turn_tokens=64,
        max_llm_calls=3,
        oversample_factor=1.0,
        max_refill_rounds=3,
        save_steps=1000,
        rollout_backend="llama_cpp",
        sync_every_steps=2,
        rollout_gguf_outtype="f32",
        # fp32 training, so "the server answers as the trainer" is exact on this tiny model; on a CPU with bf16
        # instructions the default trains under autocast (the probe itself is fp32: the test below).
        bf16=False,
    )
    args = [
        *["--train_file", str(tmp_path / "pool.jsonl"), "--environment_file", str(tmp_path / "environment.json")],
        *["--model_dir", str(answering_model), "--output_dir", str(tmp_path / "rl"), *to_cli_args(hparams)],
    ]

    result = main(args)

    assert isinstance(result, DAPOResult) and result.steps == 3
    assert [sync["version"] for sync in result.weight_syncs] == [0, 2]
    assert result.policy_staleness == [0, 1, 0]
    assert all(sync["probe_matches"] for sync in result.weight_syncs), result.weight_syncs
    first, second = result.weight_syncs
    assert first["served_probe"] != second["served_probe"], "the server did not serve the moved weights"
    assert result.sync_seconds > 0 and 0 < result.sync_time_share < 1 and result.rollout_retries == 0
    assert [entry.get("rollouts/policy_staleness") for entry in result.history] == [0.0, 1.0, 0.0]
    for entry in result.history:  # every sampled rollout counts, the dropped groups' too
        assert 0.0 <= entry["rollouts/sampled_answer_mean"] <= 1.0
        assert 0.0 <= entry["rollouts/sampled_format_mean"] <= 1.0
    assert result.history[0]["rollouts/sampled_format_mean"] > 0, "the answering model writes the agent's format"


def test_vllm_rollouts_are_refused_with_what_to_use_instead() -> None:
    refusal = r"vLLM rollouts with weight sync are not implemented \(served_policy\.PolicyServer is where"
    with pytest.raises(ValueError, match=refusal):
        DAPOHyperparameters(rollout_backend="vllm")


def test_the_trainer_probe_runs_in_fp32_while_training_runs_under_bf16_autocast(tiny_model, tokenizer) -> None:
    """Accelerate wraps a bf16 run's `forward` in autocast; the probe unwraps it for its own call only, so it checks
    the exported weights, not bf16 rounding, and training keeps its autocast."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # a trainer of an earlier test set its own precision
    try:
        model = Accelerator(mixed_precision="bf16", cpu=True).prepare(model)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # and the next test's trainer sets its own
    autocast_seen: list[bool] = []
    model.model.register_forward_hook(lambda *_: autocast_seen.append(torch.is_autocast_enabled("cpu")))

    trainer_probe(model, tokenizer)
    probe_calls = len(autocast_seen)
    model(input_ids=torch.tensor([[1, 2, 3]]))

    assert probe_calls > 0 and not any(autocast_seen[:probe_calls]), "the probe ran under autocast"
    assert autocast_seen[probe_calls:] == [True], "the training forward lost its autocast"
