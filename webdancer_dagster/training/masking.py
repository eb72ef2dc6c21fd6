"""Chat -> `input_ids` + `labels` where only the assistant turns are learned.

WebDancer trains on the agent's own words (thought, tool call, answer) and never on the system prompt, the
question or the `<tool_response>` observations, which come back as user turns. The mask is computed from the
model's own chat template by rendering the conversation prefix by prefix: the text an assistant turn adds
after the generation prompt is exactly what the model must produce at inference time. Templates with
`{% generation %}` blocks could use `return_assistant_tokens_mask`, but SmolLM2's has none, and prefix
rendering works for every template whose renderings of a prefix are prefixes of the whole.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that PyTorch's cross-entropy (and every Hugging Face model) skips."""


class TruncationPolicy(StrEnum):
    """What to do with a chat longer than `max_length` tokens."""

    DROP = "drop"
    TRUNCATE = "truncate"


class DropReason(StrEnum):
    """Why a chat was left out of the training set (the keys of `TokenizedDataset.dropped`)."""

    TOO_LONG = "too_long"
    NO_ASSISTANT_TOKENS = "no_assistant_tokens"


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


@dataclass
class TokenizedDataset:
    """Examples that survived, plus the counted reasons why the others did not."""

    examples: list[TokenizedChat] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    truncated: int = 0

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
    policy: TruncationPolicy = TruncationPolicy.DROP,
) -> TokenizedDataset:
    """Tokenize many chats; over-long ones are dropped or cut to `max_length` (cut from the end)."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    # A plain "drop" string equals the enum member but is not identical to it; normalise before comparing.
    policy = TruncationPolicy(policy)
    result = TokenizedDataset()
    for chat in chats:
        example = tokenize_chat(tokenizer, chat)
        if len(example.input_ids) > max_length:
            if policy == TruncationPolicy.DROP:
                result.dropped[DropReason.TOO_LONG] += 1
                continue
            example = TokenizedChat(example.input_ids[:max_length], example.labels[:max_length])
            result.truncated += 1
        if example.labelled_tokens == 0:
            result.dropped[DropReason.NO_ASSISTANT_TOKENS] += 1
            continue
        result.examples.append(example)
    if result.dropped:
        logger.info("dropped %s chats while tokenizing: %s", sum(result.dropped.values()), dict(result.dropped))
    return result


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
