"""Stages 3 and 4: ReAct rejection sampling on the QA pairs, then the three-stage funnel into SFT data and the RL pool.

`trajectories` stores every attempt (accepted or not) with its validity and correctness verdicts; WebDancer's
released trajectories join as tagged attempts so SFT has real long trajectories even when the offline teacher
is weak. `sft_dataset` and `rl_pool` come out of one funnel run, so they always agree. Non-blocking checks warn
when no pair was sampled or no sample accepted, and when the SFT set is tiny or holds no teacher-sampled chat;
blocking ones stop training when a pair of the monitoring split (`shared/split.py`) got into either.
"""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.agent.factory import build_web_agent
from webdancer_dagster.agent.grammar import TurnLimits
from webdancer_dagster.assets.automation import when_inputs_change
from webdancer_dagster.assets.check_results import counts_text, never_materialized, warn_unless
from webdancer_dagster.assets.corpus import search_index
from webdancer_dagster.assets.qa import SYNTHESIZED_TABLES, crawlqa_pairs, e2hqa_pairs, read_pairs, reference_qa_pairs
from webdancer_dagster.concurrency import LLM_POOL
from webdancer_dagster.llm.client import LLMEndpoint
from webdancer_dagster.llm.model_files import find_smollm2_gguf
from webdancer_dagster.llm.tokenizer import load_tokenizer
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.llm import LLMEndpointResource
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame
from webdancer_dagster.shared.split import MONITOR_SHARE, is_monitor, is_monitor_pair, training_pairs
from webdancer_dagster.synthesis.funnel import FunnelConfig, run_funnel, select_rl_pool, sft_records
from webdancer_dagster.synthesis.reference import REFERENCE_MODEL, released_trajectories
from webdancer_dagster.synthesis.rejection import (
    Attempt,
    assess_attempt,
    attempts_frame,
    attempts_from_frame,
    rejection_sample,
)
from webdancer_dagster.synthesis.short_cot import DERIVED_SUFFIX, SHORT_ANSWER_TAG
from webdancer_dagster.warehouse import TableWrite, WarehouseStore, frame_version, markdown_preview
from webdancer_dagster.web.scope import LocalSites, WebScope

# The questions of WebDancer's released trajectories: the only attempted pairs no QA asset holds.
RELEASED_PAIRS_TABLE = "trajectory_pairs"
# sft_dataset and rl_pool come out of one funnel run: both follow a new trajectories data version.
FOLLOW_TRAJECTORIES = when_inputs_change("follow_trajectories")


def sampling_pairs(store: WarehouseStore, max_pairs: int | None) -> tuple[list[QAPair], int]:
    """The first `max_pairs` synthesized pairs outside the monitoring split, and how many pairs that split holds."""
    synthesized = read_pairs(store, SYNTHESIZED_TABLES)
    training = training_pairs(synthesized)
    return training[:max_pairs], len(synthesized) - len(training)


class TrajectoriesConfig(dg.Config):
    attempts: int = Field(default=2, description="k: attempts per QA pair; sampling stops at the first accepted.")
    cot_mode: str = Field(default="short", description="'short' (teacher_short) or 'long' (teacher_long).")
    max_pairs: int | None = Field(default=4, description="Sample at most this many synthesized pairs (smoke).")
    max_llm_calls: int = Field(default=6, description="Assistant turns per attempt.")
    n_ctx: int = Field(default=8192, description="The teacher's context window in tokens.")
    tokenizer: str | None = Field(
        default=None, description="Model folder or GGUF whose tokenizer counts context; default: SmolLM2's GGUF."
    )
    include_reference: bool = Field(default=True, description="Add WebDancer's released trajectories, tagged.")
    max_reference: int | None = Field(
        default=20, description="Add at most this many released trajectories (each costs a judge call); empty: all."
    )
    reference_path: str = Field(default=str(DATA_DIR / "webdancer_samples" / "sample_traj.jsonl"))
    max_workers: int = Field(default=1, description="QA pairs sampled in parallel.")
    constrained: bool = Field(
        default=True,
        description="Sample the short-CoT teacher under the turn grammar (llama.cpp or vLLM teachers; others, and "
        "long CoT, sample unconstrained with a warning). Each attempt records whether it was constrained.",
    )
    max_thought_chars: int = Field(default=800, description="Constrained turns: longest thought in characters.")
    derive_short_cot: bool = Field(
        default=False,
        description="Also add a short-CoT copy of each released (long-CoT) trajectory: every thought cut to its "
        "closing sentences, actions, observations and answer kept; tagged in the model name.",
    )
    short_cot_thought_words: int = Field(default=60, description="Derived short CoT: longest thought in words.")
    derived_short_answers: bool = Field(
        default=False,
        description="Derived short CoT: also cut each final answer to the answer it states in bold (the judge's "
        "reading of it), so the policy learns to answer, not to explain; tagged in the model name.",
    )


@dg.asset(
    deps=[crawlqa_pairs, e2hqa_pairs, reference_qa_pairs, search_index],
    group_name="trajectories",
    automation_condition=when_inputs_change("follow_qa_pairs"),
    pool=LLM_POOL,
    kinds={"python", "duckdb"},
)
def trajectories(
    context: dg.AssetExecutionContext,
    config: TrajectoriesConfig,
    warehouse: Warehouse,
    web: WebEnvironment,
    teacher_short: LLMEndpointResource,
    teacher_long: LLMEndpointResource,
    summarizer: LLMEndpointResource,
    judge: LLMEndpointResource,
) -> dg.MaterializeResult:
    """Rejection sampling: each QA pair gets up to k ReAct attempts on the non-benchmark web; all are stored."""
    if config.cot_mode not in ("short", "long"):
        raise ValueError(f"cot_mode must be 'short' or 'long', got {config.cot_mode!r}")
    store = warehouse.store()
    pairs, monitored = sampling_pairs(store, config.max_pairs)
    teacher = teacher_short if config.cot_mode == "short" else teacher_long
    judge_endpoint = judge.judge_endpoint() if pairs or config.include_reference else None
    attempts = _sample(context, config, store, web, teacher, summarizer, judge_endpoint, pairs) if pairs else []
    reference = _reference_attempts(config, judge_endpoint) if config.include_reference else []
    frame = attempts_frame([*attempts, *reference])
    if frame.empty:
        raise LookupError("no QA pairs and no reference trajectories: materialize the QA assets first")
    # A sampled pair is referenced by id in its QA table; only a released trajectory's question is in none of them.
    released_pairs = {attempt.qa.id: attempt.qa for attempt in reference}
    writes = store.write_tables(
        replacements={"trajectories": frame, RELEASED_PAIRS_TABLE: qa_pairs_frame(released_pairs.values())}
    )
    context.log.info("trajectories: %d sampled for %d pairs, %d reference", len(attempts), len(pairs), len(reference))
    return dg.MaterializeResult(
        metadata={
            **_trajectories_metadata(frame, attempts, reference, len(pairs), writes["trajectories"]),
            "monitor_pairs_skipped": monitored,
            "judge": judge.judge_name(),
            "teacher": f"{teacher.role} ({config.cot_mode} CoT, {web.search_results_per_query} results a search)",
            "teacher_usage": dg.MetadataValue.json(teacher.usage_metadata()),
            "judge_usage": dg.MetadataValue.json(judge.usage_metadata()),
            "summarizer_usage": dg.MetadataValue.json(summarizer.usage_metadata()),
        },
        data_version=dg.DataVersion(frame_version(frame.drop(columns=["trajectory"]))),
    )


def _reference_attempts(config: TrajectoriesConfig, judge: LLMEndpoint | None) -> list[Attempt]:
    """WebDancer's released trajectories (and their derived short-CoT copies, if asked for), judged like samples."""
    derive_words = config.short_cot_thought_words if config.derive_short_cot else None
    released = released_trajectories(
        Path(config.reference_path), config.max_reference, derive_words, config.derived_short_answers
    )
    return [assess_attempt(item.qa, item.trajectory, judge) for item in released]


def _sample(
    context: dg.AssetExecutionContext,
    config: TrajectoriesConfig,
    store: WarehouseStore,
    web: WebEnvironment,
    teacher: LLMEndpointResource,
    summarizer: LLMEndpointResource,
    judge: LLMEndpoint | None,
    pairs: list[QAPair],
) -> list[Attempt]:
    """Up to `attempts` runs of the teacher's agent per pair on the non-benchmark local web, constrained by the turn
    grammar when the teacher's server supports it."""
    tokenizer = load_tokenizer(config.tokenizer or str(find_smollm2_gguf()), str(store.home / "tokenizers"))
    teacher_endpoint = teacher.endpoint()
    constrained = config.constrained and config.cot_mode == "short" and teacher_endpoint.supports_grammar
    if config.constrained and not constrained:
        context.log.warning(
            "trajectories: sampling unconstrained: the turn grammar needs short CoT and a llama_cpp or vllm teacher "
            "(cot_mode=%s, server_kind=%s)", config.cot_mode, teacher_endpoint.config.server_kind,
        )  # fmt: skip
    with web.serve() as proxy_url:
        agent = build_web_agent(
            teacher_endpoint,
            summarizer.endpoint(),
            web.search(),
            WebScope.synthesis(LocalSites.of_home(store), proxy_url),
            tokenizer,
            n_ctx=config.n_ctx,
            max_llm_calls=config.max_llm_calls,
            cot_mode=config.cot_mode,  # type: ignore[arg-type]
            constrained=constrained,
            turn_limits=TurnLimits(max_thought_chars=config.max_thought_chars),
            search_results_per_query=web.search_results_per_query,
        )
        return rejection_sample(
            pairs,
            lambda question, index: agent.run(question, sample_index=index),
            judge,
            k=config.attempts,
            max_workers=config.max_workers,
        )


def _trajectories_metadata(
    frame: pd.DataFrame, attempts: list[Attempt], reference: list[Attempt], pairs: int, write: TableWrite
) -> dict[str, object]:
    """Counts a reader checks first: how many pairs were sampled and solved, why attempts were invalid, how long."""
    sampled = frame.iloc[: len(attempts)]
    return {
        "dagster/row_count": write.rows,
        "pairs_sampled": pairs,
        "attempts": len(attempts),
        "reference_trajectories": len(reference),
        "accepted": int(frame["accepted"].sum()),
        "pairs_solved": int(sampled.loc[sampled["accepted"], "qa_id"].nunique()) if len(sampled) else 0,
        "attempts_per_pair": round(len(attempts) / pairs, 2) if pairs else 0.0,
        "constrained_attempts": sum(attempt.trajectory.constrained for attempt in attempts),
        "derived_short_cot": sum(item.trajectory.model.endswith(DERIVED_SUFFIX) for item in reference),
        "derived_short_answers": sum(SHORT_ANSWER_TAG in item.trajectory.model for item in reference),
        "termination": dg.MetadataValue.json(sampled["termination"].value_counts().to_dict()),
        "validity_drops": dg.MetadataValue.json(
            frame.loc[frame["validity_reason"] != "", "validity_reason"].value_counts().to_dict()
        ),
        "mean_steps": round(float(frame["steps"].mean()), 2),
        "mean_completion_tokens": round(float(frame["completion_tokens"].mean()), 1),
        "preview": dg.MetadataValue.md(
            markdown_preview(frame[["qa_id", "model", "termination", "steps", "accepted", "validity_reason"]])
        ),
        "parquet": dg.MetadataValue.path(str(write.parquet_path)),
    }


class FunnelAssetConfig(dg.Config):
    use_llm_grade: bool = Field(
        default=False, description="Stage (c) LLM grade after the rules (off for the 135M offline default)."
    )
    max_actions: int = Field(default=10, description="More tool calls than this: dropped as too_many_actions.")
    min_grade_mean: float = Field(default=3.0, description="Mean 1-5 grade needed to keep a trajectory.")
    held_out_share: float = Field(default=0.0, description="Share of solved pairs moved from SFT to the RL pool.")
    sft_cot_modes: list[str] = Field(
        default=["short", "long"],
        description="CoT modes of the kept trajectories that become SFT data: 'short' for an instruct model, 'long' "
        "for a reasoning model (WebDancer's split), both by default.",
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "sft_dataset",
            deps=[trajectories],
            group_name="sft",
            kinds={"python", "duckdb", "parquet"},
            automation_condition=FOLLOW_TRAJECTORIES,
        ),
        dg.AssetSpec(
            "rl_pool",
            deps=[trajectories],
            group_name="sft",
            kinds={"python", "duckdb"},
            automation_condition=FOLLOW_TRAJECTORIES,
        ),
    ],
    pool=LLM_POOL,  # the judge, and with use_llm_grade the grader
)
def funnel(
    context: dg.AssetExecutionContext,
    config: FunnelAssetConfig,
    warehouse: Warehouse,
    teacher_short: LLMEndpointResource,
):
    """Validity, correctness and quality over every attempt; kept trajectories become SFT data, the rest of the
    QA pairs (every QA asset and every attempted question, the released ones included) the RL pool."""
    store = warehouse.store()
    every_pair = read_pairs(store, [*SYNTHESIZED_TABLES, "reference_qa_pairs"])
    pairs = training_pairs(every_pair)  # the monitoring split reaches neither SFT nor the RL pool
    attempts = [attempt for attempt in _read_attempts(store, every_pair) if not is_monitor_pair(attempt.qa)]
    settings = FunnelConfig(max_actions=config.max_actions, min_grade_mean=config.min_grade_mean)
    result = run_funnel(attempts, teacher_short.endpoint() if config.use_llm_grade else None, settings)
    pool = select_rl_pool(pairs, result, held_out_share=config.held_out_share)
    records = sft_records(result, pool.held_out_ids, config.sft_cot_modes)  # type: ignore[arg-type]
    if not records:
        raise ValueError(
            f"the funnel kept no {'/'.join(config.sft_cot_modes)}-CoT trajectory: sft_dataset would be empty (see the "
            "trajectories asset)"
        )
    sft = pd.DataFrame(records).assign(messages=lambda frame: frame["messages"].map(_json_text))
    rl = qa_pairs_frame(pool.pairs).assign(rl_reason=[pool.reasons[pair.id] for pair in pool.pairs])
    stages, drops = result.stage_table(), result.drop_table()
    tables = {"sft_dataset": sft, "rl_pool": rl, "funnel_records": result.records_frame()}
    writes = store.write_tables(replacements={**tables, "funnel_stages": stages, "funnel_drops": drops})
    context.log.info("funnel: %d attempts, %d kept for SFT, %d pairs in the RL pool", len(attempts), len(sft), len(rl))
    yield dg.MaterializeResult(
        asset_key="sft_dataset",
        metadata={**_sft_metadata(sft, stages, drops, writes["sft_dataset"]), "llm_grade": config.use_llm_grade},
        data_version=dg.DataVersion(frame_version(sft)),
    )
    yield dg.MaterializeResult(
        asset_key="rl_pool",
        metadata={**_rl_pool_metadata(rl, writes["rl_pool"]), "monitor_pairs_excluded": len(every_pair) - len(pairs)},
        data_version=dg.DataVersion(frame_version(rl)),
    )


def _read_attempts(store: WarehouseStore, pairs: list[QAPair]) -> list[Attempt]:
    """The stored attempts with their QA pairs, found by id in the QA tables or the released trajectories' pairs."""
    by_id = {pair.id: pair for pair in [*pairs, *read_pairs(store, [RELEASED_PAIRS_TABLE])]}
    try:
        return attempts_from_frame(store.read_table("trajectories"), by_id)
    except KeyError as error:
        raise LookupError(
            f"trajectories holds an attempt for QA pair {error.args[0]}, which no QA table holds any more (it was "
            "re-synthesized since): materialize trajectories again"
        ) from error


def _json_text(messages: list[dict[str, str]]) -> str:
    """A chat as the JSON text the warehouse stores and the trainer reads as it is."""
    return json.dumps(messages, ensure_ascii=False)


def _sft_metadata(sft: pd.DataFrame, stages: pd.DataFrame, drops: pd.DataFrame, write: TableWrite) -> dict[str, object]:
    """The funnel a user reads (in, kept and dropped per stage, drops by reason), the SFT set's make-up, an example."""
    return {
        "dagster/row_count": len(sft),
        "funnel": dg.MetadataValue.md(stages.to_markdown(index=False)),
        "drops_by_reason": dg.MetadataValue.md(drops.to_markdown(index=False) if len(drops) else "none"),
        "by_source": dg.MetadataValue.json(sft["source"].value_counts().to_dict()),
        "by_cot_mode": dg.MetadataValue.json(sft["cot_mode"].value_counts().to_dict()),
        "parquet": dg.MetadataValue.path(str(write.parquet_path)),
        "example": dg.MetadataValue.md(_render_example(sft.iloc[0])),
    }


def _rl_pool_metadata(rl: pd.DataFrame, write: TableWrite) -> dict[str, object]:
    """Why each pair is in the RL pool and what kind of question it is."""
    return {
        "dagster/row_count": len(rl),
        "by_reason": dg.MetadataValue.json(rl["rl_reason"].value_counts().to_dict() if len(rl) else {}),
        "by_kind": dg.MetadataValue.json(rl["kind"].value_counts().to_dict() if len(rl) else {}),
        "preview": dg.MetadataValue.md(
            markdown_preview(rl[["kind", "rl_reason", "question", "answer"]]) if len(rl) else "empty"
        ),
        "parquet": dg.MetadataValue.path(str(write.parquet_path)),
    }


def _render_example(row: pd.Series) -> str:
    messages = json.loads(row["messages"])
    turns = [f"**{m['role']}**\n\n```\n{m['content'][:600]}\n```" for m in messages[2:6]]
    return f"`{row['id']}` ({row['source']}, {row['cot_mode']} CoT)\n\n" + "\n\n".join(turns)


MIN_SFT_CHATS = 10
# The columns the checks read: the trajectories themselves would be most of the bytes.
ATTEMPT_COLUMNS = '"qa_id", "model", "accepted", "validity_reason", "termination"'


def released_rows(models: pd.Series) -> pd.Series:
    """Which rows hold WebDancer's released trajectories (or their derived short-CoT copies), not teacher samples."""
    return (models == REFERENCE_MODEL) | models.str.endswith(DERIVED_SUFFIX, na=False)


def trajectories_problems(frame: pd.DataFrame) -> list[str]:
    """Words for a `trajectories` table (qa_id, model, accepted, validity_reason, termination) in which no QA pair
    was sampled, or no sampled attempt was accepted."""
    sampled = frame[~released_rows(frame["model"])]
    if sampled.empty:
        return [
            f"0 QA pairs were sampled: trajectories holds only the {len(frame)} released reference trajectories. "
            "crawlqa_pairs and e2hqa_pairs hold no pair (see their _are_not_empty checks), or max_pairs is 0."
        ]
    if sampled["accepted"].any():
        return []
    invalid = sampled.loc[sampled["validity_reason"] != "", "validity_reason"].value_counts().to_dict()
    return [
        f"no sampled attempt was accepted: {len(sampled)} attempts on {sampled['qa_id'].nunique()} QA pairs, none "
        f"both format-valid and judged correct (invalid: {counts_text(invalid) or 'none'}; endings: "
        f"{counts_text(sampled['termination'].value_counts().to_dict())}). See validity_drops and termination in "
        "the materialization metadata."
    ]


@dg.asset_check(
    asset=trajectories,
    blocking=False,
    description="A warning (the pipeline goes on) when no QA pair was sampled, so trajectories holds only WebDancer's "
    "released ones, or when no sampled attempt was accepted.",
)
def trajectories_has_accepted_samples(warehouse: Warehouse) -> dg.AssetCheckResult:
    store = warehouse.store()
    if not store.table_exists("trajectories"):
        return never_materialized("trajectories")
    frame = store.query(f'SELECT {ATTEMPT_COLUMNS} FROM "trajectories"')
    sampled = frame[~released_rows(frame["model"])]
    accepted, pairs = int(sampled["accepted"].sum()), int(sampled["qa_id"].nunique())
    return warn_unless(
        trajectories_problems(frame),
        f"{accepted} of {len(sampled)} sampled attempts accepted, on {pairs} QA pairs",
        {
            "sampled_attempts": len(sampled),
            "sampled_pairs": pairs,
            "accepted_samples": accepted,
            "reference_trajectories": len(frame) - len(sampled),
        },
    )


def sft_dataset_problems(sft: pd.DataFrame, min_chats: int = MIN_SFT_CHATS) -> list[str]:
    """Words for an SFT set (source, model columns) too small to teach much, or made only of WebDancer's released
    trajectories and their derived copies, with no chat the teacher sampled in this run."""
    problems = []
    if len(sft) < min_chats:
        problems.append(
            f"sft_dataset holds {len(sft)} chats, fewer than {min_chats}: SFT on so few teaches little. See funnel "
            "and drops_by_reason in the materialization metadata."
        )
    if len(sft) and released_rows(sft["model"]).all():
        problems.append(
            f"none of the {len(sft)} chats was sampled from the teacher: all are WebDancer's released trajectories "
            f"or their derived short-CoT copies ({counts_text(sft['model'].value_counts().to_dict())}), so SFT "
            "learns nothing from this run's QA pairs. See the trajectories_has_accepted_samples check."
        )
    return problems


@dg.asset_check(
    asset="sft_dataset",
    blocking=False,
    description=f"A warning (the pipeline goes on) when the SFT set holds fewer than {MIN_SFT_CHATS} chats, or only "
    "WebDancer's released trajectories and their derived copies (no teacher-sampled one); counts by source and model.",
)
def sft_dataset_has_enough_chats(warehouse: Warehouse) -> dg.AssetCheckResult:
    store = warehouse.store()
    if not store.table_exists("sft_dataset"):
        return never_materialized("sft_dataset")
    sft = store.query('SELECT "source", "model" FROM "sft_dataset"')
    sampled = int((~released_rows(sft["model"])).sum())
    return warn_unless(
        sft_dataset_problems(sft),
        f"sft_dataset holds {len(sft)} chats, {sampled} of them sampled from the teacher",
        {
            "chats": len(sft),
            "teacher_sampled": sampled,
            "by_source": dg.MetadataValue.json(sft["source"].value_counts().to_dict()),
            "by_model": dg.MetadataValue.json(sft["model"].value_counts().to_dict()),
        },
    )


# The id column of each funnel output that names a QA pair.
FUNNEL_PAIR_COLUMNS = {"sft_dataset": "qa_id", "rl_pool": "id"}


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            f"{table}_excludes_monitor_pairs",
            asset=table,
            blocking=True,
            description=f"No row holds a pair of the monitoring split ({MONITOR_SHARE:.0%} of the synthesized pairs, "
            "scored as the synth_monitor benchmark): training on them would make that benchmark meaningless.",
        )
        for table in FUNNEL_PAIR_COLUMNS
    ],
)
def funnel_excludes_monitor_pairs(warehouse: Warehouse):
    store = warehouse.store()
    for table, column in FUNNEL_PAIR_COLUMNS.items():
        check_name = f"{table}_excludes_monitor_pairs"
        if not store.table_exists(table):
            yield dg.AssetCheckResult(
                asset_key=table, check_name=check_name, passed=False, description=f"{table} was never materialized"
            )
            continue
        rows = store.query(f'SELECT "{column}" AS qa_id, "source" FROM "{table}"')
        pairs = zip(rows["qa_id"], rows["source"], strict=True)
        leaked = sorted({qa_id for qa_id, source in pairs if is_monitor(qa_id, source)})
        yield dg.AssetCheckResult(
            asset_key=table,
            check_name=check_name,
            passed=not leaked,
            description=f"{len(leaked)} monitoring pairs in {table} ({len(rows)} rows)"
            + (f", e.g. {', '.join(leaked[:3])}: materialize sft_dataset and rl_pool again" if leaked else ""),
            metadata={"rows": len(rows), "monitor_pairs": len(leaked)},
        )
