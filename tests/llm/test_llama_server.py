"""llama.cpp's own server (`llama_server` mode), run for real: the prompt the model was trained on, every slot with
the context asked for, slots decoded together, and grammars."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import (
    LLAMA_SERVER_ENV,
    ModelServer,
    ModelServerConfig,
    ModelServerError,
    llama_server_binary,
    llama_server_command,
)
from webdancer_dagster.llm.tokenizer import load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are a web agent."},
    {"role": "user", "content": "Who directed Alien?"},
    {
        "role": "assistant",
        "content": '<think>\nSearch it.\n</think>\n<tool_call>\n{"name": "search", "arguments": {"query": ["Alien '
        'director"]}}\n</tool_call>',
    },
    {"role": "user", "content": "<tool_response>\nAlien (1979) is directed by Ridley Scott.\n</tool_response>"},
]


def test_the_command_gives_each_slot_its_context_and_keeps_replies_verbatim() -> None:
    config = ModelServerConfig(
        mode="llama_server", model_path="/m/x.gguf", served_model_name="x", n_ctx=4096, n_parallel=4, n_threads=2
    )
    command = llama_server_command(config, 8123)

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert (value("--ctx-size"), value("--parallel"), value("--threads"), value("--threads-batch")) == (
        "16384",
        "4",
        "2",
        "2",
    )
    assert "--no-kv-unified" in command  # 4 x 4096, not one pool a single run could fill
    assert (value("--alias"), value("--host"), value("--port"), value("--reasoning-format")) == (
        "x",
        "127.0.0.1",
        "8123",
        "none",
    )


def test_a_missing_binary_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(tmp_path / "llama-server"))
    config = ModelServerConfig(mode="llama_server", model_path=str(find_smollm2_gguf()))
    with pytest.raises(ModelServerError, match="is not installed; build it with `make llama-server`"):
        ModelServer(config).start()


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    if shutil.which(llama_server_binary()) is None:
        pytest.fail("llama-server is not built: run `make llama-server` (scripts/build_llama_server.sh)")
    config = ModelServerConfig(
        mode="llama_server", model_path=str(find_smollm2_gguf()), n_ctx=2048, n_parallel=2, n_threads=1
    )
    with ModelServer(config) as running:
        yield running


def _root(server: ModelServer) -> str:
    return server.base_url.removesuffix("/v1")


def test_it_renders_a_chat_as_the_models_tokenizer_does(server: ModelServer, tmp_path: Path) -> None:
    """What the agent's turns are trained on (the tokenizer's chat template) is what the server prompts with."""
    tokenizer = load_tokenizer(str(find_smollm2_gguf()), str(tmp_path / "tokenizers"))
    rendered = httpx.post(f"{_root(server)}/apply-template", json={"messages": CONVERSATION}).json()["prompt"]

    assert rendered == tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)


def test_each_slot_has_the_context_asked_for(server: ModelServer) -> None:
    slots = httpx.get(f"{_root(server)}/slots").json()
    assert [slot["n_ctx"] for slot in slots] == [2048, 2048]


def test_two_requests_are_decoded_together_each_under_its_grammar(server: ModelServer) -> None:
    endpoint = LLMEndpoint(
        EndpointConfig(
            role="policy",
            base_url=server.base_url,
            model=server.model,
            sampling=SamplingParams(temperature=0.0, max_tokens=48),
            max_concurrency=2,
            server_kind="llama_cpp",
        )
    )
    grammar = 'root ::= "The answer is " [a-z ]{10,40} "."'
    replies: list[str] = []
    busy_slots = 0
    threads = [
        threading.Thread(
            target=lambda q=q: replies.append(endpoint.chat([{"role": "user", "content": q}], grammar=grammar).content)
        )
        for q in ("Who directed Alien?", "What is the capital of France?")
    ]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        slots = httpx.get(f"{_root(server)}/slots").json()
        busy_slots = max(busy_slots, sum(slot["is_processing"] for slot in slots))
        time.sleep(0.01)
    endpoint.close()

    assert busy_slots == 2
    assert len(replies) == 2
    assert all(reply.startswith("The answer is ") and reply.endswith(".") for reply in replies), replies
