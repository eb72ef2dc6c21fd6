"""Evaluation speed on the offline stack: question-runs per minute with 4 concurrent agents against 1, and the
judge calls the exact-match shortcut saves.

SmolLM2-135M-Instruct on one local llama.cpp server answers the first MuSiQue questions over a local web built
from their paragraphs (the stack of `bench_agent.py`), greedy decoding, no response cache; the same server judges.
`evaluate` runs every question `--runs` times with `max_workers=1`, then with `max_workers=4`.
Ratio = question-runs/min with 4 workers / with 1.

    .venv/bin/python benchmarks/bench_eval.py [--questions 3] [--runs 1] [--max-llm-calls 3] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_agent import RESULTS, Stack, build_web, flush

from webdancer_dagster.evaluation.benchmarks import load_benchmark
from webdancer_dagster.evaluation.run import evaluate
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, SamplingParams
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.warehouse import resolve_home
from webdancer_dagster.web.server import SiteServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=3, help="MuSiQue questions (the first N of the train set)")
    parser.add_argument("--runs", type=int, default=1, help="runs per question")
    parser.add_argument("--max-llm-calls", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=96, help="per policy turn and per extraction")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--server-arg", action="append", default=[], help="extra llama_cpp.server argument")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    questions = load_benchmark("musique", DATA_DIR)[: args.questions]
    # The site is built from the questions' own paragraphs, as the benchmark web of a real run would hold them.
    records = json.loads((DATA_DIR / "musique" / "musique_train_100.json").read_text())[: args.questions]
    gguf = find_smollm2_gguf()
    tokenizer = load_tokenizer(str(gguf), str(resolve_home() / "tokenizers"))
    timings: dict[int, float] = {}
    methods: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        hosts, index = build_web(records, Path(tmp))
        server_config = ModelServerConfig(model_path=str(gguf), n_ctx=args.n_ctx, extra_args=tuple(args.server_arg))
        with SiteServer(hosts) as web, ModelServer(server_config) as server:
            stack = Stack(server, web, hosts, index, tokenizer, args)
            agent = stack.agent(cache=None)
            judge_config = EndpointConfig(
                role="judge", base_url=server.base_url, model=server.model, timeout_s=600, max_concurrency=4,
                sampling=SamplingParams(temperature=0.0, max_tokens=16),
            )  # fmt: skip
            judge = LLMEndpoint(judge_config)
            for workers in (1, 4):
                flush(server)
                started = time.perf_counter()
                rows = evaluate(
                    questions,
                    lambda question, run: agent.run(question, sample_index=run),
                    judge,
                    runs=args.runs,
                    max_workers=workers,
                )
                timings[workers] = time.perf_counter() - started
                methods.update(row["judge_method"] for row in rows)
                assert len(rows) == len(questions) * args.runs

    jobs = len(questions) * args.runs
    per_min = {workers: jobs / seconds * 60 for workers, seconds in timings.items()}
    judged = methods["exact"] + methods["llm"]
    summary = {
        "benchmark": "eval",
        "model": server.model,
        "server": "llama_cpp (llama-cpp-python: one request at a time)",
        "question_runs": jobs,
        "sequential_s": round(timings[1], 2),
        "concurrent_4_s": round(timings[4], 2),
        "question_runs_per_min_1": round(per_min[1], 2),
        "question_runs_per_min_4": round(per_min[4], 2),
        "ratio": round(per_min[4] / per_min[1], 3),
        "judge_methods": dict(methods),
        "judge_calls_saved_by_exact_match": methods["exact"],
        "judge_calls_saved_share": round(methods["exact"] / judged, 3) if judged else None,
        "settings": {
            "questions": len(questions),
            "runs": args.runs,
            "max_llm_calls": args.max_llm_calls,
            "max_tokens": args.max_tokens,
            "n_ctx": args.n_ctx,
            "server_args": args.server_arg,
        },
    }
    print(
        f"{jobs} question-runs: 1 worker {per_min[1]:.2f}/min ({timings[1]:.1f}s), 4 workers {per_min[4]:.2f}/min "
        f"({timings[4]:.1f}s) -> ratio {per_min[4] / per_min[1]:.2f}x; judge: {dict(methods)} "
        f"({methods['exact']} calls saved by exact match)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
