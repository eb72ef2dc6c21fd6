"""Is a predicted answer equivalent to the gold answer? Rules first; an LLM judge only where they cannot decide.

The funnel's correctness stage, the RL answer reward and evaluation all ask this question through
`judge_answer`, so the three agree on what counts as correct. A weak judge must not make numbers up (SmolLM2-135M
said "Correct" to "1973" for "James K. Polk"), so rules decide whatever they can, offline and reproducibly:

- `exact`: the prediction equals the gold answer or one of its aliases after normalisation (SQuAD's, with number
  words 0-20 read as digits, so "three" = "3", and dates day first, so "May 24, 1900" = "24 May 1900");
- `contains`: a gold answer occurs in the prediction as whole words ("He was James K. Polk." for "James K. Polk"),
  provided the prediction is not far longer than the gold answer;
- `hedged`: a short prediction names several candidates ("1844 or 1845", "Paris; Lyon", "Norman Walker and
  Marguerite Allan" for one director); never credited, whatever a judge might say, since a list that contains the
  answer is not the answer.

A verbose reply is judged by the answer it states in bold in its first paragraph, WebDancer's convention ("The
surname is **Adkins**.\n\nExplanation: ..."); a longer reply without one is left open.

What the rules leave open goes to the LLM judge only when one is given, i.e. declared capable by whoever
configures it; otherwise it is `unmatched` and counts as incorrect. A judge reply without a verdict word is asked
once more, sampled; an answer it still cannot judge counts as incorrect with a flag saying why. Every judgement
keeps its method and the judge's raw replies so a surprising one can be read later.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Literal

from webdancer_dagster.llm.client import LLMEndpoint, LLMRequestRejected
from webdancer_dagster.llm.reasoning import strip_reasoning
from webdancer_dagster.shared.answers import contains_phrase, normalize_answer, normalize_words

JUDGE_PROMPT = """Judge whether the predicted answer to the question is equivalent to the labeled answer.

Question: {question}
Labeled answer: {gold}
Predicted answer: {predicted}

The predicted answer is equivalent if it gives the same answer as the labeled answer, even in other words, with \
extra details, or in another format (e.g. "3" and "three"). It is not equivalent if it gives a different \
answer, several candidate answers, or no answer.

Reply with exactly one word: Correct or Incorrect."""

RuleMethod = Literal["exact", "contains", "hedged", "unmatched"]
# `llm`: the LLM judge decided; `none`: there was no answer to judge.
JudgeMethod = RuleMethod | Literal["llm", "none"]
# Why an answer the LLM judge was asked about counted as incorrect without a verdict: `unparsed`, no verdict word in
# either reply; `rejected`, the endpoint refused the request (input it cannot take, e.g. too long).
JudgeFlag = Literal["", "unparsed", "rejected"]
JUDGE_ATTEMPTS = 2
RETRY_SEPARATOR = "\n\n--- judge retry ---\n\n"
RETRY_TEMPERATURE = 0.6  # the least temperature of a retry: a greedy judge would repeat its unclear reply
# A prediction longer than this many words, and than this multiple of the gold answer's words, is an explanation
# that merely mentions the answer; containment does not credit it.
MAX_CONTAINS_EXTRA_WORDS = 8
MAX_CONTAINS_RATIO = 3

_VERDICT = re.compile(r"\b(incorrect|correct)\b", re.IGNORECASE)
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
        "seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
# Alternatives joined by "or", "either ... or", "and", "&", a semicolon, a slash or a line break name several
# candidates (unless a gold answer is itself joined so: "Simon and Garfunkel").
_ALTERNATIVES = re.compile(r"\S\s+(?:or|and|&)\s+\S|\beither\b|;|\s/\s|\w/\w|\n", re.IGNORECASE)
_YES_NO = frozenset({"yes", "no"})
_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_MONTH_FIRST_DATE = re.compile(rf"\b({_MONTHS}) (\d{{1,2}}),? (\d{{3,4}})\b", re.IGNORECASE)
_BOLD = re.compile(r"\*\*(.+?)\*\*", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Judgement:
    """Whether an answer is correct, which rule or `llm` decided (`none`: no answer), the judge's replies joined by
    `RETRY_SEPARATOR` (a rejected request's error in place of a reply), the `flag` saying why an answer the LLM
    judge could not judge counted as incorrect, and how many judge calls it took."""

    correct: bool
    method: JudgeMethod
    raw: str = ""
    flag: JudgeFlag = ""
    attempts: int = 0

    @property
    def last_reply(self) -> str:
        """The judge reply (or the rejection) that decided."""
        return self.raw.rsplit(RETRY_SEPARATOR, 1)[-1]


def _canonical(text: str) -> str:
    """Dates day first ("May 24, 1900" reads "24 May 1900") and number words as digits ("three" reads "3"), so
    either spelling of a gold answer matches the other."""
    text = _MONTH_FIRST_DATE.sub(r"\2 \1 \3", text)
    return _NUMBER_WORD.sub(lambda match: _NUMBER_WORDS[match.group(0).lower()], text)


def exact_match(predicted: str, gold_answers: Sequence[str]) -> bool:
    """True when the prediction equals a gold answer after normalisation (either variant, `_canonical` spellings)."""
    prediction = _canonical(predicted)
    golds = [_canonical(gold) for gold in gold_answers]
    for normalize in (normalize_answer, normalize_words):
        words = normalize(prediction)
        if words and any(words == normalize(gold) for gold in golds):
            return True
    return False


def names_several_candidates(predicted: str, gold_answers: Sequence[str]) -> bool:
    """True when the prediction offers alternatives ("1844 or 1845", "Walker and Allan") that no gold answer itself
    contains."""
    if not _ALTERNATIVES.search(predicted):
        return False
    return not any(_ALTERNATIVES.search(gold) for gold in gold_answers)


def contains_gold(predicted: str, gold_answers: Sequence[str]) -> bool:
    """True when a gold answer occurs in the prediction as whole words (`contains_phrase`). A yes/no gold answer must
    open the prediction and its opposite must not occur ("yes" is not in "no, but yes in 1999")."""
    prediction = _canonical(predicted)
    words = normalize_words(prediction).split()
    for gold in map(_canonical, gold_answers):
        phrase = normalize_words(gold)
        if phrase in _YES_NO:
            if words[:1] == [phrase] and not (_YES_NO - {phrase}) & set(words):
                return True
        elif contains_phrase(prediction, gold):
            return True
    return False


def stated_answer(predicted: str) -> str:
    """The answer a verbose reply states: the one bold span of its first paragraph ("The surname is **Adkins**.",
    WebDancer's convention), else the whole reply."""
    first_paragraph = predicted.strip().split("\n\n", 1)[0]
    spans = {" ".join(span.split()) for span in _BOLD.findall(first_paragraph)}
    return spans.pop() if len(spans) == 1 else predicted


def is_short_answer(predicted: str, gold_answers: Sequence[str]) -> bool:
    """At most `MAX_CONTAINS_EXTRA_WORDS` more words than, and `MAX_CONTAINS_RATIO` times, some gold answer: an
    answer, not an explanation that mentions one."""
    length = len(normalize_words(predicted).split())
    for gold in gold_answers:
        words = len(normalize_words(gold).split())
        if words and length <= max(words + MAX_CONTAINS_EXTRA_WORDS, MAX_CONTAINS_RATIO * words):
            return True
    return False


def judge_by_rules(predicted: str, gold_answers: Sequence[str]) -> RuleMethod:
    """`exact` or `contains` (credited), `hedged` (not credited, final) or `unmatched` (left open). A verbose reply
    is judged by the answer it states in bold, when it states one."""
    predicted = stated_answer(predicted)
    if exact_match(predicted, gold_answers):
        return "exact"
    if not is_short_answer(predicted, gold_answers):
        return "unmatched"
    if names_several_candidates(predicted, gold_answers):
        return "hedged"
    if contains_gold(predicted, gold_answers):
        return "contains"
    return "unmatched"


def rules_judge_otherwise(predicted: str, gold_answers: Sequence[str], stored_method: str) -> bool:
    """Whether the current rules judge `predicted` otherwise than a stored verdict's method says: they now decide it
    differently, or they decided it then and leave it open now. An `llm` or `unmatched` verdict agrees with rules
    that still leave the answer open."""
    method = judge_by_rules(predicted, gold_answers)
    if method != "unmatched":
        return method != stored_method
    return stored_method in ("exact", "contains", "hedged")


def parse_verdict(reply: str) -> bool | None:
    """The first verdict word after any reasoning block; None when there is none."""
    match = _VERDICT.search(strip_reasoning(reply))
    if match is None:
        return None
    return match.group(1).lower() == "correct"


def judge_answer(
    question: str, predicted: str | None, gold_answers: Sequence[str], judge: LLMEndpoint | None
) -> Judgement:
    """The rules' judgement; for what they leave open, the LLM `judge` (gold answers joined by ' / ') when a capable
    one is given, else `unmatched` and incorrect. No answer is incorrect without a judge call.

    A judge reply holding neither Correct nor Incorrect is asked once more at `RETRY_TEMPERATURE` or above, as
    another sample (so neither the response cache nor a greedy judge repeats it); still none: incorrect, flagged
    `unparsed`. A rejected request is not retried: incorrect, flagged `rejected`. Other endpoint failures raise.
    """
    if not predicted or not predicted.strip():
        return Judgement(False, "none")
    method = judge_by_rules(predicted, gold_answers)
    if method != "unmatched" or judge is None:
        return Judgement(method in ("exact", "contains"), method)
    prompt = JUDGE_PROMPT.format(question=question.strip(), gold=" / ".join(gold_answers), predicted=predicted.strip())
    sampling = judge.config.sampling
    retry_sampling = sampling.model_copy(update={"temperature": max(sampling.temperature, RETRY_TEMPERATURE)})
    replies: list[str] = []
    for attempt in range(1, JUDGE_ATTEMPTS + 1):
        try:
            result = judge.chat(
                [{"role": "user", "content": prompt}],
                sampling=sampling if attempt == 1 else retry_sampling,
                sample_index=attempt - 1,
            )
        except LLMRequestRejected as error:
            replies.append(str(error)[:500])
            return Judgement(False, "llm", RETRY_SEPARATOR.join(replies), "rejected", attempt)
        replies.append(result.content)
        verdict = parse_verdict(result.content)
        if verdict is not None:
            return Judgement(verdict, "llm", RETRY_SEPARATOR.join(replies), "", attempt)
    return Judgement(False, "llm", RETRY_SEPARATOR.join(replies), "unparsed", JUDGE_ATTEMPTS)
