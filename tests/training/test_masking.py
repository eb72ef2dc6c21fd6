"""Only the agent's own words are learned: the mask is checked by decoding the labelled tokens of real trajectories."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import PreTrainedTokenizerBase

from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.training.masking import (
    IGNORE_INDEX,
    ChatTemplateError,
    DropReason,
    TruncationPolicy,
    tokenize_chat,
    tokenize_chats,
)

SAMPLE_TRAJECTORIES = DATA_DIR / "webdancer_samples" / "sample_traj.jsonl"


def _sample_chats() -> list[list[dict[str, str]]]:
    with open(SAMPLE_TRAJECTORIES, encoding="utf-8") as handle:
        return [json.loads(line)["messages"] for line in handle]


def _labelled_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token ids."""
    runs: list[list[int]] = []
    current: list[int] = []
    for token, label in zip(input_ids, labels, strict=True):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            assert label == token, "a learned position must predict its own input token"
            current.append(token)
    if current:
        runs.append(current)
    return runs


def _end_of_turn(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the chat template writes after an assistant message's content, up to the next turn."""
    sentinel = "SENTINEL-CONTENT"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}], tokenize=False
    )
    return rendered.split(sentinel, 1)[1].rstrip()


def _pick_samples() -> list[int]:
    """The first trajectory of each length: one, two and three tool calls."""
    picked: dict[int, int] = {}
    for index, chat in enumerate(_sample_chats()):
        picked.setdefault(len(chat), index)
    return sorted(picked.values())


@pytest.mark.parametrize("sample_index", _pick_samples())
def test_labelled_tokens_decode_to_exactly_the_assistant_turns(
    tokenizer: PreTrainedTokenizerBase, sample_index: int
) -> None:
    messages = _sample_chats()[sample_index]
    example = tokenize_chat(tokenizer, messages)

    decoded = [tokenizer.decode(run) for run in _labelled_runs(example.input_ids, example.labels)]

    end_of_turn = _end_of_turn(tokenizer)
    assert end_of_turn == tokenizer.eos_token, "the model must learn to emit the token generation stops at"
    expected = [message["content"] + end_of_turn for message in messages if message["role"] == "assistant"]
    assert decoded == expected
    assert not any("<tool_response>" in text or "</tool_response>" in text for text in decoded)
    observations = [m["content"] for m in messages[2:] if m["role"] == "user"]
    assert observations and all(o.startswith("<tool_response>") for o in observations)


def test_sample_trajectories_label_exactly_the_assistant_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    chats = _sample_chats()[::10]
    data = tokenize_chats(tokenizer, chats, max_length=1_000_000)

    assert len(data.examples) == len(chats) and not data.dropped
    for chat, example in zip(chats, data.examples, strict=True):
        assistant_tokens = sum(
            len(tokenizer(m["content"] + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
            for m in chat
            if m["role"] == "assistant"
        )
        assert example.labelled_tokens == assistant_tokens
    assert 0.5 < data.masked_share < 0.95


@pytest.mark.parametrize("policy", [TruncationPolicy.DROP, "drop"])
def test_overlong_chats_are_dropped_and_counted(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]], policy: str
) -> None:
    long_chat = [*short_chats[0][:-1], {"role": "assistant", "content": "word " * 400}]

    data = tokenize_chats(tokenizer, [short_chats[1], long_chat], max_length=256, policy=policy)

    assert len(data.examples) == 1
    assert data.dropped == {DropReason.TOO_LONG: 1}
    assert data.truncated == 0


def test_overlong_chats_are_truncated_from_the_end(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    full = tokenize_chat(tokenizer, short_chats[0])

    data = tokenize_chats(tokenizer, [short_chats[0]], max_length=100, policy="truncate")

    assert data.truncated == 1 and not data.dropped
    assert data.examples[0].input_ids == full.input_ids[:100]
    assert data.examples[0].labels == full.labels[:100]


def test_chat_cut_before_any_assistant_token_is_dropped(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    data = tokenize_chats(tokenizer, [short_chats[0], short_chats[0][:2]], max_length=256)

    assert len(data.examples) == 1
    assert data.dropped == {DropReason.NO_ASSISTANT_TOKENS: 1}


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([], "at least one message"),
        ([{"role": "assistant", "content": "hi"}], "must start with a system or user"),
        ([{"role": "user"}], "needs 'role' and 'content'"),
        ([{"role": "user", "content": ["part"]}], "must be a string"),
    ],
)
def test_malformed_chats_are_rejected(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, object]], error: str
) -> None:
    with pytest.raises(ValueError, match=error):
        tokenize_chat(tokenizer, messages)


def test_template_that_rewrites_history_is_refused(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    """A template that drops earlier thoughts (as some reasoning models' do) cannot be split by prefixes."""
    rewriting = copy.deepcopy(tokenizer)
    rewriting.chat_template = tokenizer.chat_template.replace(
        "message['content']",
        "(message['content'].split('</think>')[-1] if message['role'] == 'assistant' and not loop.last "
        "else message['content'])",
    )
    assert rewriting.chat_template != tokenizer.chat_template

    with pytest.raises(ChatTemplateError):
        tokenize_chat(rewriting, short_chats[0])
