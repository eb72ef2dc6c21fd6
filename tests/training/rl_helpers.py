"""The RL tests' question, its date, the two-page web it is searched on, and the rollout the answering model learns."""

from __future__ import annotations

import datetime as dt
import json

from webdancer_dagster.agent.prompts import system_message, tool_response, user_message

RL_DATE = dt.date(2025, 7, 18)
RL_QUESTION = "Which city is the capital of France?"
RL_QUERY = "capital of France"
RL_DOCS = [
    ("http://geo.webdancer.test/france.html", "France", "Paris is the capital of France."),
    ("http://geo.webdancer.test/uk.html", "United Kingdom", "London is the capital of the United Kingdom."),
]


def rl_chat(observation: str, answer: str) -> list[dict[str, str]]:
    """The two-turn rollout the answering model learned: search, read, answer `answer`."""
    call = json.dumps({"name": "search", "arguments": {"query": [RL_QUERY]}})
    return [
        {"role": "system", "content": system_message(RL_DATE)},
        {"role": "user", "content": user_message(RL_QUESTION)},
        {"role": "assistant", "content": f"<think>\nI should search.\n</think>\n<tool_call>\n{call}\n</tool_call>"},
        {"role": "user", "content": tool_response(observation)},
        {"role": "assistant", "content": f"<think>\nThe page says it.\n</think>\n<answer>\n{answer}\n</answer>"},
    ]
