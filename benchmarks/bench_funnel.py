"""Funnel throughput with the offline model: trajectories judged per minute, and Python overhead vs LLM time.

Runs stages (a) validity, (b) correctness (exact match, else the LLM judge) and (c) quality (rules, then the
LLM grade) over WebDancer's released trajectories, with SmolLM2-135M (llama.cpp server) as judge and grader.
The baseline, measured in the same run, is the time spent inside `LLMEndpoint.chat` (server plus HTTP client):
the part the funnel cannot save. The rest of the wall time is the funnel's own overhead (turn parsing, rules,
rendering for the grader, JSON repair).
Target: overhead under 10% of wall time.

    .venv/bin/python benchmarks/bench_funnel.py [--trajectories 20] [--observation-chars 400] [--json-format ...]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from webdancer_dagster.llm.client import ChatResult, EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.synthesis.funnel import FunnelConfig, run_funnel
from webdancer_dagster.synthesis.reference import load_reference_trajectories
from webdancer_dagster.synthesis.rejection import assess_attempt

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_OVERHEAD_SHARE = 0.10


class TimedEndpoint:
    """Delegates to an endpoint and sums the wall time spent inside `chat` (the LLM baseline)."""

    def __init__(self, endpoint: LLMEndpoint) -> None:
        self.endpoint = endpoint
        self.config = endpoint.config
        self.max_concurrency = endpoint.max_concurrency
        self.seconds = 0.0
        self.calls = 0
        self._lock = threading.Lock()

    def chat(self, messages: Sequence[Mapping[str, str]], **kwargs: Any) -> ChatResult:
        started = time.perf_counter()
        try:
            return self.endpoint.chat(messages, **kwargs)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - started
                self.calls += 1


def endpoint(base_url: str, model: str, role: str, max_tokens: int) -> TimedEndpoint:
    sampling = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=0)
    config = EndpointConfig(role=role, base_url=base_url, model=model, sampling=sampling, max_concurrency=1)
    return TimedEndpoint(LLMEndpoint(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trajectories", type=int, default=20, help="released trajectories to run (of 200)")
    parser.add_argument("--observation-chars", type=int, default=400, help="observation text the grader sees")
    parser.add_argument("--thought-chars", type=int, default=400, help="thought text the grader sees")
    parser.add_argument(
        "--json-format", default="object_with_schema", help="grader response_format (llama.cpp: object_with_schema)"
    )
    args = parser.parse_args()

    references = load_reference_trajectories(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl")
    # The file holds 100 e2hqa then 100 crawlqa records; interleave them for an even mix.
    by_tag = [[r for r in references if r.qa.reference_tag == tag] for tag in ("e2hqa", "crawlqa")]
    chosen = [r for pair in zip(*by_tag, strict=True) for r in pair][: args.trajectories]
    config = FunnelConfig(
        observation_chars=args.observation_chars, thought_chars=args.thought_chars, json_format=args.json_format
    )
    server_config = ModelServerConfig(model_path=str(find_smollm2_gguf()), n_ctx=8192)
    with ModelServer(server_config) as server:
        judge = endpoint(server.base_url, server.model, "judge", max_tokens=16)
        grader = endpoint(server.base_url, server.model, "judge", max_tokens=96)
        started = time.perf_counter()
        attempts = [assess_attempt(r.qa, r.trajectory, judge) for r in chosen]  # type: ignore[arg-type]
        result = run_funnel(attempts, grader, config)  # type: ignore[arg-type]
        wall = time.perf_counter() - started

    llm_s = judge.seconds + grader.seconds
    overhead = wall - llm_s
    share = overhead / wall
    methods = Counter(a.correctness.method for a in attempts if a.correctness is not None)
    summary = {
        "benchmark": "funnel",
        "model": server_config.model_name,
        "trajectories": len(chosen),
        "wall_s": round(wall, 3),
        "llm_s": round(llm_s, 3),
        "python_overhead_s": round(overhead, 3),
        "overhead_share": round(share, 4),
        "target_overhead_share": TARGET_OVERHEAD_SHARE,
        "meets_target": share < TARGET_OVERHEAD_SHARE,
        "trajectories_per_minute": round(len(chosen) / wall * 60, 2),
        "judge_calls": judge.calls,
        "grade_calls": grader.calls,
        "judge_methods": dict(methods),
        "stages": result.stage_table().to_dict("records"),
        "drops": result.drop_table().to_dict("records"),
        "config": config.model_dump(),
    }
    print(
        f"funnel over {len(chosen)} WebDancer trajectories with {server_config.model_name}: "
        f"{summary['trajectories_per_minute']} trajectories/min; wall {wall:.1f} s, in LLM calls {llm_s:.1f} s "
        f"({judge.calls} judge + {grader.calls} grade) -> Python overhead {share:.1%} of wall time "
        f"(target < {TARGET_OVERHEAD_SHARE:.0%}: {'met' if summary['meets_target'] else 'MISSED'}); "
        f"kept {len(result.kept)}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "funnel.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
