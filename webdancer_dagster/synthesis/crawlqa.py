"""CRAWLQA: questions a teacher writes about a cluster of linked pages, kept only when the pages support them.

WebDancer collects a root page and the sub-pages reached by clicking its links, then has a model write COUNT,
MULTI-HOP and INTERSECTION questions whose answers need those pages. Here the clusters come from the crawl
graph (`pages` and `links` tables) of non-benchmark sites only, the teacher answers in JSON, and a pair survives
only if it cites pages of its cluster, its answer (or the teacher's quoted evidence) is found in them, and it
is not a near-duplicate of a question already kept. The teacher cites a page by its label in the prompt
(`Page 2`) or by its URL: small models cannot copy URLs reliably, and the label is mapped back to the URL here.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
from collections.abc import Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urldefrag

import pandas as pd
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.shared.answers import contains_phrase, normalize_answer, normalize_words
from webdancer_dagster.shared.hashing import stable_id
from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.synthesis.qa import Drop, SynthesisResult, deduplicate, is_grounded, question_problem
from webdancer_dagster.synthesis.replies import JSON_FORMAT_HELP, JsonFormat, JsonReply, NonEmpty, ask_json

logger = logging.getLogger(__name__)

CrawlQAKind = Literal["count", "multi_hop", "intersection"]
CRAWLQA_KINDS: tuple[CrawlQAKind, ...] = ("count", "multi_hop", "intersection")
STAGE = "crawlqa"


class CrawlQAConfig(BaseModel):
    """How many clusters to sample, how big, which question kinds, and how strict the checks are."""

    model_config = ConfigDict(frozen=True)

    clusters: int = Field(10, ge=1, description="page clusters to sample; each gets one question per kind")
    subpages: int = Field(3, ge=1, description="linked pages added to each root page")
    max_depth: int = Field(2, ge=1, description="clicks from the root within which sub-pages are picked")
    kinds: tuple[CrawlQAKind, ...] = Field(CRAWLQA_KINDS, min_length=1)
    seed: int = 0
    min_page_chars: int = Field(200, ge=0, description="pages with less text are never shown to the teacher")
    page_chars: int = Field(2500, ge=100, description="text of each page shown in the prompt")
    max_answer_words: int = Field(10, ge=1, description="longer answers are dropped: answers must be short")
    min_evidence_words: int = Field(4, ge=1, description="shorter evidence quotes ground nothing")
    duplicate_threshold: float = Field(0.7, gt=0, le=1, description="word-trigram Jaccard at which a question repeats")
    json_format: JsonFormat = Field("object", description=JSON_FORMAT_HELP)
    max_workers: int | None = Field(None, ge=1, description="parallel teacher calls; default: the endpoint's limit")


@dataclass(frozen=True)
class ClusterPage:
    url: str
    site: str
    title: str
    text: str


@dataclass(frozen=True)
class PageCluster:
    """A root page and the linked pages a visitor reaches from it; `pages[0]` is the root."""

    id: str
    pages: tuple[ClusterPage, ...]

    @property
    def site(self) -> str:
        return self.pages[0].site

    @property
    def urls(self) -> list[str]:
        return [page.url for page in self.pages]


class CrawlQAReply(BaseModel):
    """The JSON object the teacher must answer with. `source_pages` holds page labels or URLs (`source_urls` is
    accepted as its name too, as teachers prompted with older formats write it)."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    question: NonEmpty
    answer: NonEmpty
    source_pages: list[NonEmpty] = Field(min_length=1, validation_alias=AliasChoices("source_pages", "source_urls"))
    evidence: list[str] = Field(default_factory=list)

    @field_validator("source_pages", "evidence", mode="before")
    @classmethod
    def _listify(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def _defrag(url: str) -> str:
    return urldefrag(url.strip())[0]


def eligible_pages(pages: pd.DataFrame, allowed_sites: Collection[str], min_page_chars: int) -> dict[str, ClusterPage]:
    """Pages synthesis may read (on `allowed_sites`, with enough text) by URL without fragment, in URL order."""
    eligible = pages[pages["site"].isin(set(allowed_sites))]
    eligible = eligible[eligible["text"].fillna("").str.strip().str.len() >= min_page_chars]
    return {
        _defrag(row.url): ClusterPage(
            _defrag(row.url), row.site, row.title if isinstance(row.title, str) else "", str(row.text)
        )
        for row in eligible.sort_values("url").itertuples(index=False)
    }


def sample_clusters(
    pages: pd.DataFrame,
    links: pd.DataFrame,
    allowed_sites: Collection[str],
    *,
    clusters: int,
    subpages: int,
    max_depth: int = 2,
    seed: int = 0,
    min_page_chars: int = 200,
) -> list[PageCluster]:
    """Sample up to `clusters` clusters: distinct roots with at least one linked page, all on `allowed_sites`.

    Sub-pages are picked as a visitor would click: first among the root's own links, then one click further.
    Pages and links are sorted before the seeded shuffle, so the same inputs give the same clusters whatever
    order the warehouse returns rows in.
    """
    by_url = eligible_pages(pages, allowed_sites, min_page_chars)
    neighbours: dict[str, list[str]] = {}
    for src, dst in sorted({(_defrag(s), _defrag(d)) for s, d in zip(links["src_url"], links["dst_url"], strict=True)}):
        if src != dst and src in by_url and dst in by_url:
            neighbours.setdefault(src, []).append(dst)
    roots = sorted(neighbours)
    rng = random.Random(seed)
    rng.shuffle(roots)
    result = []
    for root in roots[:clusters]:
        chosen = _click_through(root, neighbours, subpages, max_depth, rng)
        cluster_pages = tuple(by_url[url] for url in [root, *chosen])
        result.append(PageCluster(stable_id(*[p.url for p in cluster_pages], prefix="cluster-"), cluster_pages))
    return result


def _click_through(
    root: str, neighbours: dict[str, list[str]], subpages: int, max_depth: int, rng: random.Random
) -> list[str]:
    seen = {root}
    chosen: list[str] = []
    level = [root]
    for _depth in range(max_depth):
        frontier = sorted({dst for src in level for dst in neighbours.get(src, []) if dst not in seen})
        rng.shuffle(frontier)
        for url in frontier:
            seen.add(url)
            if len(chosen) < subpages:
                chosen.append(url)
        if len(chosen) >= subpages or not frontier:
            break
        level = chosen
    return chosen


KIND_INSTRUCTIONS: dict[CrawlQAKind, str] = {
    "count": (
        "Write a COUNT question: it asks how many things satisfy a condition, and the pages let a reader count "
        "them. The answer is a number."
    ),
    "multi_hop": (
        "Write a MULTI-HOP question: answering it needs facts from at least two different pages, e.g. a fact on "
        "one page identifies something whose detail is on another page."
    ),
    "intersection": (
        "Write an INTERSECTION question: it describes one entity only through conditions found on at least two "
        "different pages; the answer is the one entity satisfying all of them."
    ),
}

SYSTEM_PROMPT = (
    "You write hard, factual questions for training web-research agents. Every fact you use must come from the "
    "pages you are given. Reply with one JSON object and nothing else."
)
# The keys are described in prose, not as a JSON template: SmolLM2-135M copied a template's placeholder values
# verbatim in every reply. A reply that still repeats a description wrote no question of its own.
QUESTION_PLACEHOLDER = "the question you wrote"
ANSWER_PLACEHOLDER = "its short answer"
EVIDENCE_PLACEHOLDER = "sentences copied word for word from those pages that support the answer"
REPLY_FORMAT = (
    f'Reply with one JSON object with four keys: "question" ({QUESTION_PLACEHOLDER}), "answer" ({ANSWER_PLACEHOLDER}: '
    'a few words copied from the pages), "source_pages" (the labels of the pages the answer needs, such as "Page 2") '
    f'and "evidence" ({EVIDENCE_PLACEHOLDER}). The question must not contain the answer.'
)
_PLACEHOLDERS = frozenset(normalize_answer(text) for text in ("...", QUESTION_PLACEHOLDER, ANSWER_PLACEHOLDER))
_NOT_EVIDENCE = _PLACEHOLDERS | {normalize_answer(EVIDENCE_PLACEHOLDER)}  # copied placeholders quote nothing
# "Page 2", "[Page 2]", "page #2", "[2]", "2": a page label as teachers write it; nothing else around it.
_PAGE_LABEL = re.compile(r"^\[?\s*(?:page\s*#?\s*)?(\d+)\s*\]?$", re.IGNORECASE)


_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split()
)


def is_number(answer: str) -> bool:
    """A count as people write it: digits or a number word first ("12", "1,024", "three modules")."""
    words = normalize_words(answer).split()
    return bool(words) and (words[0].isdigit() or words[0] in _NUMBER_WORDS)


def resolve_citation(citation: str, cluster: PageCluster) -> str | None:
    """The cluster URL a citation names, by page label (1-based, as numbered in the prompt) or by URL; else None."""
    label = _PAGE_LABEL.match(citation.strip())
    if label:
        number = int(label.group(1))
        return cluster.pages[number - 1].url if 1 <= number <= len(cluster.pages) else None
    url = _defrag(citation)
    return url if url in cluster.urls else None


def reply_schema(cluster: PageCluster, kind: CrawlQAKind) -> dict[str, Any]:
    """The reply's JSON schema for one task: `source_pages` may hold only this cluster's page labels, and for the
    kinds that need two pages exactly two different ones; a COUNT answer is a number.

    Sent with `object_with_schema` or `json_schema`, a server that enforces schemas (llama.cpp's grammar, vLLM's
    guided decoding) cannot cite a page that is not in the prompt, or one page twice (grammars do not enforce
    `uniqueItems`, so two-page citations are listed as ordered pairs); the checks still run for servers that do not.
    """
    schema = CrawlQAReply.model_json_schema()
    labels = [f"Page {number}" for number in range(1, len(cluster.pages) + 1)]
    properties = schema["properties"]
    if kind == "count" or len(labels) < 2:
        properties["source_pages"] = {
            **properties["source_pages"],
            "items": {"type": "string", "enum": labels},
            "minItems": 1,
        }
    else:
        pairs = itertools.combinations(labels, 2)
        properties["source_pages"] = {
            "title": properties["source_pages"].get("title", "Source Pages"),
            "anyOf": [
                {"type": "array", "prefixItems": [{"const": a}, {"const": b}], "items": False, "minItems": 2}
                for a, b in pairs
            ],
        }
    if kind == "count":
        properties["answer"] = {**properties["answer"], "pattern": "^[0-9]+$"}
    return schema


def crawlqa_messages(cluster: PageCluster, kind: CrawlQAKind, page_chars: int) -> list[dict[str, str]]:
    """The teacher prompt for one cluster and one question kind."""
    blocks = [
        f"[Page {number}]\nURL: {page.url}\nTitle: {page.title}\nText: {page.text[:page_chars]}"
        for number, page in enumerate(cluster.pages, start=1)
    ]
    user = f"{KIND_INSTRUCTIONS[kind]}\n\n" + "\n\n".join(blocks) + f"\n\n{REPLY_FORMAT}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def check_crawlqa_reply(
    reply: JsonReply[CrawlQAReply], cluster: PageCluster, kind: CrawlQAKind, config: CrawlQAConfig, teacher: str
) -> QAPair | Drop:
    """Turn one teacher reply into a pair, or a drop saying which check it failed."""
    item = f"{cluster.id}:{kind}"
    if reply.value is None:
        return Drop(STAGE, reply.reason or "not_json", item, reply.detail, kind, reply.raw)

    def drop(reason: str, detail: str) -> Drop:
        return Drop(STAGE, reason, item, detail, kind, reply.raw)

    value = reply.value
    copied = [text for text in (value.question, value.answer) if normalize_answer(text) in _PLACEHOLDERS]
    if copied:
        return drop("copied_prompt_example", f"the reply repeats the format's placeholder {copied[0]!r}")
    if problem := question_problem(value.question):
        return drop(*problem)
    if kind == "count" and not is_number(value.answer):
        return drop("count_not_a_number", f"a COUNT question's answer is a number, not {value.answer!r}")
    pages = {page.url: page for page in cluster.pages}
    resolved = {citation: resolve_citation(citation, cluster) for citation in value.source_pages}
    unknown = [citation for citation, url in resolved.items() if url is None]
    if unknown:
        return drop("cites_unknown_page", f"neither a page label nor a URL of the cluster: {', '.join(unknown)}")
    cited = list(dict.fromkeys(url for url in resolved.values() if url is not None))
    if kind != "count" and len(cited) < 2:
        return drop("needs_two_pages", f"a {kind} question must cite at least two pages; it cites {len(cited)}")
    if len(value.answer.split()) > config.max_answer_words:
        return drop("answer_too_long", f"{len(value.answer.split())} words > {config.max_answer_words}")
    if contains_phrase(value.question, value.answer):
        return drop("answer_in_question", f"the question contains the answer {value.answer!r}")
    evidence = [quote.strip() for quote in value.evidence if normalize_answer(quote) not in _NOT_EVIDENCE]
    cited_text = "\n".join(pages[url].text for url in cited)
    if not is_grounded(value.answer, evidence, cited_text, config.min_evidence_words):
        return drop("ungrounded", f"neither the answer {value.answer!r} nor all evidence quotes are in the cited pages")
    return QAPair(
        question=value.question,
        answer=value.answer,
        kind=kind,
        source="crawlqa",
        source_urls=cited,
        difficulty=len(cited),
        evidence=evidence,
        teacher=teacher,
    )


def synthesize_crawlqa(
    pages: pd.DataFrame,
    links: pd.DataFrame,
    allowed_sites: Collection[str],
    teacher: LLMEndpoint,
    config: CrawlQAConfig | None = None,
    *,
    existing_questions: Iterable[str] = (),
) -> SynthesisResult:
    """Sample clusters from `allowed_sites`, ask the teacher for one question per cluster and kind, keep the good.

    `pages` needs url, site, title, text; `links` needs src_url, dst_url. Teacher calls run in parallel up to the
    endpoint's concurrency; results are checked in task order, so the output does not depend on timing.
    """
    config = config or CrawlQAConfig()
    clusters = sample_clusters(
        pages,
        links,
        allowed_sites,
        clusters=config.clusters,
        subpages=config.subpages,
        max_depth=config.max_depth,
        seed=config.seed,
        min_page_chars=config.min_page_chars,
    )
    tasks = [(cluster, kind) for cluster in clusters for kind in config.kinds]
    if not tasks:
        logger.warning("crawlqa: no cluster could be sampled from sites %s", sorted(allowed_sites))
        return SynthesisResult([], [], 0)

    def run(task: tuple[PageCluster, CrawlQAKind]) -> QAPair | Drop:
        cluster, kind = task
        messages = crawlqa_messages(cluster, kind, config.page_chars)
        reply = ask_json(
            teacher, messages, CrawlQAReply, json_format=config.json_format, schema=reply_schema(cluster, kind)
        )
        return check_crawlqa_reply(reply, cluster, kind, config, teacher.config.model)

    workers = min(len(tasks), config.max_workers or teacher.max_concurrency)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crawlqa") as pool:
        candidates = list(pool.map(run, tasks))
    kept, drops = deduplicate(candidates, STAGE, config.duplicate_threshold, existing_questions)
    logger.info(
        "crawlqa: %d clusters, %d requests, %d kept, %d dropped", len(clusters), len(tasks), len(kept), len(drops)
    )
    return SynthesisResult(kept, drops, len(tasks), sources={cluster.id: cluster.urls for cluster in clusters})
