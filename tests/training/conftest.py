"""A tiny random Llama that carries the real SmolLM2 tokenizer and chat template, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.training.base_model import BaseModel, create_tiny_llama


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
