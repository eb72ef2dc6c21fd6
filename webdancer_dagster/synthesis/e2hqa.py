"""E2HQA: easy fact questions made hard by replacing entities with descriptions found through search.

WebDancer starts from a simple question with a short entity answer and, n times, picks an entity in the current
question, searches for it, and rewrites the question so the entity is described instead of named; the answer
stays the same, so each rewrite adds one search the agent must do. Here the seed comes from a page of a
non-benchmark site, search runs through any `SearchBackend` (hits on benchmark hosts are discarded before the
teacher sees them), and every step of the chain is stored on the pair. A rewrite that puts the answer into the
question, changes nothing, keeps the entity's name, or drops the entity instead of describing it ends the pair
as a counted drop. With `answer_check` on, an LLM (the checker, e.g. the judge) also confirms after every rewrite
that the seed's answer still answers the new question; a rewrite it rejects fails like any other.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.shared.answers import contains_phrase, content_words, normalize_answer
from webdancer_dagster.shared.qa import QAPair, RewriteStep, SearchRecord
from webdancer_dagster.synthesis.crawlqa import ClusterPage, eligible_pages
from webdancer_dagster.synthesis.fact_seeds import fact_seed
from webdancer_dagster.synthesis.qa import (
    Drop,
    SynthesisResult,
    deduplicate,
    is_grounded,
    question_problem,
    url_host,
)
from webdancer_dagster.synthesis.replies import JSON_FORMAT_HELP, JsonFormat, JsonReply, NonEmpty, ask_json
from webdancer_dagster.web.search import SearchBackend, SearchHit

logger = logging.getLogger(__name__)

SEED_STAGE = "e2hqa_seed"
REWRITE_STAGE = "e2hqa_rewrite"
STAGE = "e2hqa"


class E2HQAConfig(BaseModel):
    """How many seeds, how many rewrites each, and how strict the rewrite checks are."""

    model_config = ConfigDict(frozen=True)

    seeds: int = Field(10, ge=1, description="seed pages, one seed question each")
    seed_source: Literal["teacher", "facts"] = Field(
        "teacher",
        description="who writes the simple seed question: the teacher, or rules reading the facts a page's opening "
        "sentence states (`fact_seeds`, no model call)",
    )
    rewrites: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (1, 2, 3), min_length=1, description="rewrite counts to draw from per pair (seeded); recorded as difficulty"
    )
    seed: int = 0
    min_page_chars: int = Field(200, ge=0)
    page_chars: int = Field(2500, ge=100, description="text of the seed page shown in the prompt")
    max_answer_words: int = Field(6, ge=1, description="seed answers must be short entities")
    min_evidence_words: int = Field(4, ge=1)
    search_top_k: int = Field(5, ge=1, description="search hits shown to the teacher per rewrite")
    attempts_per_rewrite: int = Field(2, ge=1, description="tries (distinct samples) before a rewrite fails the pair")
    description_overlap: float = Field(
        0.5, gt=0, le=1, description="share of the description's content words the new question must contain"
    )
    answer_check: bool = Field(
        False, description="after each rewrite, ask the checker LLM whether the answer is unchanged (one more call)"
    )
    duplicate_threshold: float = Field(0.7, gt=0, le=1)
    json_format: JsonFormat = Field("object", description=JSON_FORMAT_HELP)
    max_workers: int | None = Field(None, ge=1, description="seeds rewritten in parallel; default: endpoint's limit")


class SeedReply(BaseModel):
    model_config = ConfigDict(coerce_numbers_to_str=True)

    question: NonEmpty
    answer: NonEmpty
    evidence: str = ""


class EntityReply(BaseModel):
    entity: NonEmpty


class RewriteReply(BaseModel):
    description: NonEmpty
    question: NonEmpty


class AnswerCheckReply(BaseModel):
    same_answer: bool


SYSTEM_PROMPT = (
    "You write and rewrite factual questions for training web-research agents. Reply with one JSON object and "
    "nothing else."
)


# The reply's keys are described in prose, with no JSON template: SmolLM2-135M copies any template's
# placeholder values verbatim. Replies that still repeat a phrase of the prompt are `copied_prompt_example`.
SEED_FORMAT = (
    'Reply with one JSON object with three keys: "question" (the question you wrote), "answer" (its short answer, '
    'copied from the page) and "evidence" (the sentence of the page that states the answer, copied word for word).'
)
_SEED_COPIES = frozenset(
    normalize_answer(text)
    for text in (
        "...",
        "the question you wrote",
        "its short answer",
        "the sentence of the page that states the answer",
        "the sentence of the page that states the answer, copied word for word",
    )
)


def seed_messages(page: ClusterPage, page_chars: int, max_answer_words: int = 6) -> list[dict[str, str]]:
    """Ask for one simple question whose short answer the page states."""
    user = (
        "Write one simple factual question that the page below answers. The answer must be a short entity stated "
        f"in the page (a name, place, date or number of at most {max_answer_words} words, not a sentence), and the "
        f"question must not contain it.\n\nURL: {page.url}\nTitle: {page.title}\nText: {page.text[:page_chars]}"
        f"\n\n{SEED_FORMAT}"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def entity_messages(question: str, answer: str) -> list[dict[str, str]]:
    """Ask which entity of the question to obscure next."""
    user = (
        f"Question: {question}\nAnswer: {answer}\n\n"
        "Pick one named entity (a person, place, work, organisation, event) that appears word for word in the "
        "question and is not the answer. It will be replaced by a description, to make the question harder.\n\n"
        'Reply with one JSON object with one key, "entity": the entity, exactly as written in the question.'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def rewrite_messages(question: str, answer: str, entity: str, hits: Sequence[SearchHit]) -> list[dict[str, str]]:
    """Ask for a description of `entity` from the search hits and the question with the entity replaced."""
    results = "\n".join(
        f"[{number}] {hit.title} ({hit.url})\n{hit.snippet}" for number, hit in enumerate(hits, start=1)
    )
    user = (
        f"Question: {question}\nAnswer: {answer}\nEntity: {entity}\n\nSearch results about the entity:\n{results}\n\n"
        "Using only these search results, describe the entity so that it can be identified without its name. "
        "Then rewrite the question, replacing the entity with your description and keeping everything else, so "
        "that the answer stays exactly the same. Neither the entity's name nor the answer may appear in the new "
        'question.\n\nReply with one JSON object with two keys: "description" (your description of the entity) and '
        '"question" (the rewritten question).'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


CHECK_SYSTEM_PROMPT = (
    "You check rewritten questions for a dataset of web-research questions. Reply with one JSON object and nothing "
    "else."
)


def answer_check_messages(before: str, after: str, entity: str, answer: str) -> list[dict[str, str]]:
    """Ask whether `answer`, the answer to `before`, still answers `after` (where `entity` became a description)."""
    user = (
        f"Check a rewritten question.\n\nOriginal question: {before}\nIts answer: {answer}\n"
        f"Rewritten question: {after}\n\nThe rewritten question should describe {entity!r} instead of naming it "
        f"and ask for exactly the same thing. Is {answer!r} still the correct answer to the rewritten question?\n\n"
        'Reply with one JSON object: {"same_answer": true} if it is, {"same_answer": false} if it is not.'
    )
    return [{"role": "system", "content": CHECK_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def sample_seed_pages(
    pages: pd.DataFrame, allowed_sites: Collection[str], *, seeds: int, seed: int = 0, min_page_chars: int = 200
) -> list[ClusterPage]:
    """Up to `seeds` distinct pages of `allowed_sites` with enough text, chosen by a seeded shuffle."""
    chosen = list(eligible_pages(pages, allowed_sites, min_page_chars).values())
    random.Random(seed).shuffle(chosen)
    return chosen[:seeds]


def check_seed(reply: JsonReply[SeedReply], page: ClusterPage, config: E2HQAConfig, teacher: str) -> QAPair | Drop:
    """A seed pair with a short answer that the page states, or the reason it is not one."""
    if reply.value is None:
        return Drop(SEED_STAGE, reply.reason or "not_json", page.url, reply.detail, STAGE, reply.raw)
    value = reply.value

    def drop(reason: str, detail: str) -> Drop:
        return Drop(SEED_STAGE, reason, page.url, detail, STAGE, reply.raw)

    copied = [text for text in (value.question, value.answer) if normalize_answer(text) in _SEED_COPIES]
    if copied:
        return drop("copied_prompt_example", f"the reply repeats the prompt's example or placeholder {copied[0]!r}")
    if problem := question_problem(value.question):
        return drop(*problem)
    if len(value.answer.split()) > config.max_answer_words:
        return drop("answer_too_long", f"{len(value.answer.split())} words > {config.max_answer_words}")
    if contains_phrase(value.question, value.answer):
        return drop("answer_in_question", f"the question contains the answer {value.answer!r}")
    evidence = [value.evidence.strip()] if normalize_answer(value.evidence) not in _SEED_COPIES else []
    if not is_grounded(value.answer, evidence, page.text, config.min_evidence_words):
        return drop("ungrounded", f"neither the answer {value.answer!r} nor the evidence is in the page")
    return QAPair(
        question=value.question,
        answer=value.answer,
        kind="e2hqa",
        source="e2hqa",
        source_urls=[page.url],
        difficulty=0,
        evidence=evidence,
        teacher=teacher,
    )


def check_entity(entity: str, question: str, answer: str) -> tuple[str, str] | None:
    """(reason, detail) when `entity` cannot be rewritten: not in the question, or (part of) the answer."""
    if normalize_answer(entity) == normalize_answer(answer) or contains_phrase(entity, answer):
        return "entity_is_answer", f"{entity!r} is or contains the answer {answer!r}"
    if not contains_phrase(question, entity):
        return "entity_not_in_question", f"{entity!r} does not occur in {question!r}"
    return None


def check_rewrite(
    before: str, after: str, description: str, entity: str, answer: str, min_overlap: float
) -> tuple[str, str] | None:
    """(reason, detail) when a rewrite is unusable; None when it obscures the entity and keeps the answer out."""
    if contains_phrase(after, answer):
        return "answer_in_question", f"the rewrite contains the answer {answer!r}: {after!r}"
    if problem := question_problem(after):
        return problem
    if normalize_answer(after) == normalize_answer(before):
        return "no_change", f"the rewrite equals the question: {after!r}"
    if contains_phrase(after, entity):
        return "entity_not_replaced", f"the rewrite still names {entity!r}: {after!r}"
    words = set(content_words(description))
    present = words & set(content_words(after))
    if not words or len(present) / len(words) < min_overlap:
        return "lost_entity", f"the rewrite drops {entity!r} instead of describing it as {description!r}: {after!r}"
    return None


class _Rewriter:
    """One seed's chain of rewrites; keeps `synthesize_e2hqa` readable."""

    def __init__(
        self,
        teacher: LLMEndpoint,
        search: SearchBackend,
        blocked_hosts: Collection[str],
        config: E2HQAConfig,
        checker: LLMEndpoint | None,
    ) -> None:
        self.teacher = teacher
        self.checker = checker
        self.search = search
        self.blocked = {host.lower().split(":")[0] for host in blocked_hosts}
        self.config = config

    def escalate(self, seed: QAPair, rewrites: int) -> QAPair | Drop:
        """Apply `rewrites` rewrites to `seed`; the first rewrite that fails every attempt drops the pair."""
        question, chain = seed.question, []
        for number in range(1, rewrites + 1):
            outcome: RewriteStep | Drop | None = None
            for attempt in range(self.config.attempts_per_rewrite):
                outcome = self._rewrite(seed, question, attempt, f"rewrite {number}/{rewrites}, attempt {attempt + 1}")
                if isinstance(outcome, RewriteStep):
                    break
            if not isinstance(outcome, RewriteStep):
                return outcome
            chain.append(outcome)
            question = outcome.question_after
        fields = seed.model_dump(exclude={"id", "question", "difficulty", "rewrite_chain"})
        return QAPair(question=question, difficulty=rewrites, rewrite_chain=chain, **fields)

    def _rewrite(self, seed: QAPair, question: str, attempt: int, where: str) -> RewriteStep | Drop:
        json_format = self.config.json_format

        def drop(reason: str, detail: str, raw: str = "") -> Drop:
            return Drop(REWRITE_STAGE, reason, seed.id, f"{where}: {detail}", STAGE, raw)

        messages = entity_messages(question, seed.answer)
        picked = ask_json(self.teacher, messages, EntityReply, sample_index=attempt, json_format=json_format)
        if picked.value is None:
            return drop(picked.reason or "not_json", picked.detail, picked.raw)
        entity = picked.value.entity
        problem = check_entity(entity, question, seed.answer)
        if problem:
            return drop(*problem, picked.raw)
        hits = [
            hit for hit in self.search.search(entity, self.config.search_top_k) if url_host(hit.url) not in self.blocked
        ]
        if not hits:
            return drop("no_search_results", f"no usable search result for {entity!r}")
        written = ask_json(
            self.teacher,
            rewrite_messages(question, seed.answer, entity, hits),
            RewriteReply,
            sample_index=attempt,
            json_format=json_format,
        )
        if written.value is None:
            return drop(written.reason or "not_json", written.detail, written.raw)
        after, description = written.value.question, written.value.description
        problem = check_rewrite(question, after, description, entity, seed.answer, self.config.description_overlap)
        if problem:
            return drop(*problem, written.raw)
        verdict = ""
        if self.checker is not None:
            checked = ask_json(
                self.checker,
                answer_check_messages(question, after, entity, seed.answer),
                AnswerCheckReply,
                sample_index=attempt,
                json_format=json_format,
            )
            if checked.value is None:
                detail = f"the checker's reply is unusable ({checked.reason}): {checked.detail}"
                return drop("answer_check_failed", detail, checked.raw)
            if not checked.value.same_answer:
                detail = f"the checker says {seed.answer!r} no longer answers {after!r}"
                return drop("answer_changed", detail, checked.raw)
            verdict = checked.raw
        return RewriteStep(
            question_before=question,
            entity=entity,
            query=entity,
            results=[SearchRecord(title=h.title, url=h.url, snippet=h.snippet) for h in hits],
            description=description,
            question_after=after,
            answer_check=verdict,
        )


def rewrite_count(page_url: str, config: E2HQAConfig) -> int:
    """The number of rewrites for the seed from `page_url`: seeded per page, so reruns and resumes agree."""
    return random.Random(f"{config.seed}:{page_url}").choice(config.rewrites)


def synthesize_e2hqa(
    pages: pd.DataFrame,
    allowed_sites: Collection[str],
    teacher: LLMEndpoint,
    search: SearchBackend,
    blocked_hosts: Collection[str],
    config: E2HQAConfig | None = None,
    *,
    checker: LLMEndpoint | None = None,
    existing_questions: Iterable[str] = (),
) -> SynthesisResult:
    """Seed one simple question per sampled page of `allowed_sites`, then rewrite each n times (n = difficulty).

    `blocked_hosts` are the benchmark sites' hosts: search hits there are discarded, so no benchmark page
    ever reaches the teacher. `checker` answers the answer-unchanged check and is required when
    `config.answer_check` is on. Seeds run in parallel; results are checked in seed order.
    """
    config = config or E2HQAConfig()
    if config.answer_check and checker is None:
        raise ValueError("E2HQA answer_check is on but no checker endpoint was given")
    seed_pages = sample_seed_pages(
        pages, allowed_sites, seeds=config.seeds, seed=config.seed, min_page_chars=config.min_page_chars
    )
    if not seed_pages:
        logger.warning("e2hqa: no seed page on sites %s", sorted(allowed_sites))
        return SynthesisResult([], [], 0)
    rewriter = _Rewriter(teacher, search, blocked_hosts, config, checker if config.answer_check else None)

    def run(page: ClusterPage) -> QAPair | Drop:
        if config.seed_source == "facts":
            seed = fact_seed(page)
        else:
            messages = seed_messages(page, config.page_chars, config.max_answer_words)
            reply = ask_json(teacher, messages, SeedReply, json_format=config.json_format)
            seed = check_seed(reply, page, config, teacher.config.model)
        if isinstance(seed, Drop):
            return seed
        return rewriter.escalate(seed, rewrite_count(page.url, config))

    workers = min(len(seed_pages), config.max_workers or teacher.max_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="e2hqa") as pool:
        candidates = list(pool.map(run, seed_pages))
    kept, drops = deduplicate(candidates, STAGE, config.duplicate_threshold, existing_questions)
    logger.info("e2hqa: %d seeds, %d kept, %d dropped", len(seed_pages), len(kept), len(drops))
    return SynthesisResult(kept, drops, len(seed_pages))
