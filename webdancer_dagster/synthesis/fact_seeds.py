"""Simple fact questions read off a page's opening sentence by rules: E2HQA seeds that need no teacher.

E2HQA starts from simple fact QA. A weak teacher (SmolLM2-135M) rarely writes a usable seed, yet a policy being
trained needs questions the local web can answer. Encyclopaedia pages state a few facts in a fixed shape in their
first sentence ("Eduardo De Filippo( 24 May 1900 – 31 October 1984) was an Italian actor", "The Tender Years is a
1948 American drama film directed by Harold D. Schuster"), so a rule reads them exactly: the answer is copied from
the page, the question names the page's subject, and the evidence is the sentence it came from. A page without
such a sentence is a counted drop. The seed then goes through E2HQA's rewrites like a teacher's seed.
"""

from __future__ import annotations

import hashlib
import re

from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.crawlqa import ClusterPage
from webdancer_dagster.synthesis.qa import Drop

SEED_STAGE, STAGE = "e2hqa_seed", "e2hqa"  # E2HQA's names: these seeds' drops count with its seeds' drops
FACT_TEACHER = "rules:first-sentence-facts"

_DATE = r"(?:\d{1,2} [A-Z][a-z]+ \d{3,4}|[A-Z][a-z]+ \d{1,2}, \d{3,4})"
_LIFESPAN = re.compile(rf"\(\s*(?:born\s+)?(?P<born>{_DATE})?\s*(?:[–-]\s*(?P<died>{_DATE}))?\s*\)")
_NAME = r"[A-Z][\w'.-]*(?: (?:[A-Z][\w'.-]*|de|da|van|von|del|la|di)){0,4}"
_FILM = re.compile(
    rf"\b(?P<year>1[89]\d\d|20\d\d)\b[^.]{{0,80}}?\bfilm\b[^.]{{0,80}}?\bdirected by (?P<director>{_NAME})"
)
_PARENTHETICAL = re.compile(r"\s*\([^)]*\)\s*$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]])\.\s")


def subject(title: str) -> str:
    """The page's subject as a question names it: its title without a disambiguating "(2013 film)"."""
    return _PARENTHETICAL.sub("", title).strip()


def opening_sentence(page: ClusterPage) -> str:
    """The first sentence of the page's text after its title heading."""
    text = " ".join(page.text.split())
    if text.startswith(page.title):
        text = text[len(page.title) :].strip()
    match = _SENTENCE_END.search(text)
    return text[: match.start() + 1] if match else text


def fact_questions(page: ClusterPage) -> list[tuple[str, str]]:
    """Every (question, answer) the opening sentence states in a known shape."""
    sentence, name = opening_sentence(page), subject(page.title)
    if not name:
        return []
    facts: list[tuple[str, str]] = []
    head = sentence[:160]  # a lifespan follows the subject's name, never the end of a long sentence
    if (lifespan := _LIFESPAN.search(head)) is not None:
        if lifespan["born"]:
            facts.append((f"When was {name} born?", lifespan["born"]))
        if lifespan["died"]:
            facts.append((f"When did {name} die?", lifespan["died"]))
    if (film := _FILM.search(sentence)) is not None:
        director = film["director"].rstrip(".")
        if director not in name:
            facts.append((f"Who directed the {film['year']} film {name}?", director))
    return facts


def fact_seed(page: ClusterPage) -> QAPair | Drop:
    """One fact of the page's opening sentence (chosen by a hash of its URL, so reruns agree) as a difficulty-0
    E2HQA pair, or the drop `no_fact_sentence`."""
    facts = fact_questions(page)
    if not facts:
        detail = "the opening sentence states no fact in a known shape"
        return Drop(SEED_STAGE, "no_fact_sentence", page.url, detail, STAGE)
    pick = int(hashlib.sha256(page.url.encode()).hexdigest(), 16) % len(facts)
    question, answer = facts[pick]
    return QAPair(
        question=question,
        answer=answer,
        kind="e2hqa",
        source="e2hqa",
        source_urls=[page.url],
        difficulty=0,
        evidence=[opening_sentence(page)],
        teacher=FACT_TEACHER,
    )
