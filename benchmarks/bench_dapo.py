"""DAPO: how much of the generated text reaches a gradient step after dynamic sampling, and what rollouts cost.

A tiny Llama with the real SmolLM2 tokenizer (or the model given with `--model`) is taught to search once and then
give one of two answers with equal odds, so its groups of rollouts sometimes agree (dropped by dynamic sampling) and
sometimes do not (kept). DAPO then runs through the torchrun resource under Dagster on a local index, with the real
agent, a judge on a scripted local endpoint, oversampling and refill rounds.
Both figures are ratios measured within the run:

- trained token share = generated tokens of the groups that reached the loss / all generated tokens
  (dropped groups, surplus oversampled groups and masked fillers are the rest);
- rollout time share = seconds in rollouts (generation, tools, judging) / seconds of optimizer steps.

- rollout speed-up = generated tokens per rollout second with rollouts from the llama.cpp server (weights synced
  into it every step) / the same with transformers `generate` in the trainer's process (the baseline); the sync
  is timed on its own and is not rollout time.

It runs on the GPU when there is one (the launcher's `auto` device).

    .venv/bin/python benchmarks/bench_dapo.py [--steps 4] [--oversample 2.0] [--refill-rounds 2]
        [--backends local llama_cpp] [--model path/to/hf-folder --fit-steps 300 --fit-lr 5e-4]
"""

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import torch

from webdancer_dagster.agent.prompts import system_message, tool_response, user_message
from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.resources.torchrun import TorchrunLauncher
from webdancer_dagster.testing.scripted_llm import ScriptedLLMServer
from webdancer_dagster.testing.tiny_model import create_tiny_llama, fit_assistant_turns
from webdancer_dagster.training.config import DAPOHyperparameters, RolloutEnvironment, to_cli_args
from webdancer_dagster.web.search import LocalSearch, build_search_index, search_tool

RESULTS = Path(__file__).resolve().parent / "results"
DATE = dt.date(2025, 7, 18)
FACTS = [  # (question, query, page text, right answer, wrong answer)
    ("Which city is the capital of France?", "capital of France", "Paris is the capital of France.", "Paris", "Lyon"),
    ("Which city is the capital of Italy?", "capital of Italy", "Rome is the capital of Italy.", "Rome", "Milan"),
    ("Which city is the capital of Spain?", "capital of Spain", "Madrid is the capital of Spain.", "Madrid", "Seville"),
    ("Which city is the capital of Japan?", "capital of Japan", "Tokyo is the capital of Japan.", "Tokyo", "Osaka"),
]


class BenchDAPOConfig(dg.Config):
    args: list[str]
    output_dir: str


@dg.asset
def bench_rl_checkpoint(
    context: dg.AssetExecutionContext, config: BenchDAPOConfig, launcher: TorchrunLauncher
) -> dg.MaterializeResult:
    invocation = launcher.run(context, "webdancer_dagster.training.dapo", config.args, Path(config.output_dir) / "logs")
    return invocation.get_materialize_result()


def chat(question: str, query: str, observation: str, answer: str) -> list[dict[str, str]]:
    call = json.dumps({"name": "search", "arguments": {"query": [query]}})
    return [
        {"role": "system", "content": system_message(DATE)},
        {"role": "user", "content": user_message(question)},
        {"role": "assistant", "content": f"<think>\nI should search.\n</think>\n<tool_call>\n{call}\n</tool_call>"},
        {"role": "user", "content": tool_response(observation)},
        {"role": "assistant", "content": f"<think>\nThe page says it.\n</think>\n<answer>\n{answer}\n</answer>"},
    ]


def build_world(root: Path, start_model: Path | None, fit_steps: int, fit_lr: float) -> tuple[Path, Path, Path]:
    """The index, the RL pool and a model that answers each question right or wrong with equal odds."""
    docs = pd.DataFrame(
        [{"url": f"http://geo.webdancer.test/{i}.html", "title": f[1], "text": f[2], "site": "geo"}
         for i, f in enumerate(FACTS)]
    )  # fmt: skip
    build_search_index(docs, root / "index")
    search = LocalSearch(root / "index")
    chats = [
        chat(question, query, search_tool(search, [query]), answer)
        for question, query, _, right, wrong in FACTS
        for answer in (right, wrong)
    ]
    model = root / "model"
    if start_model is None:
        create_tiny_llama(model, find_smollm2_gguf(), seed=1)
    else:
        shutil.copytree(start_model, model)
    loss = fit_assistant_turns(model, chats, steps=fit_steps, learning_rate=fit_lr)
    print(f"policy taught its rollouts in {fit_steps} steps: loss {loss:.3f}")
    pool = root / "pool.jsonl"
    pool.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": f[0], "answers": [f[3]]}) + "\n" for i, f in enumerate(FACTS))
    )
    return root / "index", pool, model


def run_backend(
    backend: str, root: Path, index: Path, pool: Path, model: Path, judge_url: str, options: argparse.Namespace
) -> dict:
    """One DAPO run with rollouts from `backend`; its figures from the asset's metadata."""
    environment = RolloutEnvironment(
        search_index=str(index),
        judge=EndpointConfig(role="judge", base_url=judge_url, model="judge"),
        summarizer=EndpointConfig(role="summarizer", base_url=judge_url, model="summarizer"),
        current_date=DATE,
    )
    (root / "environment.json").write_text(environment.model_dump_json())
    hparams = DAPOHyperparameters(
        max_steps=options.steps,
        learning_rate=1e-4,
        temperature=0.5,
        max_completion_length=256,
        max_turn_tokens=64,
        max_llm_calls=3,
        oversample_factor=options.oversample,
        max_refill_rounds=options.refill_rounds,
        save_steps=1000,
        rollout_backend=backend,
    )
    output_dir = root / f"rl-{backend}"
    args = [
        *["--train_file", str(pool), "--environment_file", str(root / "environment.json")],
        *["--model_dir", str(model), "--output_dir", str(output_dir), *to_cli_args(hparams)],
    ]
    started = time.perf_counter()
    result = dg.materialize(
        [bench_rl_checkpoint],
        resources={"launcher": TorchrunLauncher(nproc_per_node=1)},
        run_config={"ops": {"bench_rl_checkpoint": {"config": {"args": args, "output_dir": str(output_dir)}}}},
    )
    wall = time.perf_counter() - started
    [event] = result.asset_materializations_for_node("bench_rl_checkpoint")
    metadata = {key: value.value for key, value in event.metadata.items()}
    rollout_seconds = metadata["rollout_time_share"] * sum(metadata["step_seconds"])
    return {
        "rollout_backend": backend,
        "steps": metadata["steps"],
        "groups_sampled": metadata["groups_sampled"],
        "dropped_group_share": metadata["dropped_group_share"],
        "tokens_generated": metadata["tokens_generated"],
        "tokens_trained": metadata["tokens_trained"],
        "trained_token_share": metadata["trained_token_share"],
        "rollout_time_share": metadata["rollout_time_share"],
        "sync_time_share": metadata["sync_time_share"],
        "sync_seconds": metadata["sync_seconds"],
        "seconds_per_step": metadata["seconds_per_step"],
        "generated_tokens_per_rollout_s": round(metadata["tokens_generated"] / rollout_seconds, 1),
        "launch_wall_seconds": round(wall, 2),
        "rewards": [entry.get("reward") for entry in json.loads(Path(metadata["train_history_file"]).read_text())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--oversample", type=float, default=2.0)
    parser.add_argument("--refill-rounds", type=int, default=2)
    parser.add_argument("--model", type=Path, help="HF model folder to start from; default: a tiny random Llama")
    parser.add_argument("--fit-steps", type=int, default=150, help="steps teaching the model its rollouts")
    parser.add_argument("--fit-lr", type=float, default=3e-3, help="learning rate of that teaching")
    parser.add_argument(
        "--backends", nargs="+", default=["local", "llama_cpp"], help="rollout backends to run, the first the baseline"
    )
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dapo-") as tmp, ScriptedLLMServer(lambda _: "Incorrect") as judge:
        root = Path(tmp)
        index, pool, model = build_world(root, options.model, options.fit_steps, options.fit_lr)
        runs = [run_backend(backend, root, index, pool, model, judge.base_url, options) for backend in options.backends]
    baseline = runs[0]
    speedups = {
        run["rollout_backend"]: round(
            run["generated_tokens_per_rollout_s"] / max(baseline["generated_tokens_per_rollout_s"], 1e-9), 2
        )
        for run in runs[1:]
    }
    report = {
        "model": str(options.model) if options.model else "tiny random Llama (2 layers, 64 wide, SmolLM2 tokenizer)",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "oversample_factor": options.oversample,
        "max_refill_rounds": options.refill_rounds,
        "runs": runs,
        "rollout_speedup_vs_" + baseline["rollout_backend"]: speedups,
    }
    print(json.dumps(report, indent=1))
    for run in runs:
        print(
            f"{run['rollout_backend']}: trained token share {run['trained_token_share']:.2f} "
            f"({run['tokens_trained']} of {run['tokens_generated']} generated tokens reached a gradient step; "
            f"{run['dropped_group_share']:.0%} of {run['groups_sampled']} groups dropped); "
            f"rollout share of step time {run['rollout_time_share']:.2f}, weight sync {run['sync_time_share']:.2f}; "
            f"{run['generated_tokens_per_rollout_s']} generated tokens per rollout second on {report['device']}"
        )
    for backend, ratio in speedups.items():
        print(f"generated tokens per rollout second, {backend} / {baseline['rollout_backend']}: {ratio:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dapo.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
