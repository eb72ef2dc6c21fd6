"""The real ReAct loop against a real chat-completions server replaying scripted turns, with real tools."""

from __future__ import annotations

import json
import time

import pytest
from held_requests import hold_until_together
from scripted_turns import HOST, TEST_DATE, Script, answer, endpoint_config, page_url, tool_call

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.agent.loop import run_agents
from webdancer_dagster.agent.prompts import (
    FORCED_ANSWER_PROMPT,
    INVALID_TOOL_CALL_TEXT,
    MISSING_ACTION_TEXT,
    system_message,
    user_message,
)
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.agent.validity import check_format
from webdancer_dagster.llm.client import LLMEndpoint, LLMEndpointError
from webdancer_dagster.llm.server import free_port
from webdancer_dagster.testing.scripted_llm import ScriptedReply
from webdancer_dagster.web.scope import WebScope
from webdancer_dagster.web.search import LocalSearch, search_tool

QUESTION = "When was Ada Lovelace born?"
GOAL = "Ada Lovelace's date of birth"
SEARCH = tool_call("search", {"query": ["Ada Lovelace birth"]})
VISIT = tool_call("visit", {"url": [page_url("Ada_Lovelace")], "goal": GOAL})
ANSWER = answer("10 December 1815")


def observation(trajectory: Trajectory, step: int) -> str:
    """The user turn that followed assistant turn `step`."""
    return trajectory.messages[3 + 2 * step].content


def test_search_visit_answer(scripted, make_agent):
    script = Script([SEARCH, VISIT, ANSWER])
    server = scripted(script)
    seen = []
    trajectory = make_agent(server.base_url).run(QUESTION, on_step=seen.append)

    assert trajectory.termination == "answer"
    assert trajectory.answer == "10 December 1815"
    assert check_format(trajectory).valid
    assert (trajectory.llm_calls, trajectory.tool_calls, trajectory.format_errors) == (3, 2, 0)
    assert [m.role for m in trajectory.messages] == ["system", "user"] + ["assistant", "user"] * 2 + ["assistant"]
    assert trajectory.messages[0].content == system_message(TEST_DATE)
    assert trajectory.messages[1].content == user_message(QUESTION)
    assert [m.content for m in trajectory.messages[2::2]] == [SEARCH, VISIT, ANSWER]

    search_obs = observation(trajectory, 0)
    assert search_obs.startswith("<tool_response>\nA Google search for 'Ada Lovelace birth' found ")
    assert f"]({page_url('Ada_Lovelace')})" in search_obs
    assert search_obs.endswith("\n\n</tool_response>")
    visit_obs = observation(trajectory, 1)
    assert visit_obs.startswith(
        f"<tool_response>\nThe useful information in {page_url('Ada_Lovelace')} for user goal {GOAL} as follows: "
    )
    assert "Evidence in page: \nBorn on 10 December 1815.\n\nSummary: \nAda was born in 1815." in visit_obs

    # The server saw the conversation so far, with the stop sequence that ends a turn at the observation.
    assert len(script.policy_requests) == 3
    for index, request in enumerate(script.policy_requests):
        assert "<tool_response>" in request["stop"]
        assert request["messages"] == [m.model_dump() for m in trajectory.messages[: 2 + 2 * index]]
    (extract,) = script.summarizer_requests
    assert "born on 10 December 1815 in London" in extract["messages"][0]["content"]
    assert GOAL in extract["messages"][0]["content"]
    assert extract["response_format"] == {"type": "json_object"}

    assert seen == trajectory.steps
    assert [s.action for s in trajectory.steps] == ["search", "visit", "answer"]
    assert trajectory.steps[0].arguments == {"query": ["Ada Lovelace birth"]}
    assert trajectory.steps[0].thought == "I need more information."
    assert trajectory.steps[1].observation in visit_obs
    contexts = [s.context_tokens for s in trajectory.steps]
    assert contexts == sorted(contexts) and contexts[0] > 500  # the tool prompt alone is several hundred tokens
    assert trajectory.prompt_tokens == sum(s.prompt_tokens for s in trajectory.steps) > 0
    assert trajectory.completion_tokens == sum(s.completion_tokens for s in trajectory.steps) > 0
    assert Trajectory.model_validate_json(trajectory.model_dump_json()) == trajectory


def test_an_invented_observation_is_cut_by_the_stop_sequence(scripted, make_agent):
    invented = SEARCH + "\n<tool_response>\nAda was born in 1900.\n</tool_response>\n" + answer("1900")
    server = scripted(Script([invented, ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.messages[2].content == SEARCH
    assert "1900" not in observation(trajectory, 0)
    assert trajectory.answer == "10 December 1815"


def test_broken_json_is_repaired_and_recorded(scripted, make_agent):
    call = '{"name": "search", "arguments": {"query": ["Charles Babbage"]}'  # one closing brace short
    broken = f"<think>\nsearch\n</think>\n<tool_call>\n{call}\n</tool_call>"
    server = scripted(Script([broken, ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.steps[0].action == "search"
    assert "repaired tool-call JSON" in trajectory.steps[0].format_issues
    assert page_url("Charles_Babbage") in observation(trajectory, 0)
    assert trajectory.termination == "answer"
    assert check_format(trajectory).reason == "format_error"


def test_unrepairable_json_comes_back_as_an_error_observation(scripted, make_agent):
    broken = "<think>\nsearch\n</think>\n<tool_call>\nsearch for Ada please\n</tool_call>"
    server = scripted(Script([broken, ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.steps[0].action == "invalid"
    assert observation(trajectory, 0) == f"<tool_response>\n{INVALID_TOOL_CALL_TEXT}\n\n</tool_response>"
    assert (trajectory.termination, trajectory.format_errors) == ("answer", 1)


def test_unknown_tool(scripted, make_agent):
    server = scripted(Script([tool_call("browse", {"url": "x"}), ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.steps[0].action == "invalid"
    assert "Error: Tool browse not found" in observation(trajectory, 0)
    assert trajectory.termination == "answer"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"q": ["Ada"]}, "Error: Invalid arguments for tool search: missing required argument(s) 'query'"),
        ({"query": [1, 2]}, "Error: Invalid arguments for tool search: argument 'query' must be of type array"),
        ({"query": ["a", "b", "c", "d"]}, "Error: search failed: search accepts at most 3 queries; got 4"),
        ({"query": ["  "]}, "Error: search failed: search query 1 is empty"),
    ],
)
def test_bad_search_arguments_come_back_as_text(scripted, make_agent, arguments, expected):
    server = scripted(Script([tool_call("search", arguments), ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert observation(trajectory, 0).startswith(f"<tool_response>\n{expected}")
    assert trajectory.termination == "answer"


def test_several_calls_in_one_turn_run_only_the_first(scripted, make_agent):
    two = SEARCH + "\n" + tool_call("search", {"query": ["Charles Babbage"]}, thought="and another")
    server = scripted(Script([two, ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.steps[0].arguments == {"query": ["Ada Lovelace birth"]}
    assert "2 tool calls in one turn; only the first was run" in trajectory.steps[0].format_issues
    assert "A Google search for 'Charles Babbage'" not in observation(trajectory, 0)
    assert trajectory.tool_calls == 1


def test_missing_tags_three_times_is_a_format_error(scripted, make_agent):
    server = scripted(Script(["Ada was born in 1815."] * 3))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.termination == "format_error"
    assert trajectory.answer is None
    assert (trajectory.llm_calls, trajectory.format_errors) == (3, 3)
    assert observation(trajectory, 0) == f"<tool_response>\n{MISSING_ACTION_TEXT}\n\n</tool_response>"
    assert trajectory.messages[-1].role == "assistant"


def test_a_format_error_then_a_good_turn_resets_the_count(scripted, make_agent):
    server = scripted(Script(["no tags", "no tags", SEARCH, "no tags", "no tags", ANSWER]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert (trajectory.termination, trajectory.format_errors) == ("answer", 4)


@pytest.mark.parametrize("reply", [answer(""), "<think>\nhmm\n</think>\n<answer>   </answer>", "", "   \n"])
def test_empty_answer_is_no_answer(scripted, make_agent, reply):
    server = scripted(Script([reply]))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert trajectory.termination == "no_answer"
    assert trajectory.answer is None
    assert trajectory.llm_calls == 1


def test_endless_tool_calls_stop_at_max_llm_calls(scripted, make_agent):
    server = scripted(lambda request: SEARCH)
    trajectory = make_agent(server.base_url, max_llm_calls=4).run(QUESTION)
    assert trajectory.termination == "max_llm_calls"
    assert trajectory.answer is None
    assert len(server.requests) == trajectory.llm_calls == 4
    assert trajectory.tool_calls == 3  # the fourth call has no turn left to read its observation
    assert trajectory.steps[-1].observation is None
    assert trajectory.messages[-1].role == "assistant"


@pytest.fixture
def prompt_tokens(make_agent) -> int:
    """Size of the system prompt plus the question: a context limit just above it is passed by any observation."""
    messages = [
        {"role": "system", "content": system_message(TEST_DATE)},
        {"role": "user", "content": user_message(QUESTION)},
    ]
    return make_agent("http://127.0.0.1:9/v1").count_tokens(messages)


def test_an_observation_past_the_context_limit_forces_an_answer(scripted, make_agent, prompt_tokens):
    script = Script([SEARCH, answer("1815", thought="forced")])
    server = scripted(script)
    trajectory = make_agent(server.base_url, max_context_tokens=prompt_tokens + 60).run(QUESTION)

    assert trajectory.termination == "context_limit_forced_answer"
    assert trajectory.answer == "1815"
    assert trajectory.forced_at_tokens > prompt_tokens + 60
    assert trajectory.steps[-1].forced
    assert script.policy_requests[-1]["messages"][-1] == {"role": "user", "content": FORCED_ANSWER_PROMPT}
    assert trajectory.messages[3].content == FORCED_ANSWER_PROMPT  # the oversized observation was replaced
    assert "A Google search" not in json.dumps(script.policy_requests[-1]["messages"])


@pytest.mark.parametrize(("reply", "termination"), [(SEARCH, "format_error"), (answer(""), "no_answer")])
def test_a_bad_reply_to_the_forced_answer_request(scripted, make_agent, prompt_tokens, reply, termination):
    server = scripted(Script([SEARCH, reply]))
    trajectory = make_agent(server.base_url, max_context_tokens=prompt_tokens + 60).run(QUESTION)
    assert trajectory.forced_at_tokens is not None
    assert trajectory.termination == termination
    assert trajectory.answer is None


def test_a_question_longer_than_the_context_is_refused(make_agent):
    with pytest.raises(ValueError, match="over max_context_tokens=100"):
        make_agent("http://127.0.0.1:9/v1", max_context_tokens=100).run(QUESTION)


def test_pages_that_fail_come_back_as_readable_text(scripted, make_agent):
    urls = [page_url("Missing"), "http://elsewhere.example/", f"http://{HOST}/wiki/Empty.html", "ftp://x/"]
    server = scripted(
        Script(
            [
                tool_call("visit", {"url": urls[:3], "goal": GOAL}),
                tool_call("visit", {"url": urls[3], "goal": GOAL}),
                ANSWER,
            ]
        )
    )
    trajectory = make_agent(server.base_url).run(QUESTION)
    first, second = observation(trajectory, 0), observation(trajectory, 1)
    assert first.count("Evidence in page: \nNo evidence could be extracted from this page") == 3
    assert first.count("\n=======\n") == 2
    assert "(the page has no readable text)" in first
    assert trajectory.steps[0].error and "host_not_allowed" in trajectory.steps[0].error
    assert "unsupported_scheme" in trajectory.steps[1].error and urls[3] in second
    assert "argument 'url' wrapped in a list" in trajectory.steps[1].format_issues
    assert trajectory.termination == "answer"


def test_a_summarizer_reply_that_is_no_json_gives_the_fallback(scripted, make_agent):
    server = scripted(Script([VISIT, ANSWER], summarize=lambda prompt: "Ada was born in 1815, I think."))
    trajectory = make_agent(server.base_url).run(QUESTION)
    assert "(the page summary could not be read)" in observation(trajectory, 0)
    assert trajectory.termination == "answer"


def test_a_summarizer_that_is_down_is_an_endpoint_error(scripted, make_agent):
    server = scripted(Script([VISIT, ANSWER]))
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMEndpointError, match=f"summarizer endpoint {dead} unreachable after 2 tries"):
        make_agent(server.base_url, summarizer_url=dead).run(QUESTION)


def test_long_cot_reasoning_becomes_the_thought(scripted, make_agent):
    script = Script(
        [
            ScriptedReply(content=SEARCH.split("</think>\n", 1)[1], reasoning_content="Search for her birth."),
            ScriptedReply(content="<think>own</think>\n<answer>1815</answer>", reasoning_content="It says 1815."),
        ]
    )
    server = scripted(script)
    trajectory = make_agent(server.base_url, cot_mode="long").run(QUESTION)
    assert trajectory.cot_mode == "long"
    assert [s.thought for s in trajectory.steps] == ["Search for her birth.", "It says 1815."]
    assert (
        trajectory.messages[2].content
        == "<think>\nSearch for her birth.\n</think>\n" + SEARCH.split("</think>\n", 1)[1]
    )
    assert trajectory.messages[4].content == "<think>\nIt says 1815.\n</think>\n<answer>1815</answer>"
    # The teacher sees its past actions and their observations, not its past reasoning.
    history = script.policy_requests[1]["messages"]
    assert history[2] == {"role": "assistant", "content": SEARCH.split("</think>\n", 1)[1]}
    assert history[3]["content"].startswith("<tool_response>\nA Google search")


def test_short_cot_keeps_thoughts_in_the_history(scripted, make_agent):
    script = Script([SEARCH, ANSWER])
    server = scripted(script)
    make_agent(server.base_url).run(QUESTION)
    assert script.policy_requests[1]["messages"][2] == {"role": "assistant", "content": SEARCH}


# --- the endpoint itself failing: a clear error naming it, quickly, never a hang ---------------------------


def test_endpoint_down_at_start(make_agent):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    agent = make_agent(dead, endpoint={"timeout_s": 60.0})
    started = time.perf_counter()
    with pytest.raises(LLMEndpointError, match=f"policy endpoint {dead} unreachable after 2 tries"):
        agent.run(QUESTION)
    assert (agent.llm.usage.retries, agent.llm.usage.requests) == (1, 0)
    assert time.perf_counter() - started < 30  # refused at once: a try waiting for its timeout would take 60 s


def test_endpoint_dying_mid_run(scripted, make_agent):
    server = scripted(Script([SEARCH, ScriptedReply(die=True)]))
    with pytest.raises(LLMEndpointError, match=f"policy endpoint {server.base_url} unreachable"):
        make_agent(server.base_url).run(QUESTION)
    assert len(server.requests) == 2


def test_server_errors_are_retried(scripted, make_agent):
    server = scripted(Script([ScriptedReply(status=500), ScriptedReply(status=503), ANSWER]))
    agent = make_agent(server.base_url, endpoint={"max_attempts": 3})
    trajectory = agent.run(QUESTION)
    assert trajectory.termination == "answer"
    assert agent.llm.usage.retries == 2
    assert agent.llm.usage.requests == 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (ScriptedReply(status=500), "failed with HTTP 500 after 2 tries"),
        (ScriptedReply(garbage=True), "returned malformed responses on all 2 tries"),
        (ScriptedReply(raw_json='{"choices": "none"}'), "returned malformed responses on all 2 tries"),
        (ScriptedReply(raw_json="{not json"), "returned malformed responses on all 2 tries"),
        (ScriptedReply(drop=True), "unreachable after 2 tries"),
    ],
)
def test_endpoint_failing_every_try(scripted, make_agent, reply, message):
    server = scripted(lambda request: reply)
    with pytest.raises(LLMEndpointError, match=f"policy endpoint {server.base_url} {message}"):
        make_agent(server.base_url).run(QUESTION)
    assert len(server.requests) == 2


def test_endpoint_timing_out(scripted, make_agent):
    server = scripted(lambda request: ScriptedReply(content=ANSWER, delay_s=30))
    started = time.perf_counter()
    with pytest.raises(LLMEndpointError, match=r"timed out \(0.3s\) on all 2 tries"):
        make_agent(server.base_url, endpoint={"timeout_s": 0.3}).run(QUESTION)
    assert len(server.requests) == 2
    assert time.perf_counter() - started < 20  # it gave up at its timeout: waiting for a reply takes 30 s a try


def test_a_rejected_request_is_not_retried(scripted, make_agent):
    server = scripted(Script([]))  # an exhausted script answers HTTP 400
    with pytest.raises(LLMEndpointError, match="rejected the request \\(HTTP 400\\)"):
        make_agent(server.base_url).run(QUESTION)
    assert len(server.requests) == 1


# --- cache and concurrency ----------------------------------------------------------------------------------


def test_a_rerun_is_served_from_the_cache_without_any_request(scripted, make_agent, tmp_path):
    cache = {"cache_path": tmp_path / "llm_cache.sqlite"}
    server = scripted(Script([SEARCH, VISIT, ANSWER]))
    first = make_agent(server.base_url, endpoint=cache).run(QUESTION)
    requests_after_first = len(server.requests)
    server.stop()

    agent = make_agent(server.base_url, endpoint=cache)
    second = agent.run(QUESTION)
    assert requests_after_first == 4  # three policy turns and one extraction
    assert second.messages == first.messages
    assert second.termination == "answer"
    assert second.cached_calls == second.llm_calls == 3
    assert all(step.cached for step in second.steps)
    usage = agent.llm.usage.as_metadata()
    assert (usage["requests"], usage["cache_hits"]) == (0, 3)
    assert usage["cached_completion_tokens"] == first.completion_tokens > 0


def test_sample_index_draws_distinct_samples(scripted, make_agent, tmp_path):
    server = scripted(Script([answer("one"), answer("two")]))
    agent = make_agent(server.base_url, endpoint={"cache_path": tmp_path / "cache.sqlite"})
    assert [agent.run(QUESTION, sample_index=i).answer for i in (0, 1)] == ["one", "two"]
    assert agent.run(QUESTION, sample_index=1).answer == "two"
    assert len(server.requests) == 2


def test_concurrent_agents_stay_within_the_endpoint_limit(scripted, make_agent):
    def respond(request):
        question = request["messages"][1]["content"].rsplit("User: ", 1)[1]
        return ScriptedReply(content=answer(question.upper()))

    server = scripted(respond)
    most_at_once = hold_until_together(server, 2)
    agent = make_agent(server.base_url, endpoint={"max_concurrency": 2, "timeout_s": 60.0})
    questions = [f"question {i}" for i in range(6)]
    trajectories = run_agents(agent, questions, max_workers=6)
    assert [t.answer for t in trajectories] == [q.upper() for q in questions]
    assert most_at_once() == 2  # two agents' requests at once (they waited for each other), never a third
    assert len(server.requests) == 6 and agent.llm.usage.retries == 0


def test_run_agents_samples_each_question_k_times(scripted, make_agent):
    server = scripted(lambda request: answer("x"))
    agent = make_agent(server.base_url)
    seen = []
    trajectories = run_agents(agent, ["a", "b"], samples_per_question=2, on_step=lambda job, step: seen.append(job))
    assert [(t.question, t.sample_index) for t in trajectories] == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert sorted(seen) == [0, 1, 2, 3]


def test_run_agents_raises_the_endpoint_error(make_agent):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(LLMEndpointError, match=dead):
        run_agents(make_agent(dead), ["a", "b", "c"])


def test_the_agent_prompts_and_searches_with_the_results_a_query_it_was_built_with(scripted, tiny_web, tokenizer):
    # "Analytical Engine" is on all three pages of the tiny web: WebDancer's 10 results a query would list three.
    assert search_tool(LocalSearch(tiny_web.index_dir), ["Analytical Engine"]).count("](http") == 3
    script = Script([tool_call("search", {"query": ["Analytical Engine"]}), ANSWER])
    server = scripted(script)
    policy = LLMEndpoint(endpoint_config(server.base_url))
    agent = build_web_agent(
        policy, policy, LocalSearch(tiny_web.index_dir), WebScope(tiny_web.policy(), frozenset()), tokenizer,
        n_ctx=8192, max_llm_calls=3, current_date=TEST_DATE, search_results_per_query=2,
    )  # fmt: skip

    trajectory = agent.run(QUESTION)

    assert trajectory.termination == "answer" and check_format(trajectory).valid
    sent = script.policy_requests[0]["messages"][1]["content"]
    assert sent == trajectory.messages[1].content == user_message(QUESTION, 2)
    assert "the tool retrieves the top 2 results for each query" in sent
    search_obs = observation(trajectory, 0)
    assert "found 2 results" in search_obs and search_obs.count("](http") == 2
