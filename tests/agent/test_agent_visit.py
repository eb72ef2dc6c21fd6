"""The `visit` tool: real pages from the site server, extraction by a scripted summarizer, WebDancer's layout."""

from __future__ import annotations

import pytest
from scripted_turns import EXTRACTOR_MARKER, endpoint_config, extraction, page_url

from webdancer_dagster.agent.visit import ExtractionError, VisitTool, parse_extraction, visit_observation
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.testing.scripted_llm import ScriptedReply
from webdancer_dagster.web.errors import ToolInputError


@pytest.mark.parametrize(
    ("reply", "evidence", "summary"),
    [
        ('{"rational": "r", "evidence": "e", "summary": "s"}', "e", "s"),
        ('```json\n{"rational": "r", "evidence": "e", "summary": "s"}\n```', "e", "s"),
        ('{"rational": "r", "evidence": "e", "summary": "cut off', "e", "cut off"),
        ('{"evidence": ["a", "b"], "summary": "s",}', '["a", "b"]', "s"),
        ('{"evidence": "e"} {"summary": "s"}', "e", ""),
        ('{"summary": "only a summary"}', "", "only a summary"),
    ],
)
def test_parse_extraction_is_lenient(reply, evidence, summary):
    found = parse_extraction(reply)
    assert (found.evidence, found.summary) == (evidence, summary)


@pytest.mark.parametrize(
    "reply", ["The page says 1815.", "", "null", "[1, 2]", '{"rational": "r"}', '{"evidence": ""}']
)
def test_parse_extraction_refuses_replies_without_content(reply):
    with pytest.raises(ExtractionError):
        parse_extraction(reply)


def test_visit_observation_layout_matches_the_samples():
    text = visit_observation("http://a/", "the goal", "E", "S")
    head = "The useful information in http://a/ for user goal the goal as follows: "
    assert text == head + "\n\nEvidence in page: \nE\n\nSummary: \nS"


def summarize_by_page(request):
    prompt = request["messages"][0]["content"]
    assert prompt.startswith(EXTRACTOR_MARKER)
    name = "Ada" if "Ada Lovelace was" in prompt else "Babbage"
    return extraction(f"{name} evidence", f"{name} summary")


def test_several_pages_in_order_joined_by_the_separator(scripted, tiny_web):
    server = scripted(summarize_by_page)
    tool = VisitTool(LLMEndpoint(endpoint_config(server.base_url, role="summarizer")), tiny_web.policy())
    output = tool.call({"url": [page_url("Ada_Lovelace"), page_url("Charles_Babbage")], "goal": "birth years"})
    ada, babbage = output.text.split("\n=======\n")
    assert ada.startswith(f"The useful information in {page_url('Ada_Lovelace')} for user goal birth years")
    assert ada.endswith("Evidence in page: \nAda evidence\n\nSummary: \nAda summary")
    assert babbage.endswith("Evidence in page: \nBabbage evidence\n\nSummary: \nBabbage summary")
    assert output.errors == ()
    assert len(server.requests) == 2


def test_long_pages_are_cut_before_the_summarizer(scripted, tiny_web):
    server = scripted(lambda request: extraction("e", "s"))
    tool = VisitTool(
        LLMEndpoint(endpoint_config(server.base_url, role="summarizer")), tiny_web.policy(), max_page_chars=20
    )
    tool.call({"url": [page_url("Ada_Lovelace")], "goal": "g"})
    prompt = server.requests[0]["messages"][0]["content"]
    page = prompt.split("## Webpage content\n", 1)[1].split("\n\n## User goal", 1)[0]
    assert len(page) == 20
    assert "1815" not in prompt


def test_a_summarizer_that_rejects_the_page_gives_the_fallback(scripted, tiny_web):
    server = scripted(lambda request: ScriptedReply(status=400))
    tool = VisitTool(LLMEndpoint(endpoint_config(server.base_url, role="summarizer")), tiny_web.policy())
    output = tool.call({"url": [page_url("Ada_Lovelace")], "goal": "g"})
    assert "No evidence could be extracted from this page (the summarizer refused this page)" in output.text
    assert len(output.errors) == 1 and "HTTP 400" in output.errors[0]


@pytest.mark.parametrize(
    ("arguments", "message"), [({"url": [], "goal": "g"}, "URL"), ({"url": ["u"], "goal": " "}, "goal")]
)
def test_bad_arguments_raise_tool_input_errors(tiny_web, arguments, message):
    tool = VisitTool(LLMEndpoint(endpoint_config("http://127.0.0.1:9/v1", role="summarizer")), tiny_web.policy())
    with pytest.raises(ToolInputError, match=message):
        tool.call(arguments)
