"""The endpoint client against a real chat-completions server: requests, cache, usage, retries, concurrency."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from held_requests import hold_until_together

from webdancer_dagster.llm.client import (
    EndpointConfig,
    LLMEndpoint,
    LLMEndpointError,
    LLMRequestRejected,
    ResponseCache,
    SamplingParams,
)
from webdancer_dagster.llm.server import ModelServerConfig, free_port
from webdancer_dagster.shared.hashing import file_sha256
from webdancer_dagster.testing.scripted_llm import ScriptedReply

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of France?"}]


def config(base_url: str, **overrides) -> EndpointConfig:
    values = {
        "role": "judge",
        "base_url": base_url,
        "model": "scripted-model",
        "timeout_s": 2.0,
        "max_attempts": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.02,
    }
    return EndpointConfig(**{**values, **overrides})


def test_a_completion_and_the_request_it_sent(scripted):
    server = scripted(["Paris is the capital of France."])
    sampling = SamplingParams(temperature=0.2, top_p=0.9, max_tokens=50, stop=("</answer>",), seed=7)
    endpoint = LLMEndpoint(config(server.base_url + "/", sampling=sampling))
    result = endpoint.chat(MESSAGES, sample_index=2)
    assert result.content == "Paris is the capital of France."
    assert (result.prompt_tokens, result.completion_tokens, result.cached) == (5, 6, False)
    assert result.finish_reason == "stop"
    (request,) = server.requests
    assert request == {
        "model": "scripted-model",
        "messages": MESSAGES,
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["</answer>"],
        "seed": 9,
    }
    assert endpoint.usage.as_metadata()["completion_tokens"] == 6


def test_reasoning_content_is_kept(scripted):
    server = scripted([ScriptedReply(content="<answer>Paris</answer>", reasoning_content="France -> Paris")])
    result = LLMEndpoint(config(server.base_url)).chat(MESSAGES)
    assert (result.content, result.reasoning_content) == ("<answer>Paris</answer>", "France -> Paris")


def test_the_cache_answers_identical_requests_and_survives_a_restart(scripted, tmp_path):
    server = scripted(["Paris", "Lyon"])
    cache_path = tmp_path / "llm_cache.sqlite"
    first = LLMEndpoint(config(server.base_url, cache_path=cache_path))
    assert first.chat(MESSAGES).content == "Paris"
    assert first.chat(MESSAGES).content == "Paris"
    assert first.chat(MESSAGES, sample_index=1).content == "Lyon"
    assert len(server.requests) == 2
    first.close()
    server.stop()

    resumed = LLMEndpoint(config(server.base_url, cache_path=cache_path))
    again = resumed.chat(MESSAGES)
    assert (again.content, again.cached, again.completion_tokens) == ("Paris", True, 1)
    usage = resumed.usage.as_metadata()
    assert (usage["requests"], usage["cache_hits"], usage["cached_completion_tokens"]) == (0, 1, 1)
    assert len(ResponseCache(cache_path)) == 2


def test_two_endpoints_with_the_same_model_id_never_share_answers(scripted, tmp_path):
    """The issue's case: a declared model whose server only fails must fail, not replay another server's answers."""
    answering = scripted(["Paris"])
    failing = scripted(lambda request: ScriptedReply(status=500))
    cache = ResponseCache(tmp_path / "cache.sqlite")
    assert LLMEndpoint(config(answering.base_url), cache=cache).chat(MESSAGES).content == "Paris"

    with pytest.raises(LLMEndpointError, match="HTTP 500 after 3 tries"):
        LLMEndpoint(config(failing.base_url), cache=cache).chat(MESSAGES)
    assert len(failing.requests) == 3


def test_a_server_of_ours_is_cached_under_its_model_whatever_its_port(scripted, tmp_path):
    first_run, second_run = scripted(["a"]), scripted(["b", "c", "d"])
    cache = ResponseCache(tmp_path / "cache.sqlite")
    smollm = "llama_cpp gguf sha256:" + "1" * 64
    assert LLMEndpoint(config(first_run.base_url, served_by=smollm), cache=cache).chat(MESSAGES).content == "a"

    replayed = LLMEndpoint(config(second_run.base_url, served_by=smollm), cache=cache).chat(MESSAGES)
    other_model = "llama_cpp gguf sha256:" + "2" * 64
    fresh = [
        LLMEndpoint(config(second_run.base_url, served_by=other_model), cache=cache).chat(MESSAGES),
        LLMEndpoint(config(second_run.base_url, served_by=smollm, model="other"), cache=cache).chat(MESSAGES),
        LLMEndpoint(
            config(second_run.base_url, served_by=smollm, sampling=SamplingParams(temperature=0)), cache=cache
        ).chat(MESSAGES),
    ]
    assert (replayed.content, replayed.cached) == ("a", True)
    assert [result.content for result in fresh] == ["b", "c", "d"]
    assert len(second_run.requests) == 3


def test_a_model_server_is_named_by_its_file_not_its_port(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF weights")
    on_one_port = ModelServerConfig(model_path=str(gguf), port=8001)
    on_another = ModelServerConfig(model_path=str(gguf), port=8002)
    first = on_one_port.served_by()
    assert first == on_another.served_by() == f"llama_cpp gguf sha256:{file_sha256(gguf)}"
    gguf.write_bytes(b"GGUF other weights")
    assert ModelServerConfig(model_path=str(gguf)).served_by() != first
    external = ModelServerConfig(mode="external", base_url="http://gpu-box:8000/v1", served_model_name="m")
    assert external.served_by() is None


def test_the_api_key_comes_from_the_environment_only(scripted, monkeypatch):
    server = scripted(["ok"])
    with pytest.raises(LLMEndpointError, match=r"needs an API key in \$WEBDANCER_TEST_KEY"):
        LLMEndpoint(config(server.base_url, api_key_env="WEBDANCER_TEST_KEY"))
    monkeypatch.setenv("WEBDANCER_TEST_KEY", "sk-secret-value")
    endpoint = LLMEndpoint(config(server.base_url, api_key_env="WEBDANCER_TEST_KEY"))
    assert endpoint.chat(MESSAGES).content == "ok"
    assert "sk-secret-value" not in repr(endpoint) + endpoint.config.model_dump_json()


def test_retries_on_429_and_5xx_then_succeeds(scripted):
    server = scripted([ScriptedReply(status=429), ScriptedReply(status=502), "fine"])
    endpoint = LLMEndpoint(config(server.base_url))
    assert endpoint.chat(MESSAGES).content == "fine"
    assert endpoint.usage.as_metadata()["retries"] == 2


def test_recovers_from_one_dropped_connection_and_one_garbage_body(scripted):
    server = scripted([ScriptedReply(drop=True), ScriptedReply(garbage=True), "fine"])
    assert LLMEndpoint(config(server.base_url)).chat(MESSAGES).content == "fine"
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(scripted, status):
    server = scripted(lambda request: ScriptedReply(status=status))
    with pytest.raises(LLMRequestRejected, match=f"judge endpoint {server.base_url} rejected the request") as error:
        LLMEndpoint(config(server.base_url)).chat(MESSAGES)
    assert error.value.status_code == status
    assert len(server.requests) == 1


def test_an_endpoint_that_is_down_fails_fast_with_its_name():
    """A refused connection is a failed try at once: no try waits out its (here one minute) timeout."""
    url = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = LLMEndpoint(config(url, timeout_s=60.0))
    started = time.perf_counter()
    with pytest.raises(LLMEndpointError, match=f"judge endpoint {url} unreachable after 3 tries"):
        endpoint.chat(MESSAGES)
    assert endpoint.usage.retries == 2
    assert time.perf_counter() - started < 30  # one try waiting for its timeout would take 60 s


def test_a_server_that_accepts_and_never_answers_fails_at_the_deadline():
    """Ten tries of one second each would take ten; the request's deadline stops it at 2.5 s, after at most three."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts connections nobody answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        endpoint = LLMEndpoint(config(url, timeout_s=1.0, max_attempts=10, deadline_s=2.5))
        stopped = rf"judge endpoint {url} gave no answer within its 2.5s deadline"
        started = time.perf_counter()
        with pytest.raises(LLMEndpointError, match=stopped) as raised:
            endpoint.chat(MESSAGES)
        elapsed = time.perf_counter() - started
    tries = endpoint.usage.retries + 1
    assert tries <= 3  # tries of 1 s start at 0, 1 and 2 s at the latest; without the deadline there would be ten
    assert f"deadline ({'try' if tries == 1 else f'{tries} tries'})" in str(raised.value)
    assert 2.4 < elapsed < 60  # no answer before the deadline; a try that outlived every timeout would hang


def test_a_completion_with_empty_content_is_an_empty_string(scripted):
    body = '{"choices": [{"index": 0, "message": {"role": "assistant", "content": null}, "finish_reason": "stop"}]}'
    server = scripted([ScriptedReply(raw_json=body)])
    result = LLMEndpoint(config(server.base_url)).chat(MESSAGES)
    assert (result.content, result.prompt_tokens, result.completion_tokens) == ("", 0, 0)


def test_concurrency_is_bounded_by_max_concurrency(scripted):
    server = scripted(lambda request: ScriptedReply(content="x"))
    most_at_once = hold_until_together(server, 3)
    endpoint = LLMEndpoint(config(server.base_url, max_concurrency=3, timeout_s=60.0))
    threads = [threading.Thread(target=endpoint.chat, args=(MESSAGES,), kwargs={"sample_index": i}) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.requests) == 9 and endpoint.usage.requests == 9 and endpoint.usage.retries == 0
    assert most_at_once() == 3  # three at once (they waited for each other), never a fourth


GRAMMAR = 'root ::= "<answer>" [^<]{1,20} "</answer>"'


def test_a_grammar_goes_to_llama_cpp_as_grammar_and_to_vllm_as_structured_outputs(scripted):
    server = scripted(["<answer>Paris</answer>"] * 2)
    for kind in ("llama_cpp", "vllm"):
        endpoint = LLMEndpoint(config(server.base_url, server_kind=kind))
        assert endpoint.supports_grammar
        assert endpoint.chat(MESSAGES, grammar=GRAMMAR).content == "<answer>Paris</answer>"
    llama_cpp, vllm = server.requests
    plain = {"model", "messages", "temperature", "top_p", "max_tokens"}
    assert llama_cpp == {**{key: llama_cpp[key] for key in plain}, "grammar": GRAMMAR}
    assert vllm == {**{key: vllm[key] for key in plain}, "structured_outputs": {"grammar": GRAMMAR}}


def test_an_endpoint_of_unknown_kind_refuses_a_grammar_without_sending_anything(scripted):
    server = scripted(["ok"])
    endpoint = LLMEndpoint(config(server.base_url))
    assert endpoint.config.server_kind == "other" and not endpoint.supports_grammar
    with pytest.raises(ValueError, match="judge endpoint .* cannot take a grammar: its server kind is 'other'"):
        endpoint.chat(MESSAGES, grammar=GRAMMAR)
    assert server.requests == []
    assert endpoint.chat(MESSAGES).content == "ok"  # without a grammar it is an ordinary endpoint


def test_the_cache_key_includes_the_grammar(scripted, tmp_path):
    server = scripted(["free", "first grammar", "second grammar"])
    endpoint = LLMEndpoint(config(server.base_url, server_kind="llama_cpp"), cache=ResponseCache(tmp_path / "c.sqlite"))
    other = GRAMMAR.replace("20", "30")
    replies = [endpoint.chat(MESSAGES, grammar=grammar).content for grammar in (None, GRAMMAR, other, GRAMMAR, None)]
    assert replies == ["free", "first grammar", "second grammar", "first grammar", "free"]
    assert len(server.requests) == 3
    assert endpoint.usage.as_metadata()["cache_hits"] == 2
