"""Short-CoT trajectories derived from long-CoT ones, for instruct models that should not learn pages of reasoning.

WebDancer trains instruct models on short-CoT trajectories and reasoning models on long-CoT ones. The only
trajectories released are long-CoT (assistant turns of ~560 tokens median): a 135M instruct model trained on them
learns to ramble until its turn budget cuts the tool call off. When no short-CoT teacher can write better data,
`derive_short_cot` keeps every action, observation and answer exactly and shortens each thought to its closing
sentences, which in these trajectories state what the agent does next and why ("I should search for ... to find
..."). The result is tagged: its model name ends in `DERIVED_SUFFIX` and its CoT mode is `short`, so a derived
trajectory is never mistaken for a teacher's, and the funnel judges it like any other.

With `short_answer`, the final answer is also cut to the answer it states: the released answers are paragraphs
(median 59 words) that name the answer in bold ("The surname is **Adkins**. ..."), and a model that learns to
write paragraphs gets no credit from a judge that refuses explanations which merely mention the gold answer. The
short answer is the judge's own reading of the paragraph (`shared.judge.stated_answer`), so the funnel's verdict on
the copy is the verdict on the original; such a copy also carries `SHORT_ANSWER_TAG` in its model name.
"""

from __future__ import annotations

import re

from webdancer_dagster.agent.parser import parse_turn
from webdancer_dagster.agent.tools import WEBDANCER_TOOL_SCHEMAS, ToolSchemas
from webdancer_dagster.agent.trajectory import ChatMessage, Trajectory
from webdancer_dagster.shared.judge import stated_answer

DERIVED_SUFFIX = "+short-cot-derived"
SHORT_ANSWER_TAG = "+short-answer"
DEFAULT_MAX_THOUGHT_WORDS = 60
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def shorten_thought(thought: str, max_words: int = DEFAULT_MAX_THOUGHT_WORDS) -> str:
    """The closing sentences of `thought` that fit in `max_words` words (at least the last sentence, cut to
    `max_words` from its end when it alone is longer): where a long thought states its decision."""
    sentences = [sentence.strip() for sentence in _SENTENCE_END.split(" ".join(thought.split())) if sentence.strip()]
    kept: list[str] = []
    words = 0
    for sentence in reversed(sentences):
        length = len(sentence.split())
        if kept and words + length > max_words:
            break
        kept.insert(0, sentence)
        words += length
    if words > max_words:
        return " ".join(" ".join(kept).split()[-max_words:])
    return " ".join(kept)


def _rewrite_turn(content: str, max_words: int, tool_schemas: ToolSchemas, short_answer: bool) -> str:
    """The turn with its thought shortened and its action text kept byte for byte (an answer cut to the answer it
    states, with `short_answer`)."""
    turn = parse_turn(content, tool_schemas)
    if turn.kind not in ("tool_call", "answer") or turn.issues:
        raise ValueError(f"only clean turns can be shortened; this one is {turn.kind} with issues {turn.issues}")
    thought = shorten_thought(turn.thought, max_words)
    if short_answer and turn.kind == "answer":
        return f"<think>\n{thought}\n</think>\n<answer>{stated_answer(turn.answer or '')}</answer>"
    action_at = min(at for at in (content.find("<tool_call>"), content.find("<answer>")) if at >= 0)
    return f"<think>\n{thought}\n</think>\n{content[action_at:].strip()}"


def derive_short_cot(
    trajectory: Trajectory,
    max_thought_words: int = DEFAULT_MAX_THOUGHT_WORDS,
    tool_schemas: ToolSchemas = WEBDANCER_TOOL_SCHEMAS,
    short_answer: bool = False,
) -> Trajectory:
    """A short-CoT copy of a format-valid long-CoT trajectory: same question, actions, observations and answer,
    each thought cut to its closing sentences (and, with `short_answer`, the answer cut to the answer it states);
    tagged by model name and CoT mode."""
    messages = [
        ChatMessage(
            role=message.role,
            content=_rewrite_turn(message.content, max_thought_words, tool_schemas, short_answer),
        )
        if message.role == "assistant" and position >= 2
        else message
        for position, message in enumerate(trajectory.messages)
    ]
    steps = [
        step.model_copy(
            update={
                "thought": shorten_thought(step.thought, max_thought_words),
                "answer": stated_answer(step.answer) if short_answer and step.answer else step.answer,
            }
        )
        for step in trajectory.steps
    ]
    answer = stated_answer(trajectory.answer) if short_answer and trajectory.answer else trajectory.answer
    tag = SHORT_ANSWER_TAG if short_answer else ""
    return trajectory.model_copy(
        update={
            "messages": messages,
            "steps": steps,
            "answer": answer,
            "cot_mode": "short",
            "model": trajectory.model + tag + DERIVED_SUFFIX,
        }
    )
