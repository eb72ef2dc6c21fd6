"""The turn grammar: built from the tool schemas, read by llama.cpp, and everything it allows is a clean turn."""

from __future__ import annotations

import json
import random
import time

import pytest
from grammar_walk import GrammarEngine
from scripted_turns import TEST_DATE, Script, answer, page_url, tool_call, well_formed

from webdancer_dagster.agent.grammar import TOOL_ARGUMENT_HINTS, TurnLimits, turn_grammar
from webdancer_dagster.agent.loop import AgentConfig, ReactAgent
from webdancer_dagster.agent.parser import ParsedTurn, parse_turn
from webdancer_dagster.agent.prompts import FORCED_ANSWER_PROMPT, system_message, user_message
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, tool_map
from webdancer_dagster.agent.visit import VisitTool
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.web.search import MAX_QUERIES, LocalSearch, normalise_queries
from webdancer_dagster.web.visit import FetchPolicy, check_url

GRAMMAR = turn_grammar(WEBDANCER_TOOL_SCHEMAS)
SMALL = TurnLimits(max_thought_chars=60, max_answer_chars=30, max_string_chars=24)
CALCULATOR = {
    "type": "object",
    "properties": {
        "expression": {"type": "string"},
        "precision": {"type": "integer"},
        "exact": {"type": "boolean"},
        "unit": {"enum": ["m", "s"]},
        "note": {"type": "string"},
    },
    "required": ["expression", "precision", "exact", "unit"],
}


@pytest.fixture(scope="module")
def engine():
    engine = GrammarEngine(find_smollm2_gguf())
    yield engine
    engine.close()


def rules(grammar: str) -> dict[str, str]:
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


def check_clean(text: str) -> ParsedTurn:
    """A well-formed turn whose arguments the real tools accept too."""
    turn = parse_turn(text, WEBDANCER_TOOL_SCHEMAS)
    assert well_formed(turn) and turn.issues == (), (text, turn)
    assert turn.text == text and turn.thought
    if turn.tool_name == "search":
        assert 1 <= len(normalise_queries(turn.arguments["query"])) <= MAX_QUERIES
    elif turn.tool_name == "visit":
        assert turn.arguments["url"] and turn.arguments["goal"].strip()
        for url in turn.arguments["url"]:
            check_url(url, FetchPolicy())
    else:
        assert turn.kind == "answer" and turn.answer
    return turn


def test_the_grammar_holds_each_tool_and_its_arguments():
    table = rules(GRAMMAR)
    assert table["root"] == "think action"
    assert table["action"] == "tool-call | answer"
    assert table["tool-call"] == '"<tool_call>\\n" (call-search | call-visit) "\\n</tool_call>"'
    assert table["call-search"] == '"{\\"name\\": \\"search\\", \\"arguments\\": " search-arguments "}"'
    assert table["search-arguments"] == '"{" "\\"query\\": " search-arguments-query "}"'
    # 1..3 queries: the search tool's limit, which the prompt's schema does not state.
    item = "search-arguments-query-item"
    assert table["search-arguments-query"] == f'"[" {item} (", " {item}){{0,{MAX_QUERIES - 1}}} "]"'
    assert table["visit-arguments"] == (
        '"{" "\\"url\\": " visit-arguments-url ", \\"goal\\": " visit-arguments-goal "}"'
    )
    assert table["visit-arguments-url-item"].startswith('"\\"" "http" "s"? "://" [A-Za-z0-9] ')
    assert "{0,199}" in table["visit-arguments-goal"]  # strings are bounded
    assert table["thought"] == "[^< \\t\\n\\r] ([^<]){0,799}"  # no '<': a thought cannot open a tag
    assert table["answer"] == '"<answer>\\n" answer-text "\\n</answer>"'


def test_a_new_tool_changes_the_grammar_and_no_tool_means_answer_only():
    grammar = turn_grammar({**WEBDANCER_TOOL_SCHEMAS, "calc_v2": CALCULATOR})
    table = rules(grammar)
    assert "call-calc-v2" in table["tool-call"]
    assert table["calc-v2-arguments"] == (
        '"{" "\\"expression\\": " calc-v2-arguments-expression ", \\"precision\\": " calc-v2-arguments-precision '
        '", \\"exact\\": " calc-v2-arguments-exact ", \\"unit\\": " calc-v2-arguments-unit "}"'
    )  # required arguments in schema order; the optional `note` is never written
    assert table["calc-v2-arguments-unit"] == '"\\"m\\"" | "\\"s\\""'
    answer_only = rules(turn_grammar({}))
    assert answer_only["action"] == "answer" and "tool-call" not in answer_only


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "object", "properties": {"x": {"anyOf": []}}, "required": ["x"]}, "needs a `type`"),
        ({"type": "object", "properties": {"x": {"type": "null"}}, "required": ["x"]}, "no grammar for JSON type"),
        ({"type": "object", "properties": {}, "required": ["x"]}, "required properties without a schema"),
        ({"type": "array", "items": {"type": "string"}}, "must be a JSON object schema"),
    ],
)
def test_schemas_it_cannot_express_are_refused(schema, message):
    with pytest.raises(ValueError, match=message):
        turn_grammar({"tool": schema})


def test_hints_only_touch_the_tools_they_name():
    assert set(TOOL_ARGUMENT_HINTS) == {"search", "visit"}
    grammar = turn_grammar({"search": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}})
    assert "search-arguments-q" in rules(grammar)


@pytest.mark.parametrize(
    "text",
    [
        tool_call("search", {"query": ["Ada Lovelace birth"]}, thought="Let me search."),
        tool_call("search", {"query": ["a", "b c", "d"]}),
        tool_call("visit", {"url": [page_url("Ada_Lovelace"), "https://x.test/?a=1&b=%20"], "goal": "her birth"}),
        tool_call("search", {"query": ['the "Difference Engine"', "back\\slash"]}),
        '<think>\nÜnïcode 東京\n</think>\n<tool_call>\n{"name": "search", "arguments": {"query": ["東京"]}}'
        "\n</tool_call>",
        answer("10 December 1815", thought="Found it.\n\nTwo paragraphs, with > signs and {braces}."),
    ],
)
def test_llama_cpp_accepts_webdancer_turns(engine, text):
    assert engine.accepts(GRAMMAR, text)
    check_clean(text)


@pytest.mark.parametrize(
    "text",
    [
        answer("1815", thought="I think <b>this</b> is it"),  # '<' inside the thought
        answer(""),
        answer("1815", thought=" "),
        tool_call("search", {"query": ["a", "b", "c", "d"]}),  # a 4th query
        tool_call("search", {"query": []}),
        tool_call("search", {"query": [" leading space"]}),
        tool_call("search", {"query": "not a list"}),
        tool_call("visit", {"url": ["ftp://x.test/"], "goal": "g"}),
        tool_call("visit", {"url": ["http://,]x/"], "goal": "g"}),  # no host name
        tool_call("visit", {"goal": "g", "url": ["http://x.test/"]}),  # arguments out of schema order
        tool_call("visit", {"url": ["http://x.test/"]}),  # the goal is required
        tool_call("fetch", {"url": ["http://x.test/"]}),
        tool_call("search", {"query": ["a"]}) + "\n" + answer("b"),  # one action per turn
        "<think>\nx\n</think>\n<answer>\n" + "y" * 301 + "\n</answer>",  # past the answer bound
    ],
)
def test_llama_cpp_rejects_what_is_not_a_clean_turn(engine, text):
    assert not engine.accepts(GRAMMAR, text)


def test_the_length_bounds_hold(engine):
    grammar = turn_grammar(WEBDANCER_TOOL_SCHEMAS, TurnLimits(max_thought_chars=10, max_string_chars=5))
    assert engine.accepts(grammar, answer("x", thought="0123456789"))
    assert not engine.accepts(grammar, answer("x", thought="0123456789a"))
    assert engine.accepts(grammar, tool_call("search", {"query": ["abcde"]}, thought="t"))
    assert not engine.accepts(grammar, tool_call("search", {"query": ["abcdef"]}, thought="t"))
    assert "\\u" not in grammar  # no \u escapes: a lone surrogate could not be written to the warehouse


def test_vllms_grammar_backend_reads_it_the_same_way(tokenizer):
    """xgrammar (vLLM's structured outputs; installed with the `gpu` extra) parses the GBNF and agrees on turns."""
    xgr = pytest.importorskip("xgrammar")
    compiled = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer)).compile_grammar(
        xgr.Grammar.from_ebnf(GRAMMAR)
    )

    def accepts(text: str) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return bool(matcher.accept_string(text) and matcher.accept_token(tokenizer.eos_token_id))

    assert accepts(tool_call("visit", {"url": [page_url("Ada_Lovelace")], "goal": "her birth"}))
    assert accepts(answer("1815", thought="Two\n\nlines > x"))
    assert not accepts(answer("1815", thought="a <b>"))
    assert not accepts(tool_call("search", {"query": ["a", "b", "c", "d"]}))


def test_every_text_the_grammar_allows_is_a_clean_turn(engine):
    """Random walks through llama.cpp's grammar sampler: texts a model under the grammar could write."""
    rng = random.Random(13)
    started = time.perf_counter()
    texts = [engine.walk(turn_grammar(WEBDANCER_TOOL_SCHEMAS, SMALL), rng, close_bias=bias) for bias in [0.1, 0.5] * 20]
    texts += [engine.walk(GRAMMAR, rng, close_bias=0.05) for _ in range(3)]  # the default bounds, at length
    texts += [engine.walk(turn_grammar({}, SMALL), rng) for _ in range(5)]
    kinds = {check_clean(text).tool_name or "answer" for text in texts}
    assert kinds == {"search", "visit", "answer"}
    assert max(len(parse_turn(t, WEBDANCER_TOOL_SCHEMAS).thought) for t in texts[-8:-5]) <= 800
    assert time.perf_counter() - started < 120


def constrained_agent(make_agent, base_url: str, **config):
    return make_agent(base_url, endpoint={"server_kind": "llama_cpp"}, constrained=True, **config)


def test_a_constrained_agent_sends_the_grammar_with_every_turn(scripted, make_agent):
    script = Script([tool_call("search", {"query": ["Ada Lovelace birth"]}), answer("10 December 1815")])
    server = scripted(script)
    trajectory = constrained_agent(make_agent, server.base_url).run("When was Ada Lovelace born?")
    assert trajectory.termination == "answer" and trajectory.constrained
    assert [request["grammar"] for request in script.policy_requests] == [GRAMMAR, GRAMMAR]
    assert all("grammar" not in request for request in script.summarizer_requests)  # the summarizer is free
    assert json.loads(trajectory.model_dump_json())["constrained"] is True


def test_the_forced_answer_is_sampled_under_the_answer_only_grammar(scripted, make_agent):
    question = "When was Ada Lovelace born?"
    script = Script([tool_call("search", {"query": ["Ada Lovelace"]}), answer("1815")])
    server = scripted(script)
    prompt = [
        {"role": "system", "content": system_message(TEST_DATE)},
        {"role": "user", "content": user_message(question)},
    ]
    prompt_tokens = make_agent("http://127.0.0.1:9/v1").count_tokens(prompt)
    trajectory = constrained_agent(make_agent, server.base_url, max_context_tokens=prompt_tokens + 60).run(question)
    assert trajectory.termination == "context_limit_forced_answer"
    forced = script.policy_requests[-1]
    assert forced["messages"][-1]["content"] == FORCED_ANSWER_PROMPT
    assert forced["grammar"] == turn_grammar({})


def test_unconstrained_is_the_default_and_sends_no_grammar(scripted, make_agent):
    script = Script([answer("1815")])
    server = scripted(script)
    trajectory = make_agent(server.base_url, endpoint={"server_kind": "llama_cpp"}).run("When?")
    assert not trajectory.constrained and "grammar" not in script.policy_requests[0]
    assert AgentConfig().constrained is False


def test_a_constrained_agent_needs_an_endpoint_that_takes_a_grammar(make_agent):
    with pytest.raises(ValueError, match="cannot sample under a grammar"):
        make_agent("http://127.0.0.1:9/v1", constrained=True)
    with pytest.raises(ValueError, match="short CoT"):
        AgentConfig(constrained=True, cot_mode="long")


@pytest.mark.slow
def test_smollm2_writes_clean_turns_under_the_grammar(tiny_web, tokenizer, tmp_path):
    """Three constrained first turns from the real offline model on llama.cpp, through the agent."""
    limits = TurnLimits(max_thought_chars=160, max_answer_chars=80, max_string_chars=60)
    config = ModelServerConfig(model_path=str(find_smollm2_gguf()), n_ctx=2048, log_path=str(tmp_path / "llama.log"))
    started = time.perf_counter()
    with ModelServer(config) as server:
        sampling = SamplingParams(temperature=0.8, max_tokens=200, seed=0)
        teacher = LLMEndpoint(
            EndpointConfig(
                role="teacher_short", base_url=server.base_url, model=server.model, sampling=sampling,
                timeout_s=300, server_kind="llama_cpp",
            )
        )  # fmt: skip
        tools = tool_map(SearchTool(LocalSearch(tiny_web.index_dir)), VisitTool(teacher, tiny_web.policy()))
        agent = ReactAgent(
            teacher,
            tools,
            tokenizer,
            AgentConfig(max_llm_calls=1, current_date=TEST_DATE, constrained=True, turn_limits=limits),
        )
        trajectories = [agent.run("When was Ada Lovelace born?", sample_index=index) for index in range(3)]
    elapsed = time.perf_counter() - started
    for trajectory in trajectories:
        turn = trajectory.messages[2].content
        print(f"--- constrained turn ({trajectory.steps[0].completion_tokens} tokens):\n{turn}")
        check_clean(turn)
        assert trajectory.constrained and trajectory.steps[0].finish_reason == "stop"
        assert trajectory.termination in ("answer", "max_llm_calls")
    print(f"3 constrained turns in {elapsed:.0f}s")
