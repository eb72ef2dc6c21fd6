"""Chat -> `input_ids` + `labels` where only the assistant turns are learned.

WebDancer trains on the agent's own words (thought, tool call, answer) and never on the system prompt, the
question or the `<tool_response>` observations, which come back as user turns. The mask is computed from the
model's own chat template by rendering the conversation prefix by prefix: the text an assistant turn adds
after the generation prompt is exactly what the model must produce at inference time. Templates with
`{% generation %}` blocks could use `return_assistant_tokens_mask`, but SmolLM2's has none, and prefix
rendering works for every template whose renderings of a prefix are prefixes of the whole.

A chat longer than the training context is fitted without ever cutting the assistant's words: a chat cut from the
end would teach the model to stop before its `<answer>`. The `<tool_response>` observations are shortened instead
(they carry no loss), and a chat whose other turns alone are too long is dropped and counted.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from webdancer_dagster.agent.validity import OBSERVATION_CLOSE, OBSERVATION_OPEN

if TYPE_CHECKING:  # transformers loads in seconds: not when the definitions load
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that PyTorch's cross-entropy (and every Hugging Face model) skips."""


class TruncationPolicy(StrEnum):
    """What to do with a chat longer than `max_length` tokens; either way the assistant's text is never cut.

    `shorten_observations` cuts the `<tool_response>` observations, longest first, until the chat fits, and drops
    it only when its other turns alone are too long; `drop` drops every chat that is too long.
    """

    DROP = "drop"
    SHORTEN_OBSERVATIONS = "shorten_observations"


class DropReason(StrEnum):
    """Why a chat was left out of the training set (the keys of `TokenizedDataset.dropped`)."""

    TOO_LONG = "too_long"
    NO_ASSISTANT_TOKENS = "no_assistant_tokens"


class ShortenReason(StrEnum):
    """Why a kept chat is not the one in the data (the keys of `TokenizedDataset.shortened`)."""

    OBSERVATIONS_SHORTENED = "observations_shortened"


CUT_MARKER = "[...]"
"""Written where a shortened observation's text was left out, so the model is not taught that pages end there."""


@dataclass(frozen=True)
class LengthSummary:
    """Median, 95th percentile and maximum of token lengths; percentiles by nearest rank, so each is a real length."""

    p50: int
    p95: int
    max: int

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthSummary:
        if not lengths:
            raise ValueError("no lengths to summarise")
        ordered = sorted(lengths)
        return cls(
            p50=ordered[math.ceil(0.5 * len(ordered)) - 1],
            p95=ordered[math.ceil(0.95 * len(ordered)) - 1],
            max=ordered[-1],
        )

    def to_dict(self) -> dict[str, int]:
        return {"p50": self.p50, "p95": self.p95, "max": self.max}


@dataclass(frozen=True)
class CharSpan:
    """Half-open character range `[start, end)` of the rendered chat."""

    start: int
    end: int


@dataclass(frozen=True)
class TokenizedChat:
    """One training example; `labels[i] == input_ids[i]` where learned, else `IGNORE_INDEX`."""

    input_ids: list[int]
    labels: list[int]

    @property
    def labelled_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def assistant_turn_tokens(self) -> list[int]:
        """Tokens of each assistant turn: a maximal run of labelled positions, as the template always puts
        unlabelled scaffolding (at least the next turn's header) between two turns."""
        lengths: list[int] = []
        run = 0
        for label in [*self.labels, IGNORE_INDEX]:
            if label != IGNORE_INDEX:
                run += 1
            elif run:
                lengths.append(run)
                run = 0
        return lengths


@dataclass
class TokenizedDataset:
    """Examples that survived, the counted reasons why others were shortened or dropped, and the chats' lengths."""

    examples: list[TokenizedChat] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    shortened: Counter[str] = field(default_factory=Counter)
    chat_lengths: list[int] = field(default_factory=list)
    """Tokens of every chat as it came, before fitting (dropped ones included)."""

    @property
    def tokens(self) -> int:
        return sum(len(example.input_ids) for example in self.examples)

    @property
    def labelled_tokens(self) -> int:
        return sum(example.labelled_tokens for example in self.examples)

    @property
    def masked_share(self) -> float:
        """Share of tokens that carry no loss (system, user, observations, template scaffolding)."""
        if not self.tokens:
            return 0.0
        return 1.0 - self.labelled_tokens / self.tokens

    @property
    def chat_tokens(self) -> LengthSummary:
        """Lengths of the chats before fitting: how much of the data `max_length` leaves whole."""
        return LengthSummary.of(self.chat_lengths)

    @property
    def assistant_turn_tokens(self) -> LengthSummary:
        """Lengths of the assistant turns trained on: what a policy's turn budget must leave room for."""
        return LengthSummary.of([length for example in self.examples for length in example.assistant_turn_tokens])


class ChatTemplateError(ValueError):
    """The chat template cannot be split into per-turn pieces by prefix rendering."""


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]
) -> tuple[str, list[CharSpan]]:
    """Render the chat and return it with the character spans the assistant is trained to produce.

    Each span runs from the end of the generation prompt (`<|im_start|>assistant\\n`) to the end of the
    assistant's turn including the end-of-turn marker, without the whitespace the template puts between turns
    (it is scaffolding: the model stops generating at the marker).
    """
    _check_messages(messages)
    full_text = _render(tokenizer, messages, add_generation_prompt=False)
    spans: list[CharSpan] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], add_generation_prompt=True)
        with_turn = _render(tokenizer, messages[: index + 1], add_generation_prompt=False)
        if not with_turn.startswith(prompt) or not full_text.startswith(with_turn):
            raise ChatTemplateError(
                f"chat template does not render message {index} as a prefix extension; "
                "prefix rendering cannot locate the assistant turns for this template"
            )
        turn = with_turn[len(prompt) :]
        if message["content"] and message["content"] not in turn:
            raise ChatTemplateError(f"chat template rewrote the content of assistant message {index}")
        end = len(prompt) + len(turn.rstrip())
        if end > len(prompt):
            spans.append(CharSpan(len(prompt), end))
    return full_text, spans


def tokenize_chat(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]]) -> TokenizedChat:
    """Tokenize a whole chat with the model's template; label only the assistant spans.

    The full text is tokenized once (so token boundaries are the ones the model sees at inference) and a
    token is learned when it starts inside an assistant span.
    """
    if not tokenizer.is_fast:
        raise TypeError("masking needs a fast tokenizer (offset mapping); got " + type(tokenizer).__name__)
    text, spans = assistant_char_spans(tokenizer, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = encoding["input_ids"]
    labels = [IGNORE_INDEX] * len(input_ids)
    span_index = 0
    for position, (start, end) in enumerate(encoding["offset_mapping"]):
        if end <= start:
            continue
        while span_index < len(spans) and spans[span_index].end <= start:
            span_index += 1
        if span_index < len(spans) and spans[span_index].start <= start < spans[span_index].end:
            labels[position] = input_ids[position]
    return TokenizedChat(input_ids=input_ids, labels=labels)


def tokenize_chats(
    tokenizer: PreTrainedTokenizerBase,
    chats: Iterable[Sequence[Mapping[str, str]]],
    max_length: int,
    policy: TruncationPolicy = TruncationPolicy.SHORTEN_OBSERVATIONS,
) -> TokenizedDataset:
    """Tokenize many chats, fit the long ones into `max_length` tokens by `policy`, count what was changed."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    # A plain "drop" string equals the enum member but is not identical to it; normalise before comparing.
    policy = TruncationPolicy(policy)
    result = TokenizedDataset()
    for chat in chats:
        example = tokenize_chat(tokenizer, chat)
        result.chat_lengths.append(len(example.input_ids))
        if example.labelled_tokens == 0:
            result.dropped[DropReason.NO_ASSISTANT_TOKENS] += 1
            continue
        if len(example.input_ids) > max_length:
            fitted = None
            if policy == TruncationPolicy.SHORTEN_OBSERVATIONS:
                fitted = _shorten_observations(tokenizer, chat, max_length)
            if fitted is None:
                result.dropped[DropReason.TOO_LONG] += 1
                continue
            example = fitted
            result.shortened[ShortenReason.OBSERVATIONS_SHORTENED] += 1
        result.examples.append(example)
    if result.shortened or result.dropped:
        logger.info(
            "fitting %d chats into %d tokens: shortened %s, dropped %s",
            len(result.chat_lengths),
            max_length,
            dict(result.shortened),
            dict(result.dropped),
        )
    return result


@dataclass(frozen=True)
class _Observation:
    """A `<tool_response>` turn split as `head + body + tail`, so its body can be cut inside the wrapper."""

    head: str
    body: str
    tail: str
    token_starts: list[int]
    """Character offset in `body` where each of its tokens starts."""

    @classmethod
    def split(cls, tokenizer: PreTrainedTokenizerBase, content: str) -> _Observation:
        body = content[len(OBSERVATION_OPEN) :].lstrip()
        head = content[: len(content) - len(body)]
        tail = ""
        if body.rstrip().endswith(OBSERVATION_CLOSE):
            inner = body.rstrip()[: -len(OBSERVATION_CLOSE)].rstrip()
            body, tail = inner, body[len(inner) :]
        offsets = tokenizer(body, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return cls(head, body, tail, [start for start, _ in offsets])

    def cut(self, max_tokens: int) -> str:
        """The observation with at most `max_tokens` tokens of its body and the marker where the rest was."""
        if max_tokens >= len(self.token_starts):
            return self.head + self.body + self.tail
        kept = self.body[: self.token_starts[max_tokens]].rstrip()
        return self.head + (kept + "\n" if kept else "") + CUT_MARKER + self.tail


def _shorten_observations(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], max_length: int
) -> TokenizedChat | None:
    """A chat too long for `max_length`, with every observation cut to the largest common token cap that fits.

    A common cap cuts the longest observations first and keeps short ones whole. The cap is found by bisection
    on the real tokenized length, so template and token-boundary effects are counted exactly. None when even
    empty observations do not fit: the system, question and assistant turns alone are too long.
    """
    observations = {
        index: _Observation.split(tokenizer, message["content"])
        for index, message in enumerate(messages)
        if message["role"] == "user" and message["content"].startswith(OBSERVATION_OPEN)
    }
    if not observations:
        return None

    def with_cap(cap: int) -> list[Mapping[str, str]]:
        return [
            {**message, "content": observations[index].cut(cap)} if index in observations else message
            for index, message in enumerate(messages)
        ]

    def fits(cap: int) -> bool:
        # Only the length matters while searching; labels are computed once, for the chosen cap.
        text = _render(tokenizer, with_cap(cap), add_generation_prompt=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length

    if not fits(0):
        return None
    # Invariant: cap `low` fits, cap `high` does not (at the longest observation's length nothing is cut).
    low, high = 0, max(len(observation.token_starts) for observation in observations.values())
    while high - low > 1:
        cap = (low + high) // 2
        low, high = (cap, high) if fits(cap) else (low, cap)
    return tokenize_chat(tokenizer, with_cap(low))


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool
) -> str:
    return tokenizer.apply_chat_template(
        [dict(message) for message in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _check_messages(messages: Sequence[Mapping[str, str]]) -> None:
    if not messages:
        raise ValueError("a chat needs at least one message")
    if messages[0].get("role") == "assistant":
        raise ValueError("a chat must start with a system or user message, not an assistant turn")
    for index, message in enumerate(messages):
        if "role" not in message or "content" not in message:
            raise ValueError(f"message {index} needs 'role' and 'content', got keys {sorted(message)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {index} content must be a string, got {type(message['content']).__name__}")
