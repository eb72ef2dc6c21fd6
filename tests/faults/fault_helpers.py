"""What the fault tests share: a scripted model that plays every role the way a capable one would, the small local
web crawled and indexed in a home, and the run config that samples trajectories over it."""

from __future__ import annotations

import json
import re
from typing import Any

import dagster as dg
from corpus_helpers import run_config

from webdancer_dagster.agent.prompts import EXTRACTOR_PROMPT
from webdancer_dagster.assets import corpus, qa, registries, trajectories
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment

ANSWER = "Lotharingia"
ROLES = ("teacher_short", "teacher_long", "judge", "summarizer")
EXTRACTOR_OPENING = EXTRACTOR_PROMPT.split("\n", 1)[0]


def teacher(request: dict[str, Any]) -> str:
    """Every role from what its prompt asks: CRAWLQA questions that differ by cluster (E2HQA gets nothing usable), an
    agent that searches, visits the first wiki page found and answers, a summarizer quoting the page, a judge that
    accepts."""
    messages = request["messages"]
    last = messages[-1]["content"]
    if "Judge whether the predicted answer" in last:
        return "Correct"
    if last.startswith(EXTRACTOR_OPENING):
        return json.dumps({"rational": "it names the kingdom", "evidence": "ruled Lotharingia", "summary": ANSWER})
    if messages[0]["content"].startswith("You write and rewrite factual questions"):
        return "not json at all"  # E2HQA keeps nothing: every seed is a counted drop
    if '"source_pages"' in last:
        pages = re.findall(r"^\[(Page \d+)\]\nURL: (\S+)", last, flags=re.MULTILINE)
        wiki = [label for label, url in pages if "wiki.webdancer.test" in url] or [label for label, _ in pages]
        first = pages[0][1] if pages else "the pages"
        question = f"Which kingdom do the pages around {first} name?"
        return json.dumps({"question": question, "answer": ANSWER, "source_pages": wiki})
    if last.startswith("<tool_response>") and "Evidence in page" in last:
        return f"<think>The page names the kingdom.</think>\n<answer>{ANSWER}</answer>"
    if last.startswith("<tool_response>"):
        url = re.search(r"http://wiki\.webdancer\.test/\S*?(?=[\s)\]\"'])", last)
        call = {"name": "visit", "arguments": {"url": [url.group(0) if url else "http://wiki.webdancer.test/"],
                                                "goal": "the kingdom"}}  # fmt: skip
        return f"<think>I should read the page.</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"
    call = {"name": "search", "arguments": {"query": ["Lothair II kingdom"]}}
    return f"<think>I should search for the king.</think>\n<tool_call>\n{json.dumps(call)}\n</tool_call>"


def llm_run_config(data, docs, max_pairs: int = 2) -> dict[str, Any]:
    """The corpus config of `small_web`, plus CRAWLQA and trajectories small enough for a test."""
    config = run_config(data, docs)
    config["ops"].update(
        {
            "crawlqa_pairs": {"config": {"clusters": 3, "subpages": 2, "min_page_chars": 20, "json_format": "none"}},
            "e2hqa_pairs": {"config": {"seeds": 2, "min_page_chars": 20, "json_format": "none"}},
            "trajectories": {"config": {"attempts": 1, "max_pairs": max_pairs, "max_llm_calls": 4, "max_reference": 4}},
        }
    )
    return config


def llm_assets() -> list:
    return [*dg.load_assets_from_modules([corpus, qa, trajectories])]


def ops_for(config: dict[str, Any], selection: list[str]) -> dict[str, Any]:
    return {"ops": {key: value for key, value in config["ops"].items() if key in selection}}


def build_local_web(config: dict[str, Any], home) -> None:
    """`web_sites`, every site's crawl and the search index, in `home`."""
    warehouse = Warehouse(home=str(home))
    resources = {"warehouse": warehouse, "web": WebEnvironment(warehouse=warehouse)}
    instance = dg.DagsterInstance.ephemeral()
    assets = [corpus.web_sites, corpus.crawl_pages, corpus.search_index]

    def run(selection: list[str], partition_key: str | None = None) -> None:
        result = dg.materialize(
            assets, selection=selection, partition_key=partition_key, resources=resources, instance=instance,
            run_config=ops_for(config, selection),
        )  # fmt: skip
        assert result.success

    run(["web_sites"])
    for site in registries.SITE_NAMES:
        run(["crawl_pages"], site)
    run(["search_index"])


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [event] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in event.metadata.items()}
