"""The prompts must be WebDancer's, byte for byte: the model is trained and evaluated on exactly this text."""

import datetime as dt
import json

import pytest

from webdancer_dagster.agent.prompts import SYSTEM_PROMPT, USER_PROMPT, system_message, tool_response, user_message
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import (
    SEARCH_DESCRIPTION,
    SEARCH_PARAMETERS,
    VISIT_DESCRIPTION,
    VISIT_PARAMETERS,
    search_description,
)
from webdancer_dagster.paths import DATA_DIR

SAMPLES = DATA_DIR / "webdancer_samples" / "sample_traj.jsonl"
OPEN, CLOSE = "<tool_response>\n", "\n\n</tool_response>"


@pytest.fixture(scope="module")
def samples() -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_samples_are_shipped(samples):
    assert len(samples) == 200


def test_system_prompt_is_message_0_of_every_sample(samples):
    for messages in samples:
        content = messages[0]["content"]
        date = content.rsplit("\nCurrent date: ", 1)[1]
        assert messages[0]["role"] == "system"
        assert system_message(dt.date.fromisoformat(date)) == content
        assert content.startswith(SYSTEM_PROMPT + "\nCurrent date: ")


def test_user_prompt_is_message_1_of_every_sample_up_to_the_question(samples):
    for messages in samples:
        content = messages[1]["content"]
        assert messages[1]["role"] == "user"
        assert content.startswith(USER_PROMPT)
        question = content[len(USER_PROMPT) :]
        assert question and "<tools>" not in question
        assert user_message(question) == content


def test_tool_schemas_match_the_prompt():
    tools_json = USER_PROMPT.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    declared = {tool["name"]: tool for tool in json.loads(f"[{tools_json}]")}
    assert declared == {
        "search": {"name": "search", "description": SEARCH_DESCRIPTION, "parameters": SEARCH_PARAMETERS},
        "visit": {"name": "visit", "description": VISIT_DESCRIPTION, "parameters": VISIT_PARAMETERS},
    }


def test_observations_are_laid_out_as_in_the_samples(samples):
    observations = [m["content"] for messages in samples for m in messages[2:] if m["role"] == "user"]
    assert len(observations) > 100
    for content in observations:
        assert content.startswith(OPEN) and content.endswith(CLOSE)
        assert tool_response(content[len(OPEN) : -len(CLOSE)]) == content


def test_date_line_accepts_a_string():
    assert system_message("2025-07-18").endswith("\nCurrent date: 2025-07-18")


def test_a_search_tool_with_another_number_of_results_is_described_with_it():
    five = user_message("Who?", 5)
    assert user_message("Who?", 10) == user_message("Who?") == USER_PROMPT + "Who?"
    assert five != user_message("Who?")
    assert five.replace("the top 5 results", "the top 10 results") == user_message("Who?")
    tools_json = five.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    declared = {tool["name"]: tool for tool in json.loads(f"[{tools_json}]")}
    tool = SearchTool(backend=None, results_per_query=5)  # type: ignore[arg-type]
    assert declared["search"]["description"] == search_description(5) == tool.description
    assert "the top 5 results for each query" in tool.description
    with pytest.raises(ValueError, match="at least 1"):
        SearchTool(backend=None, results_per_query=0)  # type: ignore[arg-type]
