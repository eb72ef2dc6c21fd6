"""RL rollouts: the real agent on the trainer's weights; env_mask covers exactly what the environment wrote."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from rl_helpers import RL_DATE, RL_QUESTION, rl_chat
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.agent.loop import run_agents
from webdancer_dagster.agent.trajectory import ChatMessage, Step, Trajectory
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, LLMEndpointError, SamplingParams
from webdancer_dagster.training.dapo import AGENT_STOP
from webdancer_dagster.training.rollout import (
    LocalPolicy,
    SeededRowSampler,
    chat_prompt_ids,
    rl_sample,
    score_rollout,
)
from webdancer_dagster.web.scope import WebScope
from webdancer_dagster.web.search import LocalSearch

OBSERVATION = "A Google search for 'capital of France' found 1 results:\n1. [France](http://geo/france.html)"


def _trajectory(messages: list[dict[str, str]], answer: str | None, last_finish: str = "stop") -> Trajectory:
    counts = {"llm_latency_s": 0.0, "prompt_tokens": 0, "completion_tokens": 0, "context_tokens": 0}
    steps = [
        Step(index=0, thought="", action="search", finish_reason="stop", **counts),
        Step(index=1, thought="", action="answer", answer=answer, finish_reason=last_finish, **counts),
    ]
    return Trajectory(
        question=RL_QUESTION,
        messages=[ChatMessage(**message) for message in messages],
        steps=steps,
        answer=answer,
        termination="answer" if answer else "no_answer",
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


def _decode_by_mask(tokenizer: PreTrainedTokenizerBase, ids: list[int], mask: list[int], keep: int) -> list[str]:
    """The runs of `ids` whose mask equals `keep`, decoded, in order."""
    runs: list[list[int]] = []
    previous = None
    for token, flag in zip(ids, mask, strict=True):
        if flag == keep:
            if previous != keep:
                runs.append([])
            runs[-1].append(token)
        previous = flag
    return [tokenizer.decode(run) for run in runs]


def test_env_mask_marks_the_agent_turns_and_masks_the_observation(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = rl_chat(OBSERVATION, "Paris")

    sample = rl_sample(tokenizer, _trajectory(messages, "Paris"), max_completion_length=4096)

    assert sample.prompt_ids == chat_prompt_ids(tokenizer, messages[:2])
    agent_text = _decode_by_mask(tokenizer, sample.completion_ids, sample.env_mask, keep=1)
    assert agent_text == [messages[2]["content"] + "<|im_end|>", messages[4]["content"] + "<|im_end|>"]
    environment_text = _decode_by_mask(tokenizer, sample.completion_ids, sample.env_mask, keep=0)
    assert environment_text == [f"\n<|im_start|>user\n{messages[3]['content']}<|im_end|>\n<|im_start|>assistant\n"]
    assert sample.completion_ids[-1] == tokenizer.eos_token_id and not sample.truncated


def test_a_turn_cut_at_its_token_limit_or_a_long_completion_is_truncated(tokenizer: PreTrainedTokenizerBase) -> None:
    messages = rl_chat(OBSERVATION, "Par")

    cut_turn = rl_sample(tokenizer, _trajectory(messages, None, last_finish="length"), max_completion_length=4096)
    cut_completion = rl_sample(tokenizer, _trajectory(messages, "Par"), max_completion_length=20)

    assert cut_turn.truncated and cut_turn.completion_ids[-1] != tokenizer.eos_token_id
    assert cut_completion.truncated and len(cut_completion.completion_ids) == 20


def test_rewards_are_binary_and_weighted_one_tenth_format_nine_tenths_answer(scripted) -> None:
    judge_server = scripted(lambda request: "Incorrect")
    judge = LLMEndpoint(EndpointConfig(role="judge", base_url=judge_server.base_url, model="judge", max_attempts=1))
    good = _trajectory(rl_chat(OBSERVATION, "Paris"), "Paris")
    wrong = _trajectory(rl_chat(OBSERVATION, "London"), "London")
    malformed = _trajectory([*rl_chat(OBSERVATION, "x")[:4], {"role": "assistant", "content": "Paris"}], "Paris")

    rewards = [score_rollout(RL_QUESTION, ["Paris"], trajectory, judge) for trajectory in (good, wrong, malformed)]

    assert [(reward.format, reward.answer) for reward in rewards] == [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0)]
    assert [reward.total(0.1, 0.9) for reward in rewards] == pytest.approx([1.0, 0.1, 0.9])
    assert [reward.judge_method for reward in rewards] == ["exact", "llm", "exact"]
    assert len(judge_server.requests) == 1, "exact matches must not cost a judge call"


def test_a_dead_judge_fails_with_an_error_naming_it() -> None:
    dead = EndpointConfig(role="judge", base_url="http://127.0.0.1:9/v1", model="judge", max_attempts=2,
                          backoff_initial_s=0.0, timeout_s=2.0)  # fmt: skip
    wrong = _trajectory(rl_chat(OBSERVATION, "London"), "London")

    with pytest.raises(LLMEndpointError, match="judge endpoint http://127.0.0.1:9/v1"):
        score_rollout(RL_QUESTION, ["Paris"], wrong, LLMEndpoint(dead))


def test_local_policy_drives_the_real_agent_and_masks_the_real_search_results(
    answering_model: Path, rl_index: Path, scripted
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(answering_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(answering_model, local_files_only=True)
    sampling = SamplingParams(temperature=0.5, top_p=1.0, max_tokens=64, stop=AGENT_STOP)
    # A batch closes once all four agents' turns are in, or after 2 s: not the default 20 ms, which a busy machine's
    # threads can miss (then each turn is its own call, as if nothing were batched).
    policy = LocalPolicy(model, tokenizer, sampling, max_batch=4, gather_s=2.0)
    summarizer = LLMEndpoint(EndpointConfig(role="summarizer", base_url=scripted([]).base_url, model="s"))
    agent = build_web_agent(policy, summarizer, LocalSearch(rl_index), WebScope.closed_book(),
                            tokenizer, n_ctx=4096, max_llm_calls=3, current_date=RL_DATE)  # fmt: skip
    try:
        trajectories = run_agents(agent, [RL_QUESTION], samples_per_question=4, max_workers=4)
    finally:
        policy.close()

    assert policy.generate_calls < 4 * 2, "concurrent turns were not batched into shared generate calls"
    searched = [t for t in trajectories if t.steps and t.steps[0].action == "search" and t.steps[0].observation]
    assert searched, "the answering model never searched"
    for trajectory in searched:
        sample = rl_sample(tokenizer, trajectory, max_completion_length=4096)
        environment_text = "".join(_decode_by_mask(tokenizer, sample.completion_ids, sample.env_mask, keep=0))
        assert trajectory.steps[0].observation in environment_text
        agent_text = "".join(_decode_by_mask(tokenizer, sample.completion_ids, sample.env_mask, keep=1))
        assert "<tool_response>" not in agent_text and trajectory.messages[2].content in agent_text


def test_a_seeded_request_samples_the_same_turn_alone_or_batched_with_any_others(tiny_model) -> None:
    """Each request has its own random stream: what shares its batch changes nothing, and a resumed DAPO run
    repeats its rollouts. Another sample index or seed draws another turn."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.path, local_files_only=True)
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=24, seed=7)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    others = [[{"role": "user", "content": f"Name a river in country number {n}."}] for n in range(3)]
    alone_policy = LocalPolicy(model, tokenizer, seeded, max_batch=1)
    batched_policy = LocalPolicy(model, tokenizer, seeded, max_batch=4, gather_s=2.0)
    try:
        alone = alone_policy.chat(question, sample_index=1).content
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [pool.submit(batched_policy.chat, question, sample_index=1)]
            futures += [pool.submit(batched_policy.chat, other, sample_index=n) for n, other in enumerate(others)]
            batched = [future.result().content for future in futures]
        other_sample = alone_policy.chat(question, sample_index=2).content
        other_seed = alone_policy.chat(question, sampling=seeded.model_copy(update={"seed": 8}), sample_index=1)
        unseeded = [alone_policy.chat(question, sampling=seeded.model_copy(update={"seed": None})) for _ in range(2)]
    finally:
        alone_policy.close()
        batched_policy.close()

    assert batched_policy.generate_calls < 4, "the four requests were not batched together"
    assert batched[0] == alone, "the batch changed what a seeded request sampled"
    assert other_sample != alone and other_seed.content != alone, "another sample or seed drew the same turn"
    assert unseeded[0].content != unseeded[1].content, "without a seed every call should be a fresh sample"


def test_the_seeded_sampler_draws_from_the_tempered_nucleus_distribution() -> None:
    """Gumbel noise plus argmax samples the same distribution as softmax(logits / T) cut to the top-p nucleus."""
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0])
    sampling = SamplingParams(temperature=0.7, top_p=0.9)
    draws = 20_000
    sampler = SeededRowSampler(range(draws), sampling)

    chosen = sampler(torch.zeros(draws, 1, dtype=torch.long), logits.repeat(draws, 1)).argmax(dim=-1)

    probabilities = torch.softmax(logits / 0.7, dim=-1)
    kept = torch.cumsum(probabilities, dim=-1) - probabilities < 0.9  # the smallest prefix holding 0.9
    expected = torch.where(kept, probabilities, 0.0) / probabilities[kept].sum()
    observed = torch.bincount(chosen, minlength=len(logits)).float() / draws
    assert observed[~kept].sum() == 0, "a token outside the nucleus was drawn"
    torch.testing.assert_close(observed, expected, atol=0.015, rtol=0)
