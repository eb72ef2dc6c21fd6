"""The LLM resources inside Dagster: one server per step shared by every role, per-role overrides, usage metadata."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import dagster as dg
import pytest

from webdancer_dagster.llm.client import LLM_CACHE_FILE, LLMEndpoint
from webdancer_dagster.llm.server import ModelServerError
from webdancer_dagster.resources.llm import ROLES, LLMEndpointResource, LocalModelServer, llm_resources
from webdancer_dagster.resources.warehouse import Warehouse

QUESTION = [{"role": "user", "content": "Capital of France?"}]


@dg.asset
def two_roles(policy: LLMEndpointResource, summarizer: LLMEndpointResource) -> dg.MaterializeResult:
    endpoint = policy.endpoint()
    assert policy.endpoint() is endpoint  # one client per step: one concurrency limit, one set of counters
    answers = [endpoint.chat(QUESTION).content, endpoint.chat(QUESTION).content]
    summary = summarizer.endpoint().chat(QUESTION).content
    return dg.MaterializeResult(
        metadata={
            "answers": answers,
            "summary": summary,
            "policy_url": endpoint.config.base_url,
            "summarizer_url": summarizer.endpoint().config.base_url,
            "model": endpoint.config.model,
            "cache": str(endpoint.config.cache_path),
            **{f"policy_{key}": value for key, value in policy.usage_metadata().items()},
        }
    )


@dg.asset
def judge_only(judge: LLMEndpointResource) -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"verdict": judge.endpoint().chat(QUESTION).content})


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = result.get_asset_materialization_events()
    return {key: value.value for key, value in event.materialization.metadata.items()}


def test_roles_share_the_external_server_and_count_usage(scripted, isolated_home):
    server = scripted(lambda request: "Paris" if request["temperature"] > 0 else "{}")
    resources = llm_resources(
        Warehouse(), mode="external", base_url=server.base_url, served_model_name="scripted-model"
    )
    assert set(resources) == {"llm_server", *ROLES}
    result = dg.materialize([two_roles], resources=resources)
    values = metadata(result)
    assert values["answers"] == ["Paris", "Paris"]
    assert values["summary"] == "{}"  # the summarizer samples at temperature 0, the policy does not
    assert values["policy_url"] == values["summarizer_url"] == server.base_url
    assert values["model"] == "scripted-model"
    assert values["cache"] == str(isolated_home / LLM_CACHE_FILE)
    assert (values["policy_requests"], values["policy_cache_hits"]) == (1, 1)
    assert values["policy_completion_tokens"] == 1
    assert len(server.requests) == 2


def test_a_role_with_its_own_url_never_starts_the_local_server(scripted, tmp_path):
    bogus = tmp_path / "missing.gguf"  # starting the local server would fail loudly
    server = scripted(["Correct"])
    resources = llm_resources(Warehouse(), model_path=str(bogus))
    judge = {"role": "judge", "base_url": server.base_url, "model": "scripted-model"}
    run_config = {"resources": {"judge": {"config": judge}}}
    result = dg.materialize([judge_only], resources=resources, run_config=run_config)
    assert metadata(result)["verdict"] == "Correct"


def test_a_role_without_url_starts_the_local_server_lazily_and_reports_its_failure(tmp_path):
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"not a model")
    resources = llm_resources(Warehouse(), model_path=str(bogus), startup_timeout_s=60)
    with pytest.raises(ModelServerError, match="exited with code 1 before it was ready"):
        dg.materialize([judge_only], resources=resources)


def test_the_resource_works_outside_dagster(scripted):
    server = scripted(["ok"])
    role = LLMEndpointResource(
        role="judge",
        server=LocalModelServer(mode="external", base_url="http://unused/v1"),
        warehouse=Warehouse(),
        base_url=server.base_url,
        model="scripted-model",
        use_cache=False,
        temperature=0.0,
        max_tokens=8,
        stop=["</answer>"],
    )
    endpoint = role.endpoint()
    assert isinstance(endpoint, LLMEndpoint) and endpoint.cache is None
    assert endpoint.chat(QUESTION).content == "ok"
    assert server.requests[0]["max_tokens"] == 8 and server.requests[0]["stop"] == ["</answer>"]


def test_requests_in_flight_follow_what_the_server_can_answer_at_once(scripted):
    assert LocalModelServer(mode="llama_cpp").requests_served_at_once() == 1
    assert LocalModelServer(mode="vllm", n_parallel=16).requests_served_at_once() == 16
    server = scripted(["ok"])
    external = LocalModelServer(mode="external", base_url=server.base_url, served_model_name="m")
    role = LLMEndpointResource(role="judge", server=external, warehouse=Warehouse(), max_concurrency=4)

    assert role.endpoint_config().max_concurrency == 4


def test_each_endpoint_knows_what_serves_it(scripted, monkeypatch):
    """The kind decides how a grammar is sent: the local server's mode, or what a role with its own URL says."""
    server = scripted([])
    external = LocalModelServer(mode="external", base_url=server.base_url, served_model_name="m")

    def kind(local: LocalModelServer, **settings) -> str:
        role = LLMEndpointResource(role="teacher_short", server=local, warehouse=Warehouse(), **settings)
        return role.endpoint_config().server_kind

    own_url = {"base_url": server.base_url, "model": "m"}
    assert kind(external) == kind(external, **own_url) == "other"
    assert kind(external, server_kind="vllm") == "vllm"
    assert kind(external, server_kind="llama_cpp", **own_url) == "llama_cpp"
    running = SimpleNamespace(
        base_url="http://x/v1", model="m", config=SimpleNamespace(served_by=lambda: "llama_cpp gguf sha256:0")
    )
    monkeypatch.setattr(LocalModelServer, "ensure_running", lambda self: running)
    assert kind(LocalModelServer(mode="llama_cpp", model_path="m.gguf")) == "llama_cpp"
    assert kind(LocalModelServer(mode="vllm", model_path="org/m")) == "vllm"
    assert kind(LocalModelServer(mode="vllm", model_path="org/m"), **own_url) == "other"
    with pytest.raises(ValueError, match="server_kind"):
        kind(external, server_kind="llamacpp")


def test_a_role_on_the_local_server_is_cached_under_its_model_and_one_with_a_url_under_the_url(scripted, monkeypatch):
    server = scripted([])
    running = SimpleNamespace(
        base_url="http://127.0.0.1:1234/v1", model="m", config=SimpleNamespace(served_by=lambda: "llama_cpp gguf x")
    )
    monkeypatch.setattr(LocalModelServer, "ensure_running", lambda self: running)
    local = LocalModelServer(mode="llama_cpp", model_path="m.gguf")

    def identity(**settings) -> str:
        role = LLMEndpointResource(role="policy", server=local, warehouse=Warehouse(), **settings)
        return role.endpoint_config().cache_identity()

    assert identity() == "llama_cpp gguf x"
    assert identity(base_url=server.base_url, model="m") == server.base_url


def test_an_unknown_server_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        LocalModelServer(mode="llamacpp").server_config()


@dg.asset
def shared_local_server(policy: LLMEndpointResource, summarizer: LLMEndpointResource) -> dg.MaterializeResult:
    replies = [role.endpoint().chat(QUESTION).content for role in (policy, summarizer)]
    urls = {role.endpoint().config.base_url for role in (policy, summarizer)}
    concurrency = {role.endpoint().config.max_concurrency for role in (policy, summarizer)}
    return dg.MaterializeResult(metadata={"urls": sorted(urls), "replies": replies, "concurrency": sorted(concurrency)})


@pytest.mark.slow
def test_the_roles_share_one_real_llama_cpp_server_that_stops_with_the_step():
    resources = llm_resources(Warehouse(), n_ctx=512)
    for role in ("policy", "summarizer"):
        resources[role] = resources[role].model_copy(update={"max_tokens": 8, "use_cache": False})
    result = dg.materialize([shared_local_server], resources=resources)
    values = metadata(result)
    (url,) = values["urls"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert values["concurrency"] == [1], "llama.cpp answers one request at a time: more would wait out their timeout"
    assert all(isinstance(reply, str) for reply in values["replies"])
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    with pytest.raises(OSError):  # the step's teardown stopped the server
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
