"""Stage 6: every model scored on every benchmark the same way, one partition per (model, benchmark).

Each finished run is appended to `eval_runs` before the next starts, so a killed or failed materialization
resumes where it stopped; a changed agent or judge setting (the run fingerprint) starts the partition afresh.
`scores` holds one row per partition, and every materialization shows the comparison across all of them.
"""

import base64
import datetime as dt
import hashlib
import json
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.assets.corpus import search_index
from webdancer_dagster.evaluation.benchmarks import BENCHMARKS, load_benchmark
from webdancer_dagster.evaluation.metrics import score_runs
from webdancer_dagster.evaluation.plots import comparison_chart, comparison_table
from webdancer_dagster.evaluation.run import evaluate
from webdancer_dagster.llm.client import EndpointConfig
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.llm import LLMEndpointResource
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.warehouse import WarehouseStore, markdown_preview
from webdancer_dagster.web.visit import FetchPolicy

MODELS = ["base"]  # "base": the policy endpoint as configured (the offline SmolLM2 by default)
OFFLINE_BENCHMARKS = [name for name, source in BENCHMARKS.items() if source.offline]
RUNS_TABLE, SCORES_TABLE = "eval_runs", "scores"

benchmark_partitions = dg.MultiPartitionsDefinition(
    {
        "model": dg.StaticPartitionsDefinition(MODELS),
        "benchmark": dg.StaticPartitionsDefinition(OFFLINE_BENCHMARKS),
    }
)


class BenchmarkScoresConfig(dg.Config):
    max_questions: int | None = Field(default=3, description="Score the first N questions (smoke); empty: all.")
    runs: int = Field(default=3, description="k: runs per question for Pass@1, Pass@k and Cons@k.")
    max_llm_calls: int = Field(default=8, description="Assistant turns per run.")
    n_ctx: int = Field(default=8192, description="The policy's context window in tokens.")
    cot_mode: str = Field(default="short", description="'short' or 'long' (how the policy's turns are prompted).")
    tokenizer: str | None = Field(
        default=None, description="Model folder or GGUF whose tokenizer counts context; default: SmolLM2's GGUF."
    )
    data_dir: str = Field(default=str(DATA_DIR), description="Folder holding the benchmark files.")
    max_workers: int = Field(default=1, description="Runs answered in parallel.")


def _fingerprint(config: BenchmarkScoresConfig, policy: EndpointConfig, judge: EndpointConfig) -> str:
    """Rows from another agent or judge setting are not this evaluation's: resuming must not mix them in.
    Endpoints count by model and sampling, not URL: the local server takes a new free port on every start."""
    settings = {
        "max_llm_calls": config.max_llm_calls,
        "n_ctx": config.n_ctx,
        "cot_mode": config.cot_mode,
        "tokenizer": config.tokenizer,
        "policy": [policy.model, policy.sampling.model_dump()],
        "judge": [judge.model, judge.sampling.model_dump()],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _stored_runs(store: WarehouseStore, partition: str) -> pd.DataFrame:
    if not store.table_exists(RUNS_TABLE):
        return pd.DataFrame()
    return store.read_table(RUNS_TABLE, '"partition" = ?', [partition])


@dg.asset(
    deps=[search_index],
    partitions_def=benchmark_partitions,
    group_name="evaluation",
    kinds={"python", "duckdb"},
)
def benchmark_scores(
    context: dg.AssetExecutionContext,
    config: BenchmarkScoresConfig,
    warehouse: Warehouse,
    web: WebEnvironment,
    policy: LLMEndpointResource,
    summarizer: LLMEndpointResource,
    judge: LLMEndpointResource,
) -> dg.MaterializeResult:
    """Each question answered `runs` times by the agent over the whole local web, every answer judged and
    stored with the raw judge reply; Pass@1 / Pass@k / Cons@k and the comparison with every scored partition."""
    keys = context.partition_key.keys_by_dimension
    model, benchmark = keys["model"], keys["benchmark"]
    partition = context.partition_key
    if config.cot_mode not in ("short", "long"):
        raise ValueError(f"cot_mode must be 'short' or 'long', got {config.cot_mode!r}")
    questions = load_benchmark(benchmark, Path(config.data_dir))[: config.max_questions]
    store = warehouse.store()
    policy_endpoint, judge_endpoint = policy.endpoint(), judge.endpoint()
    policy_name = f"{policy_endpoint.config.model} @ {policy_endpoint.config.base_url}"
    judge_name = f"{judge_endpoint.config.model} @ {judge_endpoint.config.base_url}"
    fingerprint = _fingerprint(config, policy_endpoint.config, judge_endpoint.config)

    stored = _stored_runs(store, partition)
    if len(stored) and (stored["fingerprint"] != fingerprint).any():
        context.log.info("%s: settings changed; dropping %d stored runs", partition, len(stored))
        kept = stored[stored["fingerprint"] == fingerprint]
        store.write_tables(partition=("partition", partition), partition_replacements={RUNS_TABLE: kept})
        stored = kept
    done = {(row.question_id, int(row.run)) for row in stored.itertuples()}
    wanted = {(item.id, run) for item in questions for run in range(config.runs)}
    resumed = len(done & wanted)

    def store_row(row: dict) -> None:
        frame = pd.DataFrame([{
            "partition": partition, "model": model, "benchmark": benchmark, **row,
            "fingerprint": fingerprint, "policy": policy_name, "judge": judge_name,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        }])  # fmt: skip
        store.write_tables(appends={RUNS_TABLE: frame})

    if len(wanted - done):
        sites = store.read_table("sites")
        tokenizer = load_tokenizer(config.tokenizer or str(find_smollm2_gguf()), str(store.home / "tokenizers"))
        with web.serve() as proxy_url:
            agent = build_web_agent(
                policy_endpoint,
                summarizer.endpoint(),
                web.search(),
                FetchPolicy(allowed_hosts=frozenset(sites["host"]), proxy_url=proxy_url),
                tokenizer,
                n_ctx=config.n_ctx,
                max_llm_calls=config.max_llm_calls,
                cot_mode=config.cot_mode,
            )
            evaluate(
                questions,
                lambda question, run: agent.run(question, sample_index=run),
                judge_endpoint,
                runs=config.runs,
                done=done,
                on_result=store_row,
                max_workers=config.max_workers,
            )

    runs = _stored_runs(store, partition)
    runs = runs[[(qid, int(run)) in wanted for qid, run in zip(runs["question_id"], runs["run"], strict=True)]]
    scores = score_runs(runs, config.runs)
    score_row = pd.DataFrame([{
        "partition": partition, "model": model, "benchmark": benchmark, **scores.as_row(),
        "search_backend": web.search_backend, "policy": policy_name, "judge": judge_name,
        "fingerprint": fingerprint, "scored_at": dt.datetime.now(dt.UTC).isoformat(),
    }])  # fmt: skip
    writes = store.write_tables(partition=("partition", partition), partition_replacements={SCORES_TABLE: score_row})
    all_scores = store.read_table(SCORES_TABLE)
    chart_path = store.artifact_dir("evaluation") / "scores.png"
    chart = comparison_chart(all_scores, chart_path)
    chart_md = f"![scores](data:image/png;base64,{base64.b64encode(chart).decode()})"
    context.log.info(
        "%s: Pass@1 %.3f Pass@%d %.3f Cons@%d %.3f over %d questions (%d runs resumed)",
        partition, scores.pass_at_1, config.runs, scores.pass_at_k, config.runs, scores.cons_at_k,
        scores.questions, resumed,
    )  # fmt: skip
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(runs),
            "questions": scores.questions,
            "runs_per_question": config.runs,
            "runs_resumed": resumed,
            "pass_at_1": round(scores.pass_at_1, 4),
            f"pass_at_{config.runs}": round(scores.pass_at_k, 4),
            f"cons_at_{config.runs}": round(scores.cons_at_k, 4),
            "mean_actions": round(scores.mean_actions, 2),
            "format_error_rate": round(scores.format_error_rate, 4),
            "mean_tokens": round(scores.mean_tokens, 1),
            "judge_flagged": scores.judge_flagged,
            "exact_match": round(scores.exact_match, 4),
            "f1": round(scores.f1, 4),
            "terminations": dg.MetadataValue.json(scores.terminations),
            "policy": policy_name,
            "judge": judge_name,
            "search_backend": web.search_backend,
            "policy_usage": dg.MetadataValue.json(policy.usage_metadata()),
            "judge_usage": dg.MetadataValue.json(judge.usage_metadata()),
            "preview": dg.MetadataValue.md(
                markdown_preview(runs[["question_id", "run", "answer", "termination", "correct", "judge_method"]])
            ),
            "comparison": dg.MetadataValue.md(comparison_table(all_scores).to_markdown(index=False)),
            "comparison_chart": dg.MetadataValue.md(chart_md),
            "comparison_chart_path": dg.MetadataValue.path(str(chart_path)),
            "scores_parquet": dg.MetadataValue.path(str(writes[SCORES_TABLE].parquet_path)),
        },
    )
