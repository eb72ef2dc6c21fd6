"""A tiny real web (HTML site behind the site server, tantivy index) and the model's tokenizer for agent tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from scripted_turns import HOST, TEST_DATE, TinyWeb, endpoint_config, write_site

from webdancer_dagster.agent.loop import AgentConfig, ReactAgent
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import tool_map
from webdancer_dagster.agent.visit import VisitTool
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.web.search import LocalSearch, build_search_index
from webdancer_dagster.web.server import SiteServer


@pytest.fixture(scope="session")
def tiny_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyWeb]:
    root = tmp_path_factory.mktemp("tiny-web")
    docs = write_site(root / "html")
    build_search_index(docs, root / "index")
    with SiteServer({HOST: root / "html"}) as server:
        yield TinyWeb(site_dir=root / "html", index_dir=root / "index", proxy_url=server.proxy_url)


@pytest.fixture(scope="session")
def tokenizer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2's tokenizer; its extraction from the GGUF takes seconds, so it is kept in pytest's cache dir."""
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    cache_dir = cache.mkdir("webdancer-tokenizers") if cache else tmp_path_factory.mktemp("tokenizers")
    return load_tokenizer(str(find_smollm2_gguf()), str(cache_dir))


@pytest.fixture
def make_agent(tiny_web: TinyWeb, tokenizer) -> Callable[..., ReactAgent]:
    """Build a ReactAgent with real search and visit tools against `base_url` (policy and summarizer).

    `endpoint` overrides settings of both endpoints; `summarizer_url` points the summarizer elsewhere.
    """

    def build(
        base_url: str, *, summarizer_url: str | None = None, endpoint: dict[str, Any] | None = None, **config: Any
    ) -> ReactAgent:
        llm = LLMEndpoint(endpoint_config(base_url, **(endpoint or {})))
        summarizer = LLMEndpoint(
            endpoint_config(summarizer_url or base_url, **{**(endpoint or {}), "role": "summarizer"})
        )
        tools = tool_map(SearchTool(LocalSearch(tiny_web.index_dir)), VisitTool(summarizer, tiny_web.policy()))
        config.setdefault("current_date", TEST_DATE)
        return ReactAgent(llm, tools, tokenizer, AgentConfig(**config))

    return build
