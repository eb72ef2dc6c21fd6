"""Is a predicted answer equivalent to the gold answer? Exact match after normalisation, else an LLM judge.

The funnel's correctness stage, rejection sampling and evaluation all ask this question, and each stores the
judge's raw reply so a surprising verdict can be read later. Exact match short-circuits: no model call is spent
on answers that already agree word for word after SQuAD normalisation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

from webdancer_dagster.llm.client import LLMEndpoint, LLMRequestRejected
from webdancer_dagster.synthesis.qa import normalize_answer, normalize_words
from webdancer_dagster.synthesis.replies import strip_reasoning

JUDGE_PROMPT = """Judge whether the predicted answer to the question is equivalent to the labeled answer.

Question: {question}
Labeled answer: {gold}
Predicted answer: {predicted}

The predicted answer is equivalent if it gives the same answer as the labeled answer, even in other words, with \
extra details, or in another format (e.g. "3" and "three"). It is not equivalent if it gives a different \
answer, several candidate answers, or no answer.

Reply with exactly one word: Correct or Incorrect."""

_VERDICT = re.compile(r"\b(incorrect|correct)\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """`correct` is None when the judge's reply held neither verdict word, or the request was rejected (`error`)."""

    correct: bool | None
    method: Literal["exact", "llm"]
    raw: str = ""
    error: str = ""


def exact_match(predicted: str, gold_answers: Sequence[str]) -> bool:
    """True when the prediction equals a gold answer after SQuAD normalisation, or after the variant that keeps
    punctuation as a word break (`eighteen-fifteen` = `eighteen fifteen`)."""
    for normalize in (normalize_answer, normalize_words):
        prediction = normalize(predicted)
        if prediction and any(prediction == normalize(gold) for gold in gold_answers):
            return True
    return False


def parse_verdict(reply: str) -> bool | None:
    """The first verdict word after any reasoning block; None when there is none."""
    match = _VERDICT.search(strip_reasoning(reply))
    if match is None:
        return None
    return match.group(1).lower() == "correct"


def judge_answer(question: str, predicted: str, gold_answers: Sequence[str], judge: LLMEndpoint) -> Judgement:
    """Exact match first; otherwise one judge call with the gold answers joined by ' / '."""
    if exact_match(predicted, gold_answers):
        return Judgement(True, "exact")
    prompt = JUDGE_PROMPT.format(question=question.strip(), gold=" / ".join(gold_answers), predicted=predicted.strip())
    try:
        result = judge.chat([{"role": "user", "content": prompt}])
    except LLMRequestRejected as error:  # this input cannot be judged (e.g. too long); other failures raise
        return Judgement(None, "llm", error=str(error)[:500])
    return Judgement(parse_verdict(result.content), "llm", result.content)
