"""Only the agent's own words are learned: the mask is checked by decoding the labelled tokens of real trajectories,
and a chat fitted into `max_length` keeps every assistant turn whole, its final answer included."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import PreTrainedTokenizerBase

from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.training.masking import (
    CUT_MARKER,
    IGNORE_INDEX,
    ChatTemplateError,
    DropReason,
    LengthSummary,
    ShortenReason,
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


@pytest.mark.parametrize("policy", [TruncationPolicy.DROP, "drop", TruncationPolicy.SHORTEN_OBSERVATIONS])
def test_overlong_chats_are_dropped_and_counted(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]], policy: str
) -> None:
    """The long chat's final assistant turn alone exceeds max_length: no policy may cut it, so it is dropped."""
    long_chat = [*short_chats[0][:-1], {"role": "assistant", "content": "word " * 400}]

    data = tokenize_chats(tokenizer, [short_chats[1], long_chat], max_length=256, policy=policy)

    assert len(data.examples) == 1
    assert data.dropped == {DropReason.TOO_LONG: 1}
    assert not data.shortened
    assert data.examples[0] == tokenize_chat(tokenizer, short_chats[1])


def _assistant_texts(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[str]:
    return [message["content"] + tokenizer.eos_token for message in messages if message["role"] == "assistant"]


def _decoded_labels(tokenizer: PreTrainedTokenizerBase, input_ids: list[int], labels: list[int]) -> list[str]:
    return [tokenizer.decode(run) for run in _labelled_runs(input_ids, labels)]


def test_overlong_chat_is_fitted_by_shortening_its_observation_and_keeps_its_final_answer(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    chat = copy.deepcopy(short_chats[0])
    sentences = " ".join(f"Sentence {number} of the page about Hamlet." for number in range(60))
    chat[3]["content"] = f"<tool_response>\n{sentences}\n\n</tool_response>"
    assert len(tokenize_chat(tokenizer, chat).input_ids) > 400

    data = tokenize_chats(tokenizer, [chat], max_length=256)

    assert data.shortened == {ShortenReason.OBSERVATIONS_SHORTENED: 1} and not data.dropped
    [example] = data.examples
    assert 256 - 8 < len(example.input_ids) <= 256, "the observation keeps as much text as fits"
    decoded = _decoded_labels(tokenizer, example.input_ids, example.labels)
    assert decoded == _assistant_texts(tokenizer, chat)
    assert decoded[-1].startswith("<think>") and "<answer>\nShakespeare\n</answer>" in decoded[-1]
    text = tokenizer.decode(example.input_ids)
    observation = text[text.index("<tool_response>") : text.index("</tool_response>") + len("</tool_response>")]
    assert observation.startswith("<tool_response>\nSentence 0 of the page about Hamlet. Sentence 1")
    assert observation.endswith(f"\n{CUT_MARKER}\n\n</tool_response>")
    assert "Sentence 59" not in observation


def test_the_longest_observation_is_shortened_first(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    first, second = copy.deepcopy(short_chats[0]), short_chats[1]
    long_page = "<tool_response>\n" + "A long page about Hamlet. " * 60 + "\n\n</tool_response>"
    chat = [*first[:4], second[2], {"role": "user", "content": long_page}, first[4]]
    short_page = chat[3]["content"]

    data = tokenize_chats(tokenizer, [chat], max_length=300)

    [example] = data.examples
    text = tokenizer.decode(example.input_ids)
    assert short_page in text, "the short observation is left whole"
    assert text.count(CUT_MARKER) == 1 and len(example.input_ids) <= 300
    assert _decoded_labels(tokenizer, example.input_ids, example.labels) == _assistant_texts(tokenizer, chat)


def _with_empty_observations(chat: list[dict[str, str]]) -> list[dict[str, str]]:
    empty = f"<tool_response>\n{CUT_MARKER}\n\n</tool_response>"
    return [
        {**message, "content": empty} if message["content"].startswith("<tool_response>") else message
        for message in chat
    ]


@pytest.mark.parametrize("sample_index", range(0, 200, 40))
def test_fitted_sample_trajectory_keeps_every_assistant_turn_and_its_final_answer(
    tokenizer: PreTrainedTokenizerBase, sample_index: int
) -> None:
    chat = _sample_chats()[sample_index]
    max_length = 2048
    assert len(tokenize_chat(tokenizer, chat).input_ids) > max_length, "the sample must need fitting"
    assert "</answer>" in chat[-1]["content"]

    data = tokenize_chats(tokenizer, [chat], max_length=max_length)

    if data.dropped:
        assert data.dropped == {DropReason.TOO_LONG: 1} and not data.examples
        assert len(tokenize_chat(tokenizer, _with_empty_observations(chat)).input_ids) > max_length
        return
    assert data.shortened == {ShortenReason.OBSERVATIONS_SHORTENED: 1}
    [example] = data.examples
    assert len(example.input_ids) <= max_length
    decoded = _decoded_labels(tokenizer, example.input_ids, example.labels)
    assert decoded == _assistant_texts(tokenizer, chat)
    assert "</answer>" in decoded[-1]


def test_length_report_of_known_chats(
    tokenizer: PreTrainedTokenizerBase, short_chats: list[list[dict[str, str]]]
) -> None:
    too_long = [*short_chats[0][:-1], {"role": "assistant", "content": "word " * 400}]
    chats = [*short_chats, too_long]
    chat_lengths = [
        len(tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"])
        for chat in chats
    ]
    turn_lengths = [
        len(tokenizer(text, add_special_tokens=False)["input_ids"])
        for chat in short_chats
        for text in _assistant_texts(tokenizer, chat)
    ]

    data = tokenize_chats(tokenizer, chats, max_length=256)

    assert data.chat_lengths == chat_lengths
    assert data.chat_tokens == LengthSummary.of(chat_lengths)
    assert data.chat_tokens.max == chat_lengths[-1] > 400, "chats are measured before fitting, dropped ones too"
    assert [example.assistant_turn_tokens for example in data.examples] == [
        turn_lengths[index : index + 2] for index in range(0, 8, 2)
    ]
    assert data.assistant_turn_tokens == LengthSummary.of(turn_lengths), "only the turns trained on"
    assert data.assistant_turn_tokens.to_dict() == {
        "p50": sorted(turn_lengths)[3],
        "p95": max(turn_lengths),
        "max": max(turn_lengths),
    }


@pytest.mark.parametrize(
    ("lengths", "summary"),
    [
        ([7], (7, 7, 7)),
        ([3, 1, 2], (2, 3, 3)),
        ([4, 1, 3, 2], (2, 4, 4)),
        (list(range(1, 101)), (50, 95, 100)),
        (list(range(1, 21)), (10, 19, 20)),
    ],
)
def test_length_summary_uses_nearest_rank_percentiles(lengths: list[int], summary: tuple[int, int, int]) -> None:
    assert LengthSummary.of(lengths) == LengthSummary(*summary)


def test_length_summary_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no lengths"):
        LengthSummary.of([])


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
