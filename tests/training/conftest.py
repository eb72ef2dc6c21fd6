"""Tiny Llamas with the real SmolLM2 tokenizer and chat template (one random, one taught to answer), built once per
session, and the two-page web the RL tests search."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rl_helpers import RL_DOCS, RL_QUERY, rl_chat
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.testing.tiny_model import create_tiny_llama, fit_assistant_turns
from webdancer_dagster.training.base_model import BaseModel
from webdancer_dagster.web.search import LocalSearch, build_search_index, search_tool


def _webdancer_chat(question: str, query: str, observation: str, answer: str) -> list[dict[str, str]]:
    """A short chat in WebDancer's released shape: one search, its observation as a user turn, an answer."""
    call = json.dumps({"name": "search", "arguments": {"query": [query]}})
    return [
        {"role": "system", "content": "You are a Web Information Seeking Master."},
        {"role": "user", "content": f"A conversation between User and Assistant.\nUser: {question}"},
        {"role": "assistant", "content": f"<think>\nI should search.\n</think>\n<tool_call>\n{call}\n</tool_call>"},
        {"role": "user", "content": f"<tool_response>\n{observation}\n</tool_response>"},
        {"role": "assistant", "content": f"<think>\nThe result says it.\n</think>\n<answer>\n{answer}\n</answer>"},
    ]


_SHORT_CHATS = [
    _webdancer_chat("Who wrote Hamlet?", "Hamlet author", "Hamlet is a tragedy by William Shakespeare.", "Shakespeare"),
    _webdancer_chat("Capital of France?", "France capital", "Paris is the capital of France.", "Paris"),
    _webdancer_chat("Who painted the Mona Lisa?", "Mona Lisa painter", "Leonardo da Vinci painted it.", "Leonardo"),
    _webdancer_chat("Largest planet?", "largest planet", "Jupiter is the largest planet.", "Jupiter"),
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> BaseModel:
    return create_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model", find_smollm2_gguf())


@pytest.fixture(scope="session")
def tokenizer(tiny_model: BaseModel) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(tiny_model.path, local_files_only=True)


@pytest.fixture
def short_chats() -> list[list[dict[str, str]]]:
    """Four WebDancer-shaped chats of about 140 tokens each, short enough for seq-256 training."""
    return [list(chat) for chat in _SHORT_CHATS]


@pytest.fixture
def short_chats_file(tmp_path: Path, short_chats: list[list[dict[str, str]]]) -> Path:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": chat}) + "\n" for chat in short_chats))
    return path


@pytest.fixture(scope="session")
def rl_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-page BM25 index: the web the RL rollouts search."""
    docs = pd.DataFrame([{"url": url, "title": title, "text": text, "site": "geo"} for url, title, text in RL_DOCS])
    index_dir = tmp_path_factory.mktemp("rl-web") / "index"
    build_search_index(docs, index_dir)
    return index_dir


@pytest.fixture(scope="session")
def answering_model(tmp_path_factory: pytest.TempPathFactory, rl_index: Path) -> Path:
    """A tiny Llama taught to search once and then answer Paris or London with equal odds.

    Its groups of rollouts therefore disagree (the judge accepts only Paris), which is what a DAPO step needs to
    move the weights; a random model never answers, so every group would be dropped. Trained on the assistant
    positions only (the LM head on 70 positions, not 900), about 100 AdamW steps reach a loss near ln 2 / 70.
    """
    folder = tmp_path_factory.mktemp("answering") / "model"
    create_tiny_llama(folder, find_smollm2_gguf(), seed=1)
    observation = search_tool(LocalSearch(rl_index), [RL_QUERY])
    loss = fit_assistant_turns(folder, [rl_chat(observation, answer) for answer in ("Paris", "London")])
    assert loss < 0.1, f"the answering model did not learn its two rollouts (loss {loss:.3f})"
    return folder
