"""Stage 6: every model scored on every benchmark the same way, one partition per (model, benchmark).

Models: `base` (the policy endpoint as configured), `sft` and `rl` (their recorded checkpoints, served locally),
and every endpoint declared in the evaluation registry. Benchmarks: MuSiQue and `synth_monitor` (the monitoring
split of the synthesized QA pairs, never trained on) on the local web, the five question-only sets (live web with
a search key, else closed-book), and every declared benchmark.
Each finished run is appended to `eval_runs` before the next starts, so a killed or failed materialization
resumes where it stopped; a changed agent or judge setting (the run fingerprint) starts the partition afresh.
`scores` holds one row per partition, and every materialization shows the comparison across all of them.
"""

import base64
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.assets.automation import score_new_checkpoints
from webdancer_dagster.assets.check_results import warn_unless
from webdancer_dagster.assets.corpus import search_index
from webdancer_dagster.assets.qa import SYNTHESIZED_TABLES, read_pairs
from webdancer_dagster.assets.registries import REGISTRY
from webdancer_dagster.concurrency import LLM_POOL
from webdancer_dagster.evaluation.benchmarks import BenchmarkQuestion, load_benchmark, monitor_questions
from webdancer_dagster.evaluation.metrics import (
    audit_scores,
    credits_without_overlap,
    turn_budget_shortfalls,
    unanswered_partitions,
)
from webdancer_dagster.evaluation.models import (
    GGUF_CACHE_DIR,
    checkpoint_server_config,
    recorded_checkpoint,
    turn_budget,
)
from webdancer_dagster.evaluation.partition import (
    RUNS_TABLE,
    SCORES_TABLE,
    PartitionEvaluation,
    PartitionScores,
    run_fingerprint,
)
from webdancer_dagster.evaluation.plots import NO_SCORES, comparison_chart, comparison_table
from webdancer_dagster.evaluation.registry import ModelSpec
from webdancer_dagster.evaluation.run import evaluate
from webdancer_dagster.evaluation.settings import ClosedBookSearch, Setting, benchmark_setting
from webdancer_dagster.llm.client import EndpointConfig, LLMEndpoint, TokenUsage
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.llm import LLMEndpointResource
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.shared.judge import judge_answer
from webdancer_dagster.warehouse import WarehouseStore, markdown_preview
from webdancer_dagster.web.scope import LocalSites, WebScope
from webdancer_dagster.web.search import SearchBackend

MODELS = list(REGISTRY.models)
BENCHMARK_NAMES = list(REGISTRY.benchmarks)
OFFLINE_BENCHMARKS = [name for name, source in REGISTRY.benchmarks.items() if source.offline]
QUESTION_ONLY_BENCHMARKS = [name for name in BENCHMARK_NAMES if name not in OFFLINE_BENCHMARKS]
BENCHMARK_SCORES_DESCRIPTION = (
    "Each question answered `runs` times by the model's agent (local web, live web or closed-book), every answer "
    "judged and stored with the raw judge reply; Pass@1 / Pass@k / Cons@k and the comparison with every partition."
    + (
        f"\n\nMissing partitions of {', '.join(QUESTION_ONLY_BENCHMARKS)} are expected: the profiles score "
        f"{', '.join(OFFLINE_BENCHMARKS)} (answers on the local web), and these question-only sets run on the live "
        "web when `SERPER_API_KEY` holds a key, closed-book otherwise. Fill one with "
        f"`webdancer eval --model base --benchmark {QUESTION_ONLY_BENCHMARKS[0]}`, or select its partitions here and "
        "Materialize."
        if QUESTION_ONLY_BENCHMARKS
        else ""
    )
)

benchmark_partitions = dg.MultiPartitionsDefinition(
    {
        "model": dg.StaticPartitionsDefinition(MODELS),
        "benchmark": dg.StaticPartitionsDefinition(BENCHMARK_NAMES),
    }
)


class BenchmarkScoresConfig(dg.Config):
    max_questions: int | None = Field(default=3, description="Score the first N questions (smoke); empty: all.")
    runs: int = Field(default=3, description="k: runs per question for Pass@1, Pass@k and Cons@k.")
    max_llm_calls: int = Field(default=8, description="Assistant turns per run.")
    max_turn_tokens: int | None = Field(
        default=None,
        description="Tokens per assistant turn; empty: the policy role's max_tokens, raised for sft/rl to the p95 "
        "assistant turn of the SFT set behind the checkpoint (plus 25%).",
    )
    n_ctx: int = Field(default=8192, description="The policy's context window in tokens.")
    cot_mode: str = Field(default="short", description="'short' or 'long' (how the policy's turns are prompted).")
    tokenizer: str | None = Field(
        default=None,
        description="Model folder or GGUF whose tokenizer counts context; default: the checkpoint's own for sft/rl, "
        "SmolLM2's GGUF otherwise.",
    )
    gguf_outtype: str = Field(
        default="f16",
        description="sft/rl on llama.cpp: weights of the GGUF export ('f32', 'f16' or 'q8_0'; cached by checkpoint).",
    )
    server_threads: int | None = Field(
        default=None,
        ge=1,
        description="On llama.cpp: CPU threads of a server of the scored model's own (a checkpoint's always has one; "
        "the base model gets one when this is set); empty: the llm_server's. Where scoring has the machine to "
        "itself (the learning profile), every core: the agent waits for each reply, and on 2 cores 2 threads "
        "answered the same calls 1.8x faster than 1.",
    )
    server_parallel: int | None = Field(
        default=None,
        ge=1,
        description="On llama.cpp: serve the scored model from llama.cpp's own llama-server (`make llama-server`) "
        "with this many slots decoded together, and answer as many runs at once (or max_workers, if more); empty: "
        "llama-cpp-python's server, one request at a time. On 2 cores, 4 slots scored the learning profile's SFT "
        "model 1.32x faster than one at a time (300 runs; 1.58x on 24): runs share decoding, not prompt reading.",
    )
    data_dir: str = Field(default=str(DATA_DIR), description="Folder holding the benchmark files.")
    max_workers: int = Field(default=1, description="Runs answered in parallel.")

    @property
    def workers(self) -> int:
        """Runs answered at once: one per llama-server slot, unless max_workers asks for more."""
        return max(self.max_workers, self.server_parallel or 1)


class _Policy:
    """The model under evaluation: its endpoint config now, its own server (if any) only once there is work."""

    def __init__(
        self,
        endpoint_config: EndpointConfig,
        tokenizer: str,
        shared: LLMEndpointResource | None = None,
        server: Callable[[], ModelServerConfig] | None = None,
        trained_turn_tokens_p95: int | None = None,
    ) -> None:
        self.config, self.tokenizer, self._shared, self.server_config = endpoint_config, tokenizer, shared, server
        self.trained_turn_tokens_p95 = trained_turn_tokens_p95
        self.usage = TokenUsage()

    @property
    def max_turn_tokens(self) -> int:
        return self.config.sampling.max_tokens

    @property
    def name(self) -> str:
        base_url = "a local server" if self.server_config is not None else self.config.base_url
        return f"{self.config.model} @ {base_url}"

    @contextmanager
    def endpoint(self) -> Iterator[LLMEndpoint]:
        if self._shared is not None:
            yield self._shared.endpoint()
            return
        with ExitStack() as stack:
            config = self.config
            if self.server_config is not None:
                server = stack.enter_context(ModelServer(self.server_config()))
                config = config.model_copy(update={"base_url": server.base_url})
            endpoint = LLMEndpoint(config)
            stack.callback(endpoint.close)
            self.usage = endpoint.usage
            yield endpoint

    def usage_metadata(self) -> dict[str, int]:
        return self._shared.usage_metadata() if self._shared is not None else self.usage.as_metadata()


def benchmark_questions(benchmark: str, data_dir: Path, store: WarehouseStore) -> list[BenchmarkQuestion]:
    """A benchmark's questions: from its file, or for `synth_monitor` the monitoring split of the QA tables."""
    if REGISTRY.benchmarks[benchmark].format == "warehouse":
        return monitor_questions(read_pairs(store, [t for t in SYNTHESIZED_TABLES if store.table_exists(t)]))
    return load_benchmark(benchmark, data_dir, REGISTRY.benchmarks)


def resolve_policy(
    spec: ModelSpec,
    policy: LLMEndpointResource,
    store: WarehouseStore,
    config: BenchmarkScoresConfig,
) -> _Policy:
    """`base`: the policy role as configured; `sft`/`rl`: the recorded checkpoint behind its own server (the judge
    and summarizer stay on theirs); a declared endpoint: its URL, model and key variable with the policy's sampling.
    Each with its turn budget (`turn_budget`). Raises `CheckpointMissingError` naming the asset to materialize when
    a checkpoint was never trained."""
    default_tokenizer = config.tokenizer or str(find_smollm2_gguf())

    def budgeted(endpoint: EndpointConfig, trained_p95: int | None = None) -> EndpointConfig:
        tokens = turn_budget(config.max_turn_tokens, endpoint.sampling.max_tokens, trained_p95)
        return endpoint.model_copy(update={"sampling": endpoint.sampling.model_copy(update={"max_tokens": tokens})})

    if spec.kind == "base":
        own_server = config.server_threads is not None or config.server_parallel is not None
        if own_server and policy.base_url is None and policy.server.mode == "llama_cpp":
            return _own_base_server(policy, config, budgeted, default_tokenizer)
        if config.max_turn_tokens is None:
            return _Policy(policy.endpoint().config, default_tokenizer, shared=policy)
        return _Policy(budgeted(policy.endpoint_config()), default_tokenizer)
    if spec.kind == "endpoint":
        endpoint = policy.endpoint_config(base_url=spec.base_url, model=spec.model, api_key_env=spec.api_key_env)
        return _Policy(budgeted(endpoint), default_tokenizer)
    checkpoint = recorded_checkpoint(store, str(spec.checkpoint_table))
    template = _scoring_server(policy.server.server_config(), config)  # llm_server's resources, unless set here
    engine = " on llama-server" if template.mode == "llama_server" else ""
    # Known before the server starts: the fingerprint needs the model id, not the URL.
    endpoint = policy.endpoint_config(base_url="http://127.0.0.1/v1", model=checkpoint.served_name).model_copy(
        update={"served_by": f"checkpoint sha256:{checkpoint.sha256} gguf {config.gguf_outtype}{engine}"}
    )
    return _Policy(
        budgeted(endpoint, checkpoint.trained_turn_tokens_p95),
        config.tokenizer or str(checkpoint.path),
        server=lambda: checkpoint_server_config(
            checkpoint,
            store.artifact_dir(GGUF_CACHE_DIR),
            template,
            config.gguf_outtype,  # type: ignore[arg-type]
        ),
        trained_turn_tokens_p95=checkpoint.trained_turn_tokens_p95,
    )


def _scoring_server(template: ModelServerConfig, config: BenchmarkScoresConfig) -> ModelServerConfig:
    """The scored model's server: `template` (llm_server's), with `server_threads`, and on llama.cpp
    `server_parallel` slots of llama-server."""
    if config.server_threads is not None:
        template = template.model_copy(update={"n_threads": config.server_threads})
    if config.server_parallel is not None and template.mode != "vllm":
        template = template.model_copy(update={"mode": "llama_server", "n_parallel": config.server_parallel})
    return template


def _own_base_server(
    policy: LLMEndpointResource,
    config: BenchmarkScoresConfig,
    budgeted: Callable[[EndpointConfig], EndpointConfig],
    tokenizer: str,
) -> _Policy:
    """The base model behind a server of its own (the llm_server keeps serving the summarizer and the judge): the
    same GGUF and model id, so its runs keep their fingerprint, and on llama-cpp-python their cached replies too."""
    server = _scoring_server(policy.server.server_config(), config)
    endpoint = policy.endpoint_config(base_url="http://127.0.0.1/v1", model=server.model_name)
    endpoint = endpoint.model_copy(update={"served_by": server.served_by()})
    return _Policy(budgeted(endpoint), tokenizer, server=lambda: server)


def _agent_settings(config: BenchmarkScoresConfig, web: WebEnvironment, setting: Setting) -> dict[str, object]:
    """The agent settings a run's fingerprint covers (besides the endpoints and the setting). On the local web that
    includes what its index holds: runs over other pages are not comparable, so a changed crawl starts afresh."""
    settings = {key: getattr(config, key) for key in ("max_llm_calls", "n_ctx", "cot_mode", "tokenizer")}
    settings["search_results_per_query"] = web.search_results_per_query
    if setting == "local_web":
        settings["local_web_content"] = web.local_index_content()
    return settings


@contextmanager
def _web_tools(
    setting: Setting, web: WebEnvironment, live: SearchBackend | None, store: WarehouseStore
) -> Iterator[tuple[SearchBackend, WebScope, int]]:
    """Search, the reachable hosts of the setting (every local site behind its proxy, the live web, or nothing) and
    the results a query search returns."""
    results = web.search_results_per_query
    if setting == "local_web":
        with web.serve() as proxy_url:
            yield web.local_search(), WebScope.every_local_site(LocalSites.of_home(store), proxy_url), results
    elif setting == "live_web" and live is not None:
        yield live, WebScope.live(frozenset(web.private_network_hosts)), results
    else:
        yield ClosedBookSearch(), WebScope.closed_book(), results


def _answer_pending(
    evaluation: PartitionEvaluation,
    questions: list[BenchmarkQuestion],
    model_policy: _Policy,
    tools: AbstractContextManager[tuple[SearchBackend, WebScope, int]],
    summarizer: LLMEndpoint,
    judge: LLMEndpoint | None,
    config: BenchmarkScoresConfig,
) -> None:
    """Run the agent on every (question, run) not stored yet; each row is stored the moment it is judged."""
    tokenizer = load_tokenizer(model_policy.tokenizer, str(evaluation.store.home / "tokenizers"))
    with tools as (search, scope, results_per_query), model_policy.endpoint() as policy_endpoint:
        agent = build_web_agent(
            policy_endpoint, summarizer, search, scope, tokenizer,
            n_ctx=config.n_ctx, max_llm_calls=config.max_llm_calls, cot_mode=config.cot_mode,
            search_results_per_query=results_per_query,
        )  # fmt: skip
        evaluate(
            questions,
            lambda question, run: agent.run(question, sample_index=run),
            judge,
            runs=config.runs,
            done=evaluation.done,
            on_result=evaluation.store_run,
            max_workers=config.workers,
        )


@dg.asset(
    # sft_checkpoint and rl_checkpoint for lineage: the sft and rl partitions score what they recorded; the QA
    # assets hold synth_monitor's questions.
    deps=[search_index, "sft_checkpoint", "rl_checkpoint", "crawlqa_pairs", "e2hqa_pairs"],
    partitions_def=benchmark_partitions,
    group_name="evaluation",
    kinds={"python", "duckdb"},
    description=BENCHMARK_SCORES_DESCRIPTION,
    metadata={
        "scored_offline": dg.MetadataValue.json(OFFLINE_BENCHMARKS),
        "question_only": dg.MetadataValue.json(QUESTION_ONLY_BENCHMARKS),
    },
    # A new checkpoint is scored on the local-web benchmarks by itself; the question-only sets only when asked.
    automation_condition=score_new_checkpoints({"sft": "sft_checkpoint", "rl": "rl_checkpoint"}, OFFLINE_BENCHMARKS),
    pool=LLM_POOL,
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
    """See BENCHMARK_SCORES_DESCRIPTION."""
    keys = context.partition_key.keys_by_dimension
    model, benchmark = keys["model"], keys["benchmark"]
    if config.cot_mode not in ("short", "long"):
        raise ValueError(f"cot_mode must be 'short' or 'long', got {config.cot_mode!r}")
    store = warehouse.store()
    questions = benchmark_questions(benchmark, Path(config.data_dir), store)[: config.max_questions]
    model_policy = resolve_policy(REGISTRY.models[model], policy, store, config)
    live = None if REGISTRY.benchmarks[benchmark].offline else web.live_search()
    setting = benchmark_setting(REGISTRY.benchmarks[benchmark], live is not None)
    judge_endpoint = judge.judge_endpoint()
    judge_config = judge_endpoint.config if judge_endpoint is not None else None
    fingerprint = run_fingerprint(_agent_settings(config, web, setting), model_policy.config, judge_config, setting)
    labels = {"model": model, "benchmark": benchmark, "setting": setting, "policy": model_policy.name}
    with PartitionEvaluation.locked(
        store, context.partition_key, fingerprint, questions, config.runs, {**labels, "judge": judge.judge_name()}
    ) as evaluation:
        if evaluation.pending:
            context.log.info("%s: %s setting, %d runs to go", context.partition_key, setting, evaluation.pending)
            tools = _web_tools(setting, web, live, store)
            _answer_pending(evaluation, questions, model_policy, tools, summarizer.endpoint(), judge_endpoint, config)
        evaluation.rejudge(partial(judge_answer, judge=judge_endpoint))
        search_backend = {"local_web": "local", "live_web": getattr(live, "name", "live"), "closed_book": "none"}
        result = evaluation.finish(
            search_backend=search_backend[setting],
            max_turn_tokens=model_policy.max_turn_tokens,
            trained_turn_tokens_p95=model_policy.trained_turn_tokens_p95,
            search_results_per_query=web.search_results_per_query,
        )
    context.log.info("%s: %s", context.partition_key, evaluation.summary(result.scores))
    return dg.MaterializeResult(metadata=_scores_metadata(result, evaluation, model_policy, judge, store, config))


def _scores_metadata(
    result: PartitionScores,
    evaluation: PartitionEvaluation,
    model_policy: _Policy,
    judge: LLMEndpointResource,
    store: WarehouseStore,
    config: BenchmarkScoresConfig,
) -> dict[str, object]:
    """The partition's scores and rates, what produced them, a preview of its runs and the comparison chart."""
    scores, runs, labels = result.scores, result.runs, evaluation.labels
    chart_path = store.artifact_dir("evaluation") / "scores.png"
    chart = comparison_chart(result.all_scores, chart_path)
    chart_md = f"![scores](data:image/png;base64,{base64.b64encode(chart).decode()})"
    return {
        "dagster/row_count": len(runs),
        "questions": scores.questions,
        "runs_per_question": config.runs,
        "runs_resumed": evaluation.resumed,
        "runs_rejudged": evaluation.rejudged,
        "pass_at_1": round(scores.pass_at_1, 4),
        f"pass_at_{config.runs}": round(scores.pass_at_k, 4),
        f"cons_at_{config.runs}": round(scores.cons_at_k, 4),
        "mean_actions": round(scores.mean_actions, 2),
        "format_valid_rate": round(scores.format_valid_rate, 4),
        "answered_rate": round(scores.answered_rate, 4),
        "format_error_rate": round(scores.format_error_rate, 4),
        "mean_tokens": round(scores.mean_tokens, 1),
        "judge_flagged": scores.judge_flagged,
        "exact_match": round(scores.exact_match, 4),
        "f1": round(scores.f1, 4),
        "terminations": dg.MetadataValue.json(scores.terminations),
        "setting": labels["setting"],
        "max_turn_tokens": model_policy.max_turn_tokens,
        "search_results_per_query": int(result.row["search_results_per_query"]),
        "policy": labels["policy"],
        "judge": labels["judge"],
        "search_backend": result.row["search_backend"],
        "policy_usage": dg.MetadataValue.json(model_policy.usage_metadata()),
        "judge_usage": dg.MetadataValue.json(judge.usage_metadata()),
        "preview": dg.MetadataValue.md(
            markdown_preview(runs[["question_id", "run", "answer", "termination", "correct", "judge_method"]])
        ),
        "comparison": dg.MetadataValue.md(comparison_table(result.all_scores).to_markdown(index=False)),
        "comparison_chart": dg.MetadataValue.md(chart_md),
        "comparison_chart_path": dg.MetadataValue.path(str(chart_path)),
        "scores_parquet": dg.MetadataValue.path(str(result.scores_write.parquet_path)),
    }


MAX_JUDGE_UNREADABLE_SHARE = 0.2
MAX_CREDITS_WITHOUT_OVERLAP_SHARE = 0.5
MIN_CREDITS_TO_JUDGE_THE_JUDGE = 3


def _run_columns(store: WarehouseStore, columns: list[str]) -> pd.DataFrame:
    """The stored runs with only the columns a check needs: the trajectories would be most of the bytes."""
    return store.query("SELECT " + ", ".join(f'"{column}"' for column in columns) + f' FROM "{RUNS_TABLE}"')


@dg.asset_check(
    asset=benchmark_scores,
    description="Every scored question has k runs, Pass@1/Pass@k/Cons@k and rates lie in [0, 1] and agree, and at "
    f"most {MAX_JUDGE_UNREADABLE_SHARE:.0%} of judge replies were unreadable, in every scored partition.",
)
def benchmark_scores_are_sound(warehouse: Warehouse) -> dg.AssetCheckResult:
    store = warehouse.store()
    if not store.table_exists(SCORES_TABLE):
        return dg.AssetCheckResult(passed=False, metadata={"actual": "no scores table"})
    scores = store.read_table(SCORES_TABLE)
    runs = _run_columns(store, ["partition", "fingerprint", "question_id", "judge_flag"])
    problems = audit_scores(scores, runs, MAX_JUDGE_UNREADABLE_SHARE)
    return dg.AssetCheckResult(
        passed=problems.empty,
        metadata={
            "partitions_checked": len(scores),
            "expected_problems": 0,
            "actual_problems": len(problems),
            "max_judge_unreadable_share": MAX_JUDGE_UNREADABLE_SHARE,
            "problems": dg.MetadataValue.md(markdown_preview(problems, rows=20) if len(problems) else "none"),
        },
    )


@dg.asset_check(
    asset=benchmark_scores,
    description="A warning when, in a scored partition, more than "
    f"{MAX_CREDITS_WITHOUT_OVERLAP_SHARE:.0%} of the answers the LLM judge accepted (at least "
    f"{MIN_CREDITS_TO_JUDGE_THE_JUDGE}) share no word with any gold answer: the judge is too weak to trust.",
    blocking=False,
)
def benchmark_judge_credits_are_supported(warehouse: Warehouse) -> dg.AssetCheckResult:
    store = warehouse.store()
    if not store.table_exists(SCORES_TABLE):
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata={"actual": "no scores"})
    runs = _run_columns(store, ["partition", "fingerprint", "judge_method", "correct", "f1"])
    credits = credits_without_overlap(
        store.read_table(SCORES_TABLE), runs, MIN_CREDITS_TO_JUDGE_THE_JUDGE, MAX_CREDITS_WITHOUT_OVERLAP_SHARE
    )
    doubtful = sorted(credits.loc[credits["doubtful"], "partition"])
    return dg.AssetCheckResult(
        passed=not doubtful,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "partitions_checked": len(credits),
            "doubtful_partitions": doubtful,
            "max_share": MAX_CREDITS_WITHOUT_OVERLAP_SHARE,
            "credits": dg.MetadataValue.md(markdown_preview(credits, rows=20) if len(credits) else "none"),
        },
    )


@dg.asset_check(
    asset=benchmark_scores,
    description="A warning when a scored partition's turn budget (max tokens per assistant turn) is below the p95 "
    "assistant-turn length of the SFT set behind the checkpoint it scores: the budget would cut trained turns.",
    blocking=False,
)
def benchmark_turn_budget_fits_training(warehouse: Warehouse) -> dg.AssetCheckResult:
    return _flag_partitions(
        warehouse,
        turn_budget_shortfalls,
        lambda row: (
            f"{row.partition}: a turn budget of {row.max_turn_tokens} tokens is below the "
            f"{row.trained_turn_tokens_p95} tokens of the p95 assistant turn its checkpoint was trained on, so trained "
            "turns are cut (format errors)."
        ),
        "lets its model write the turns it was trained on",
        ("partitions_below_trained_p95", "shortfalls"),
    )


def _scores_table(warehouse: Warehouse) -> pd.DataFrame | None:
    """Every scored partition's row of the `scores` table; None before the first one was scored."""
    store = warehouse.store()
    return store.read_table(SCORES_TABLE) if store.table_exists(SCORES_TABLE) else None


def _flag_partitions(
    warehouse: Warehouse,
    flag: Callable[[pd.DataFrame], pd.DataFrame],
    problem: Callable[[Any], str],
    fine: str,
    names: tuple[str, str],
) -> dg.AssetCheckResult:
    """A warning naming, in `problem`'s words, each scored partition that `flag` picks from the `scores` table; the
    metadata lists them (`names[0]`) and shows their rows (`names[1]`)."""
    scores = _scores_table(warehouse)
    if scores is None:
        return warn_unless([f"{NO_SCORES}: materialize a benchmark_scores partition."], "")
    flagged = flag(scores)
    return warn_unless(
        [problem(row) for row in flagged.itertuples(index=False)],
        f"every one of the {len(scores)} scored partitions {fine}",
        {
            "partitions_checked": len(scores),
            names[0]: dg.MetadataValue.json(sorted(flagged["partition"])),
            names[1]: dg.MetadataValue.md(markdown_preview(flagged, rows=20) if len(flagged) else "none"),
        },
    )


@dg.asset_check(
    asset=benchmark_scores,
    description="A warning when, in a scored partition, no run ended with an answer (answered_rate 0): its zero "
    "scores say the policy never answered, not what it knows. One line per such partition, with how its runs ended.",
    blocking=False,
)
def benchmark_partitions_answered(warehouse: Warehouse) -> dg.AssetCheckResult:
    return _flag_partitions(
        warehouse,
        unanswered_partitions,
        lambda row: (
            f"no run answered in {row.partition}: all {row.runs} runs ended without an answer "
            f"({row.endings}); see terminations and preview in that partition's materialization metadata."
        ),
        "has answered runs",
        ("unanswered_partitions", "unanswered"),
    )
