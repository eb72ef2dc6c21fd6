"""RL rollouts: the real ReAct agent, driven by the policy being trained, turned into token sequences and rewards.

The agent is the one evaluation and trajectory sampling use (`agent.loop.ReactAgent`: same prompts, parser and
tools); only its model changes: `LocalPolicy` answers the agent's chat requests with `generate` on the trainer's
own weights, batching the requests of concurrent rollouts into one call. A finished trajectory becomes a prompt
(system + question) and a completion in which the agent's own turns carry `env_mask` = 1 and everything the
environment wrote (observations, chat-template scaffolding between turns) carries 0. The mask is the one SFT
learns from (`masking.tokenize_chat`), so the two training stages agree on what the agent says.

The completion is the conversation re-tokenized from its text, as SFT sees it. A turn's sampled tokens can differ
from that tokenization where BPE merges differently or the parser cut text after an observation tag; the trainer
scores the re-tokenized sequence under the current weights (no sampling log-probabilities are passed), so the
update is exact for the sequence trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future

import torch
from transformers import LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase, TopPLogitsWarper

from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.llm.client import ChatResult, EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.shared.judge import JudgeFlag, judge_answer
from webdancer_dagster.training.masking import IGNORE_INDEX, tokenize_chat

logger = logging.getLogger(__name__)

LOCAL_POLICY_URL = "local://transformers"


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The tokens the model reads before its next turn: the chat template with the generation prompt."""
    ids = tokenizer.apply_chat_template(
        [dict(message) for message in messages], tokenize=True, add_generation_prompt=True, return_dict=False
    )
    return list(ids)


class LocalPolicy:
    """A chat model over in-process weights with the `LLMEndpoint` interface the agent calls.

    Requests from concurrent agent threads are gathered for `gather_s` and answered by one batched, left-padded
    `generate` call, so a group of rollouts costs about as many forward passes as one. Stop strings end a turn
    the way an OpenAI-compatible server does: the text is cut before them. Nothing is cached: RL needs fresh
    samples from the current weights on every call.

    Each request samples from its own random stream, seeded by its sampling seed, `sample_index` and prompt (a
    fresh draw when the seed is None): which requests happen to share a batch does not change what any of them
    samples, so a run, and a run resumed from a checkpoint, repeats its rollouts.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingParams,
        *,
        max_batch: int = 16,
        gather_s: float = 0.02,
        name: str = "policy",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = EndpointConfig(
            role="policy", base_url=LOCAL_POLICY_URL, model=name, sampling=sampling, max_concurrency=max_batch
        )
        self.generate_calls = 0
        self._max_batch = max_batch
        self._gather_s = gather_s
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def max_concurrency(self) -> int:
        return self._max_batch

    def chat(
        self, messages: Sequence[Mapping[str, str]], *, sampling: SamplingParams | None = None, sample_index: int = 0
    ) -> ChatResult:
        """One sampled assistant turn for `messages`, reproducible when `sampling.seed` is set."""
        sampling = sampling or self.config.sampling
        prompt_ids = chat_prompt_ids(self.tokenizer, messages)
        request = _Request(prompt_ids, sampling, request_seed(sampling.seed, sample_index, prompt_ids), Future())
        self._ensure_worker()
        self._requests.put(request)
        return request.future.result()

    def close(self) -> None:
        """Stop the generation thread; pending requests fail rather than hang."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            self._requests.put(None)
            worker.join()

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="local-policy", daemon=True)
                self._worker.start()

    def _serve(self) -> None:
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self._gather_s
            while len(batch) < self._max_batch:
                try:
                    item = self._requests.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if item is None:
                    self._requests.put(None)  # answer what was gathered, then stop
                    break
                batch.append(item)
            # Requests with other sampling settings wait for a batch of their own.
            same = [item for item in batch if item.sampling == batch[0].sampling]
            for item in batch:
                if item.sampling != batch[0].sampling:
                    self._requests.put(item)
            try:
                results = self._generate(same, same[0].sampling)
            except BaseException as error:  # the agents must see the failure, not wait forever
                for item in same:
                    item.future.set_exception(error)
                continue
            for item, result in zip(same, results, strict=True):
                item.future.set_result(result)

    @torch.no_grad()
    def _generate(self, requests: list[_Request], sampling: SamplingParams) -> list[ChatResult]:
        started = time.perf_counter()
        prompts = [request.prompt_ids for request in requests]
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(ids) for ids in prompts)
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts], device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                # Greedy over scores that carry each row's own Gumbel noise: a sample per row from its own stream.
                do_sample=False,
                logits_processor=[SeededRowSampler([request.seed for request in requests], sampling)]
                if sampling.temperature > 0
                else None,
                temperature=None,
                top_p=None,
                top_k=None,
                max_new_tokens=sampling.max_tokens,
                stop_strings=list(sampling.stop) or None,
                tokenizer=self.tokenizer,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=pad_id,
            )
        finally:
            self.model.train(was_training)
        latency = time.perf_counter() - started
        rows = output[:, width:].tolist()
        results = [self._to_result(row, len(ids), sampling, latency) for row, ids in zip(rows, prompts, strict=True)]
        with self._lock:
            self.generate_calls += 1
        return results

    def _to_result(
        self, new_ids: list[int], prompt_tokens: int, sampling: SamplingParams, latency: float
    ) -> ChatResult:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        finish_reason = "length"
        if eos in new_ids:
            new_ids, finish_reason = new_ids[: new_ids.index(eos) + 1], "stop"
        while new_ids and new_ids[-1] == pad != eos:  # a row stopped by a stop string is padded to the longest
            new_ids, finish_reason = new_ids[:-1], "stop"
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        cut = min((text.find(stop) for stop in sampling.stop if stop in text), default=-1)
        if cut >= 0:
            text, finish_reason = text[:cut], "stop"
        return ChatResult(
            content=text,
            reasoning_content=None,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(new_ids),
            latency_s=latency,
            model=self.config.model,
        )


@dataclasses.dataclass(frozen=True)
class _Request:
    prompt_ids: list[int]
    sampling: SamplingParams
    seed: int
    future: Future[ChatResult]


def request_seed(seed: int | None, sample_index: int, prompt_ids: Sequence[int]) -> int:
    """The seed of one request's random stream: a hash of seed, sample and prompt (every turn of a rollout has its
    own); without a seed, a fresh one from torch's global generator."""
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    digest = hashlib.sha256(f"{seed}/{sample_index}/{','.join(map(str, prompt_ids))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2


class SeededRowSampler(LogitsProcessor):
    """Temperature and top-p, then Gumbel noise drawn from each row's own generator: the argmax of the result is a
    sample from the row's tempered, nucleus-filtered distribution (the Gumbel-max trick), and the noise a row gets
    does not depend on the other rows of the batch."""

    def __init__(self, seeds: Sequence[int], sampling: SamplingParams) -> None:
        self._generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self._temperature = sampling.temperature
        self._top_p = TopPLogitsWarper(sampling.top_p) if sampling.top_p < 1.0 else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float() / self._temperature
        if self._top_p is not None:
            scores = self._top_p(input_ids, scores)
        tiny = torch.finfo(torch.float32).tiny
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=g) for g in self._generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
        return scores + gumbel.to(scores.device)


@dataclasses.dataclass(frozen=True)
class RLSample:
    """One rollout as the trainer consumes it; `env_mask[i]` is 1 where `completion_ids[i]` is the agent's own."""

    prompt_ids: list[int]
    completion_ids: list[int]
    env_mask: list[int]
    truncated: bool


def rl_sample(tokenizer: PreTrainedTokenizerBase, trajectory: Trajectory, max_completion_length: int) -> RLSample:
    """Tokenize a rollout into prompt (system + question + generation prompt) and masked completion.

    The completion ends at the end-of-turn token of the agent's last turn: what the environment would have said
    next was never read by the policy. A turn cut at its token limit, or a completion cut at
    `max_completion_length`, ends without the end-of-turn token, which is how the trainer recognises (and with
    `mask_truncated_completions` leaves out) truncated rollouts.
    """
    messages = [message.model_dump() for message in trajectory.messages]
    last_assistant = max((i for i, message in enumerate(messages) if message["role"] == "assistant"), default=None)
    if last_assistant is None:  # the first turn came back empty: the policy said nothing but end-of-turn
        messages = [*messages[:2], {"role": "assistant", "content": ""}]
    else:
        messages = messages[: last_assistant + 1]
    prompt_ids = chat_prompt_ids(tokenizer, messages[:2])
    chat = tokenize_chat(tokenizer, messages)
    if chat.input_ids[: len(prompt_ids)] != list(prompt_ids):
        raise ValueError("the chat template does not render the prompt as a prefix of the whole conversation")
    labelled = [i for i, label in enumerate(chat.labels) if label != IGNORE_INDEX]
    end = labelled[-1] + 1 if labelled else len(prompt_ids)
    completion_ids = chat.input_ids[len(prompt_ids) : end]
    env_mask = [int(label != IGNORE_INDEX) for label in chat.labels[len(prompt_ids) : end]]
    last_turn_cut = bool(trajectory.steps) and trajectory.steps[-1].finish_reason == "length"
    truncated = last_turn_cut or len(completion_ids) > max_completion_length
    completion_ids, env_mask = completion_ids[:max_completion_length], env_mask[:max_completion_length]
    # A cut can land right after an end-of-turn token (the cut turn's own, or an earlier turn's or observation's at
    # `max_completion_length`); the trainer would then take the rollout for a finished one and train on it.
    end_of_turn = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    if truncated and completion_ids and completion_ids[-1] in end_of_turn:
        completion_ids, env_mask = completion_ids[:-1], env_mask[:-1]
    if not completion_ids:  # a turn cut before it produced a token still needs one position for the trainer
        completion_ids, env_mask = [tokenizer.eos_token_id], [0 if truncated else 1]
    return RLSample(list(prompt_ids), completion_ids, env_mask, truncated)


@dataclasses.dataclass(frozen=True)
class RolloutReward:
    """DAPO's reward: binary format and binary answer, weighted; the judge's method and flag are kept for the record
    (`judge_flag` `unparsed` or `rejected`: the LLM judge gave no verdict, so the answer scored 0)."""

    format: float
    answer: float
    judge_method: str
    judge_flag: JudgeFlag = ""

    def total(self, format_weight: float, answer_weight: float) -> float:
        return format_weight * self.format + answer_weight * self.answer


def score_rollout(
    question: str, gold_answers: Sequence[str], trajectory: Trajectory, judge: LLMEndpoint | None
) -> RolloutReward:
    """Format = `check_format` passes (the funnel's and evaluation's meaning of valid: every turn parses, tools and
    arguments are real, an answer ends it); answer = `judge_answer` finds the answer equivalent to a gold answer (rules
    first; `judge` only where they leave it open, when a capable one is given, asked once more when its reply holds no
    verdict). No answer, and a verdict still unreadable after the retry, score 0."""
    valid = check_format(trajectory).valid
    judgement = judge_answer(question, trajectory.answer, gold_answers, judge)
    return RolloutReward(float(valid), float(judgement.correct), judgement.method, judgement.flag)
