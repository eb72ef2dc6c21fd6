"""Agent speed on the offline stack: loop overhead against raw completions, and 4 concurrent agents against 1.

Both parts run SmolLM2-135M-Instruct on one local llama.cpp server over a small local web built from the MuSiQue
paragraphs of a few questions (site server + tantivy index), greedy decoding so that reruns generate the same tokens.

(a) Overhead: the agent answers the questions; every chat request it made (policy turns and `visit` extractions,
    recorded by the response cache) is then replayed as raw chat completions on the same server, in the same
    order. Ratio = agent generated tokens/s / raw generated tokens/s. Target: at least 0.85x.
(b) Concurrency: the same questions run one at a time, then by 4 agents at once (endpoint limit 4, no cache).
    Ratio = questions/min with 4 agents / with 1.

    .venv/bin/python benchmarks/bench_agent.py [--questions 4] [--max-llm-calls 3] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import openai
import pandas as pd
from transformers import PreTrainedTokenizerBase

from webdancer_dagster.agent.loop import AgentConfig, ReactAgent, run_agents
from webdancer_dagster.agent.search import SearchTool
from webdancer_dagster.agent.tools import tool_map
from webdancer_dagster.agent.trajectory import Trajectory
from webdancer_dagster.agent.visit import VisitTool
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.warehouse import resolve_home
from webdancer_dagster.web.search import LocalSearch, build_search_index
from webdancer_dagster.web.server import SiteServer
from webdancer_dagster.web.sites import assign_pages, render_corpus_site, site_host
from webdancer_dagster.web.visit import FetchPolicy

RESULTS = Path(__file__).resolve().parent / "results"
SITE = "musique"


def build_web(questions: list[dict], root: Path) -> tuple[dict[str, Path], Path]:
    """The questions' MuSiQue paragraphs as a site and a search index; returns (host -> root, index dir)."""
    records = [{"title": p["title"], "text": p["paragraph_text"]} for q in questions for p in q["paragraphs"]]
    render_corpus_site(records, root / "html", SITE)
    host = site_host(SITE)
    docs = pd.DataFrame(
        [
            {"url": f"http://{host}{page.path}", "title": page.title, "text": page.text, "site": SITE}
            for page in assign_pages(records)
        ]
    )
    build_search_index(docs, root / "index")
    return {host: root / "html"}, root / "index"


@dataclasses.dataclass(frozen=True)
class Stack:
    """Everything an agent needs, started once for the whole benchmark."""

    server: ModelServer
    web: SiteServer
    hosts: dict[str, Path]
    index: Path
    tokenizer: PreTrainedTokenizerBase
    args: argparse.Namespace

    def agent(self, cache: Path | None) -> ReactAgent:
        def endpoint(role: str) -> LLMEndpoint:
            sampling = SamplingParams(temperature=0.0, max_tokens=self.args.max_tokens, seed=0)
            config = EndpointConfig(
                role=role, base_url=self.server.base_url, model=self.server.model, sampling=sampling,
                timeout_s=600, max_concurrency=4, cache_path=cache,
            )  # fmt: skip
            return LLMEndpoint(config)

        fetch_policy = FetchPolicy(allowed_hosts=frozenset(self.hosts), proxy_url=self.web.proxy_url)
        visit = VisitTool(endpoint("summarizer"), fetch_policy, max_page_chars=1500)
        config = AgentConfig(
            max_llm_calls=self.args.max_llm_calls, max_context_tokens=self.args.n_ctx - 2 * self.args.max_tokens
        )
        return ReactAgent(
            endpoint("policy"), tool_map(SearchTool(LocalSearch(self.index)), visit), self.tokenizer, config
        )


@dataclasses.dataclass(frozen=True)
class OverheadPass:
    cache: Path
    trajectories: list[Trajectory]
    tokens: int
    seconds: float
    llm_s: float
    tool_s: float


def run_overhead_pass(stack: Stack, questions: list[str], folder: Path) -> OverheadPass:
    """The agent on `questions` from a cold KV cache, its requests recorded in a fresh response cache."""
    cache = folder / "requests.sqlite"
    agent = stack.agent(cache)
    flush(stack.server)
    started = time.perf_counter()
    trajectories = [agent.run(question) for question in questions]
    seconds = time.perf_counter() - started
    usage = [agent.llm.usage.as_metadata(), agent.tools["visit"].summarizer.usage.as_metadata()]
    steps = [step for trajectory in trajectories for step in trajectory.steps]
    return OverheadPass(
        cache=cache,
        trajectories=trajectories,
        tokens=sum(u["completion_tokens"] for u in usage),
        seconds=seconds,
        llm_s=sum(step.llm_latency_s for step in steps),
        tool_s=sum(step.tool_latency_s for step in steps),
    )


def recorded_requests(cache: Path) -> list[dict]:
    with sqlite3.connect(cache) as conn:
        rows = conn.execute("SELECT request FROM responses ORDER BY created_at").fetchall()
    return [json.loads(row[0]) for row in rows]


def flush(server: ModelServer) -> None:
    """Leave the server's KV cache holding an unrelated prompt, so each phase starts equally cold."""
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", timeout=600, max_retries=0)
    client.chat.completions.create(
        model=server.model, messages=[{"role": "user", "content": "Name a colour."}], max_tokens=1, temperature=0
    )


def replay(base_url: str, requests: list[dict]) -> tuple[int, float]:
    """Send each request as a plain chat completion; returns (completion tokens, seconds)."""
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=600, max_retries=0)
    tokens = 0
    started = time.perf_counter()
    for request in requests:
        tokens += client.chat.completions.create(**request).usage.completion_tokens
    return tokens, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=4, help="MuSiQue questions (the first N of the train set)")
    parser.add_argument("--max-llm-calls", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96, help="per policy turn and per extraction")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--overhead-questions", type=int, default=2, help="questions used for part (a)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating raw/agent measurements for part (a)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra llama_cpp.server argument")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    data = json.loads((DATA_DIR / "musique" / "musique_train_100.json").read_text())[: args.questions]
    questions = [q["question"] for q in data]
    gguf = find_smollm2_gguf()
    tokenizer = load_tokenizer(str(gguf), str(resolve_home() / "tokenizers"))
    with tempfile.TemporaryDirectory() as tmp:
        hosts, index = build_web(data, Path(tmp))
        server_config = ModelServerConfig(model_path=str(gguf), n_ctx=args.n_ctx, extra_args=tuple(args.server_arg))
        with SiteServer(hosts) as web, ModelServer(server_config) as server:
            stack = Stack(server, web, hosts, index, tokenizer, args)
            # (a) overhead: a warm-up pass records the requests; then raw replays and agent runs alternate
            overhead_questions = questions[: args.overhead_questions]
            requests = recorded_requests(run_overhead_pass(stack, overhead_questions, Path(tmp) / "0").cache)
            raw_runs, agent_runs = [], []
            for repeat in range(1, args.repeats + 1):
                flush(server)
                raw_runs.append(replay(server.base_url, requests))
                run = run_overhead_pass(stack, overhead_questions, Path(tmp) / str(repeat))
                if len(recorded_requests(run.cache)) != len(requests):
                    raise RuntimeError("greedy agent runs diverged; the overhead comparison would be meaningless")
                agent_runs.append(run)

            # (b) concurrency: one agent at a time, then four
            agent = stack.agent(cache=None)
            timings = {}
            for workers in (1, 4):
                flush(server)
                started = time.perf_counter()
                runs = run_agents(agent, questions, max_workers=workers)
                timings[workers] = time.perf_counter() - started
                assert len(runs) == len(questions)

    raw_tokens, raw_s = statistics.median(r[0] for r in raw_runs), statistics.median(r[1] for r in raw_runs)
    median_run = sorted(agent_runs, key=lambda run: run.seconds)[len(agent_runs) // 2]
    agent_tokens, agent_s = median_run.tokens, median_run.seconds
    trajectories = median_run.trajectories
    agent_tps, raw_tps = agent_tokens / agent_s, raw_tokens / raw_s
    qpm = {workers: len(questions) / seconds * 60 for workers, seconds in timings.items()}
    summary = {
        "benchmark": "agent",
        "model": server.model,
        "server": "llama_cpp (llama-cpp-python: one request at a time)",
        "overhead": {
            "questions": len(trajectories),
            "llm_requests": len(requests),
            "agent_completion_tokens": agent_tokens,
            "agent_s": round(agent_s, 2),
            "agent_llm_s": round(median_run.llm_s, 2),
            "agent_tool_s": round(median_run.tool_s, 2),
            "agent_loop_s": round(agent_s - median_run.llm_s - median_run.tool_s, 2),
            "agent_tokens_per_s": round(agent_tps, 2),
            "raw_completion_tokens": raw_tokens,
            "raw_s": round(raw_s, 2),
            "raw_tokens_per_s": round(raw_tps, 2),
            "ratio": round(agent_tps / raw_tps, 3),
            "target_ratio": 0.85,
            "meets_target": agent_tps / raw_tps >= 0.85,
            "terminations": [t.termination for t in trajectories],
        },
        "concurrency": {
            "questions": len(questions),
            "sequential_s": round(timings[1], 2),
            "concurrent_4_s": round(timings[4], 2),
            "questions_per_min_1": round(qpm[1], 2),
            "questions_per_min_4": round(qpm[4], 2),
            "ratio": round(qpm[4] / qpm[1], 3),
        },
        "settings": {
            "max_llm_calls": args.max_llm_calls,
            "max_tokens": args.max_tokens,
            "repeats": args.repeats,
            "server_args": args.server_arg,
            "n_ctx": args.n_ctx,
            "median_llm_latency_s": round(statistics.median(s.llm_latency_s for t in trajectories for s in t.steps), 2),
        },
    }
    print(
        f"(a) agent loop {agent_tps:.1f} generated tok/s ({agent_tokens} tokens in {agent_s:.1f}s, "
        f"{len(requests)} requests; LLM {median_run.llm_s:.1f}s, tools {median_run.tool_s:.1f}s) "
        f"vs raw completions {raw_tps:.1f} tok/s ({raw_tokens} tokens in {raw_s:.1f}s) "
        f"-> ratio {agent_tps / raw_tps:.2f}x (target >= 0.85x)"
    )
    print(
        f"(b) {len(questions)} questions: 1 agent {qpm[1]:.2f} q/min ({timings[1]:.1f}s), 4 concurrent agents "
        f"{qpm[4]:.2f} q/min ({timings[4]:.1f}s) -> ratio {qpm[4] / qpm[1]:.2f}x"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
