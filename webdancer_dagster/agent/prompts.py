"""WebDancer's prompt texts, verbatim from the released sample trajectories (data/webdancer_samples).

Every string the model reads lives here, so that SFT data, RL rollouts and evaluation all speak exactly the
format WebDancer was trained on. tests/agent/test_prompts.py proves the first two equal the sample text byte
for byte.
"""

from __future__ import annotations

import datetime as dt

from webdancer_dagster.agent.tools import SEARCH_DESCRIPTION, search_description
from webdancer_dagster.web.search import TOP_K

# Message 0 of every sample trajectory, without its trailing "\nCurrent date: YYYY-MM-DD" line.
SYSTEM_PROMPT = """You are a Web Information Seeking Master. Your task is to thoroughly seek the internet for information and provide accurate answers to questions. No matter how complex the query, you will not give up until you find the corresponding information.

As you proceed, adhere to the following principles:

1. **Persistent Actions for Answers**: You will engage in many interactions, delving deeply into the topic to explore all possible aspects until a satisfactory answer is found.

2. **Repeated Verification**: Before presenting a Final Answer, you will **cross-check** and **validate the information** you've gathered to confirm its accuracy and reliability.

3. **Attention to Detail**: You will carefully analyze each information source to ensure that all data is current, relevant, and from credible origins."""  # noqa: E501

# Message 1 of every sample trajectory up to and including "User: "; the question follows directly.
USER_PROMPT = """A conversation between User and Assistant. The user asks a question, and the assistant solves it by calling one or more of the following tools.
<tools>
{
  "name": "search",
  "description": "Performs batched web searches: supply an array 'query'; the tool retrieves the top 10 results for each query in one call.",
  "parameters": {
    "type": "object",
    "properties": {
      "query": {
        "type": "array",
        "items": {
          "type": "string"
        },
        "description": "Array of query strings. Include multiple complementary search queries in a single call."
      }
    },
    "required": [
      "query"
    ]
    }
},
{
  "name": "visit",
    "description": "Visit webpage(s) and return the summary of the content.",
    "parameters": {
        "type": "object",
        "properties": {
            "url": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The URL(s) of the webpage(s) to visit. Can be a single URL or an array of URLs."
            },
            "goal": {
                "type": "string",
                "description": "The specific information goal for visiting webpage(s)."
            }
        },
        "required": [
            "url",
            "goal"
        ]
    }
}
</tools>

The assistant starts with one or more cycles of (thinking about which tool to use -> performing tool call -> waiting for tool response), and ends with (thinking about the answer -> answer of the question). The thinking processes, tool calls, tool responses, and answer are enclosed within their tags. There could be multiple thinking processes, tool calls, tool call parameters and tool response parameters.

Example response:
<think> thinking process here </think>
<tool_call>
{"name": "tool name here", "arguments": {"parameter name here": parameter value here, "another parameter name here": another parameter value here, ...}}
</tool_call>
<tool_response>
tool_response here
</tool_response>
<think> thinking process here </think>
<tool_call>
{"name": "another tool name here", "arguments": {...}}
</tool_call>
<tool_response>
tool_response here
</tool_response>
(more thinking processes, tool calls and tool responses here)
<think> thinking process here </think>
<answer> answer here </answer>

User: """  # noqa: E501

# WebSailor/WebDancer inference code (Alibaba-NLP/WebAgent react_agent.py) replaces the last observation
# with this text once the context passes its token limit.
FORCED_ANSWER_PROMPT = (
    "You have now reached the maximum context length you can handle. You should stop making tool calls and, "
    "based on all the information above, think again and provide what you consider the most likely answer "
    "in the following format:<think>your final thinking</think>\n<answer>your answer</answer>"
)

# Observation texts for malformed turns; the first two are worded as in WebDancer's inference code.
INVALID_TOOL_CALL_TEXT = (
    'Error: Tool call is not a valid JSON. Tool call must contain a valid "name" and "arguments" field.'
)
UNKNOWN_TOOL_TEXT = "Error: Tool {name} not found"
INVALID_ARGUMENTS_TEXT = (
    "Error: Invalid arguments for tool {name}: {detail}. The parameters must follow this schema: {schema}"
)
MISSING_ACTION_TEXT = (
    "Error: Your response must end with either a tool call in <tool_call></tool_call> tags or a final answer "
    "in <answer></answer> tags."
)

# The `visit` tool asks the summarizer for WebDancer's JSON fields {rational, evidence, summary}.
EXTRACTOR_PROMPT = """Read the webpage content below and extract what serves the user goal.

## Webpage content
{webpage_content}

## User goal
{goal}

## Instructions
1. Find the passages of the page that bear directly on the goal.
2. Copy the relevant passages verbatim as evidence; leave out nothing important.
3. Write a short summary of what the evidence says about the goal, and how far it answers it.

Reply with one JSON object and nothing else:
{{"rational": "why these passages matter for the goal", "evidence": "the relevant passages", "summary": "the summary"}}
"""
VISIT_OBSERVATION = (
    "The useful information in {url} for user goal {goal} as follows: \n\n"
    "Evidence in page: \n{evidence}\n\nSummary: \n{summary}\n\n"
)
VISIT_FAILED_EVIDENCE = "No evidence could be extracted from this page ({reason})."
VISIT_FAILED_SUMMARY = "The page gave no usable information for this goal; try another URL or a search."
VISIT_PAGE_SEPARATOR = "\n=======\n"


def system_message(current_date: dt.date | str) -> str:
    """The system prompt with WebDancer's date line; the date comes from config so reruns are reproducible."""
    date_text = current_date.isoformat() if isinstance(current_date, dt.date) else current_date
    return f"{SYSTEM_PROMPT}\nCurrent date: {date_text}"


def user_message(question: str, results_per_query: int = TOP_K) -> str:
    """The ReAct user prompt followed by the question, exactly as in the sample trajectories; a search tool that
    returns another number of results a query than WebDancer's 10 is described with that number."""
    prompt = USER_PROMPT
    if results_per_query != TOP_K:
        prompt = prompt.replace(SEARCH_DESCRIPTION, search_description(results_per_query), 1)
    return prompt + question.strip()


def tool_response(observation: str) -> str:
    """Wrap a tool's output as the user turn the model reads, laid out as in every sample trajectory."""
    return f"<tool_response>\n{observation.strip()}\n\n</tool_response>"
