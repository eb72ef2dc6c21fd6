"""Stage 2, QA pairs: CRAWLQA from page clusters, E2HQA by rewriting simple questions, WebDancer's own samples.

Synthesis reads only non-benchmark sites (the `benchmark` column of `sites`); a blocking check proves that no
pair cites a benchmark page and that no question overlaps a benchmark question. A non-blocking check warns when
a synthesized table holds no pair, naming why the teacher's attempts were dropped.
"""

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from webdancer_dagster.assets.automation import when_inputs_change
from webdancer_dagster.assets.check_results import counts_text, never_materialized, warn_unless
from webdancer_dagster.assets.corpus import crawl_pages, search_index
from webdancer_dagster.assets.registries import REGISTRY
from webdancer_dagster.concurrency import LLM_POOL
from webdancer_dagster.evaluation.benchmarks import all_benchmark_questions
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.llm import LLMEndpointResource
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.shared.qa import QAPair, qa_pairs_frame, qa_pairs_from_frame
from webdancer_dagster.synthesis.crawlqa import CrawlQAConfig, synthesize_crawlqa
from webdancer_dagster.synthesis.e2hqa import E2HQAConfig, synthesize_e2hqa
from webdancer_dagster.synthesis.qa import LeakageGuard, SynthesisResult
from webdancer_dagster.synthesis.reference import load_reference_qa
from webdancer_dagster.warehouse import WarehouseStore, frame_version, markdown_preview
from webdancer_dagster.web.scope import LocalSites

QA_TABLES = {"crawlqa_pairs": "crawlqa", "e2hqa_pairs": "e2hqa", "reference_qa_pairs": "webdancer_sample"}
DROPS_TABLE = "qa_drops"
# The QA assets whose pairs this pipeline wrote (the released ones are `reference_qa_pairs`).
SYNTHESIZED_TABLES = ["crawlqa_pairs", "e2hqa_pairs"]
# A crawl with a new data version (some page new, changed or removed) refreshes the synthesized pairs.
REFRESH_WHEN_CRAWL_CHANGES = when_inputs_change("refresh_when_crawl_changes")
# The offline default (llama.cpp) constrains JSON to the reply schema; hosted endpoints take "object".
JSON_FORMAT_DESCRIPTION = "response_format: none, object, object_with_schema (llama.cpp), json_schema (OpenAI, vLLM)."


def read_pairs(store: WarehouseStore, tables: list[str]) -> list[QAPair]:
    """QA pairs of the given QA assets, in table order; a table not yet materialized is an error naming it."""
    pairs: list[QAPair] = []
    for table in tables:
        if not store.table_exists(table):
            raise LookupError(f"table {table!r} does not exist; materialize the {table} asset first")
        pairs += qa_pairs_from_frame(store.read_table(table))
    return pairs


def _existing_questions(store: WarehouseStore, other_tables: Sequence[str]) -> list[str]:
    """Questions other QA assets already hold, so a new pair never repeats one of them."""
    questions: list[str] = []
    for table in other_tables:
        if store.table_exists(table):
            questions += store.query(f'SELECT question FROM "{table}"')["question"].tolist()
    return questions


def _store_result(
    context: dg.AssetExecutionContext, store: WarehouseStore, table: str, result: SynthesisResult, teacher
) -> dg.MaterializeResult:
    pairs = qa_pairs_frame(result.pairs)
    drops = result.drops_table.assign(asset=table)
    writes = store.write_tables(
        replacements={table: pairs}, partition=("asset", table), partition_replacements={DROPS_TABLE: drops}
    )
    context.log.info("%s: %d pairs kept of %d attempted; drops %s", table, len(pairs), result.attempted,
                     result.drop_counts())  # fmt: skip
    by_kind = pairs.groupby("kind").size().to_dict() if len(pairs) else {}
    by_difficulty = pairs.groupby("difficulty").size().to_dict() if len(pairs) else {}
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(pairs),
            "attempted": result.attempted,
            "kept": len(pairs),
            "dropped": len(result.drops),
            "drops_by_reason": dg.MetadataValue.json(result.drop_counts()),
            "by_kind": dg.MetadataValue.json({str(k): int(v) for k, v in by_kind.items()}),
            "by_difficulty": dg.MetadataValue.json({str(k): int(v) for k, v in by_difficulty.items()}),
            "teacher": f"{teacher.role}: {teacher.endpoint().config.model}",
            "teacher_usage": dg.MetadataValue.json(teacher.usage_metadata()),
            "preview": dg.MetadataValue.md(
                markdown_preview(pairs[["kind", "difficulty", "question", "answer"]]) if len(pairs) else "no pairs"
            ),
            "parquet": dg.MetadataValue.path(str(writes[table].parquet_path)),
            **({"sources": dg.MetadataValue.md(sources_markdown(result))} if result.sources else {}),
        },
        data_version=dg.DataVersion(frame_version(pairs)),
    )


def sources_markdown(result: SynthesisResult) -> str:
    """One row per source (a CRAWLQA cluster): its pages, the pairs kept from them and the drops, by reason."""
    rows = []
    for source, urls in result.sources.items():
        reasons = Counter(drop.reason for drop in result.drops if drop.item.split(":")[0] == source)
        kept = sum(1 for pair in result.pairs if pair.source_urls and set(pair.source_urls) <= set(urls))
        drops = ", ".join(f"{reason} {count}" for reason, count in reasons.most_common()) or "none"
        rows.append({"source": source, "pages": " ".join(urls), "kept": kept, "dropped": drops})
    return markdown_preview(pd.DataFrame(rows), rows=len(rows), max_chars=400)


class CrawlQAAssetConfig(dg.Config):
    clusters: int = Field(default=3, description="Page clusters to sample; each gets one question per kind.")
    subpages: int = Field(default=3, description="Linked pages added to each cluster's root page.")
    seed: int = Field(default=0, description="Cluster sampling seed.")
    min_page_chars: int = Field(default=200, description="Pages with less text are never shown to the teacher.")
    page_chars: int = Field(default=1500, description="Text of each page shown in the teacher's prompt.")
    json_format: str = Field(default="object_with_schema", description=JSON_FORMAT_DESCRIPTION)


@dg.asset(
    deps=[crawl_pages],
    group_name="qa",
    kinds={"python", "duckdb"},
    automation_condition=REFRESH_WHEN_CRAWL_CHANGES,
    pool=LLM_POOL,
)
def crawlqa_pairs(
    context: dg.AssetExecutionContext,
    config: CrawlQAAssetConfig,
    warehouse: Warehouse,
    teacher_short: LLMEndpointResource,
) -> dg.MaterializeResult:
    """COUNT, MULTI-HOP and INTERSECTION questions the teacher wrote from clusters of linked, crawled pages."""
    store = warehouse.store()
    allowed = list(LocalSites.of_home(store).names)
    pages = store.query("SELECT url, site, title, text FROM pages WHERE site IN (SELECT unnest(?))", [allowed])
    links = store.query("SELECT src_url, dst_url, internal FROM links WHERE site IN (SELECT unnest(?))", [allowed])
    settings = CrawlQAConfig(
        clusters=config.clusters,
        subpages=config.subpages,
        seed=config.seed,
        min_page_chars=config.min_page_chars,
        page_chars=config.page_chars,
        json_format=config.json_format,
    )
    result = synthesize_crawlqa(
        pages, links, allowed, teacher_short.endpoint(), settings,
        existing_questions=_existing_questions(store, ["e2hqa_pairs"]),
    )  # fmt: skip
    return _store_result(context, store, "crawlqa_pairs", result, teacher_short)


class E2HQAAssetConfig(dg.Config):
    seeds: int = Field(default=3, description="Seed pages, one simple question each.")
    seed_source: str = Field(
        default="teacher",
        description="'teacher' writes each seed question, or 'facts': rules read the facts a page's opening sentence "
        "states (birth and death dates, a film's director), no model call.",
    )
    rewrites: list[int] = Field(default=[1, 2], description="Rewrite counts to draw from (the difficulty).")
    seed: int = Field(default=0, description="Sampling seed.")
    min_page_chars: int = Field(default=200, description="Pages with less text are never seed pages.")
    page_chars: int = Field(default=1500, description="Text of the seed page shown in the teacher's prompt.")
    json_format: str = Field(default="object_with_schema", description=JSON_FORMAT_DESCRIPTION)
    answer_check: bool = Field(
        default=False,
        description="After each rewrite, ask the judge whether the seed's answer still answers the new question; "
        "a 'no' is counted as the drop reason answer_changed.",
    )


@dg.asset(
    deps=[crawl_pages, search_index],
    group_name="qa",
    kinds={"python", "duckdb"},
    automation_condition=REFRESH_WHEN_CRAWL_CHANGES,
    pool=LLM_POOL,
)
def e2hqa_pairs(
    context: dg.AssetExecutionContext,
    config: E2HQAAssetConfig,
    warehouse: Warehouse,
    web: WebEnvironment,
    teacher_short: LLMEndpointResource,
    judge: LLMEndpointResource,
) -> dg.MaterializeResult:
    """Simple fact questions made hard by replacing entities with descriptions found by search; answer unchanged."""
    store = warehouse.store()
    sites = LocalSites.of_home(store)
    allowed, blocked = list(sites.names), sorted(sites.benchmark_hosts)
    pages = store.query("SELECT url, site, title, text FROM pages WHERE site IN (SELECT unnest(?))", [allowed])
    settings = E2HQAConfig(
        seeds=config.seeds,
        seed_source=config.seed_source,  # type: ignore[arg-type]
        rewrites=tuple(config.rewrites),
        seed=config.seed,
        min_page_chars=config.min_page_chars,
        page_chars=config.page_chars,
        json_format=config.json_format,
        answer_check=config.answer_check,
    )
    result = synthesize_e2hqa(
        pages, allowed, teacher_short.endpoint(), web.search(), blocked, settings,
        checker=judge.endpoint() if config.answer_check else None,
        existing_questions=_existing_questions(store, ["crawlqa_pairs"]),
    )  # fmt: skip
    return _store_result(context, store, "e2hqa_pairs", result, teacher_short)


class ReferenceQAConfig(dg.Config):
    path: str = Field(
        default=str(DATA_DIR / "webdancer_samples" / "sample_qa.jsonl"),
        description="WebDancer's released QA pairs (JSONL of question, answer, tag).",
    )


@dg.asset(group_name="qa", kinds={"python", "duckdb"})
def reference_qa_pairs(
    context: dg.AssetExecutionContext, config: ReferenceQAConfig, warehouse: Warehouse
) -> dg.MaterializeResult:
    """WebDancer's own released QA pairs, tagged, so later stages have real questions even with a weak teacher."""
    pairs = load_reference_qa(Path(config.path))
    result = SynthesisResult(pairs, [], len(pairs))
    store = warehouse.store()
    frame = qa_pairs_frame(result.pairs)
    write = store.replace_table("reference_qa_pairs", frame)
    context.log.info("loaded %d reference QA pairs from %s", len(frame), config.path)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": write.rows,
            "source": config.path,
            "by_kind": dg.MetadataValue.json({str(k): int(v) for k, v in frame.groupby("kind").size().items()}),
            "preview": dg.MetadataValue.md(markdown_preview(frame[["kind", "question", "answer"]])),
        },
        data_version=dg.DataVersion(frame_version(frame)),
    )


def _leakage_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=table,
        name=f"{table}_do_not_leak_benchmarks",
        blocking=True,
        description="No pair cites a benchmark page or overlaps a question of any registered benchmark (word 3-grams, "
        "containment).",
    )
    def check(warehouse: Warehouse) -> dg.AssetCheckResult:
        store = warehouse.store()
        blocked = sorted(LocalSites.of_home(store).benchmark_hosts)
        pairs = qa_pairs_from_frame(store.read_table(table))
        questions = all_benchmark_questions(DATA_DIR, REGISTRY.benchmarks)
        guard = LeakageGuard(questions)
        hits = guard.check(pairs, blocked)
        examples = pd.DataFrame([{"item": h.item, "reason": h.reason, "detail": h.detail} for h in hits[:10]])
        summary = leakage_summary(table, len(pairs), len(questions), len(blocked), len(hits))
        return dg.AssetCheckResult(
            passed=not hits,
            description=summary,
            metadata={
                "summary": dg.MetadataValue.text(summary),
                "pairs": len(pairs),
                "benchmark_hosts": dg.MetadataValue.json(blocked),
                "overlap_threshold": guard.threshold,
                "expected_leaks": 0,
                "actual_leaks": len(hits),
                "examples": dg.MetadataValue.md(markdown_preview(examples) if hits else "none"),
            },
        )

    return check


def leakage_summary(table: str, pairs: int, questions: int, hosts: int, leaks: int) -> str:
    """What a leakage check checked, in words: on an empty table it passes because there was nothing to leak."""
    if not pairs:
        return f"checked 0 pairs: nothing to leak ({table} is empty; see the {table}_are_not_empty check)"
    return (
        f"checked {pairs} pair{'' if pairs == 1 else 's'} against {questions} benchmark questions and {hosts} "
        f"benchmark hosts: {leaks} leak{'' if leaks == 1 else 's'}"
    )


crawlqa_leakage = _leakage_check("crawlqa_pairs")
e2hqa_leakage = _leakage_check("e2hqa_pairs")


def empty_pairs_problems(table: str, pairs: int, drop_reasons: pd.Series) -> list[str]:
    """Words for a QA asset that holds no pair: what the teacher's attempts were dropped for (`drop_reasons`, one
    reason per drop), or that no attempt was made at all."""
    if pairs:
        return []
    if drop_reasons.empty:
        return [
            f"{table} holds 0 pairs and nothing was dropped: no attempt was made (too few crawled pages of at least "
            "min_page_chars characters?); see `attempted` in the materialization metadata."
        ]
    reasons = counts_text(drop_reasons.value_counts().to_dict())
    return [
        f"{table} holds 0 pairs: the teacher wrote no usable question ({len(drop_reasons)} drops, top reasons: "
        f"{reasons}). See drops_by_reason in the materialization metadata, or the {DROPS_TABLE} table "
        f"(asset = '{table}')."
    ]


def _not_empty_check(table: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=table,
        name=f"{table}_are_not_empty",
        blocking=False,
        description=f"A warning (the pipeline goes on) when {table} holds no pair: the teacher wrote no usable "
        f"question. It names the top drop reasons of the {DROPS_TABLE} table.",
    )
    def check(warehouse: Warehouse) -> dg.AssetCheckResult:
        store = warehouse.store()
        if not store.table_exists(table):
            return never_materialized(table)
        pairs = int(store.query(f'SELECT count(*) AS n FROM "{table}"')["n"].iloc[0])
        drops = pd.DataFrame(columns=["reason", "detail"])
        if store.table_exists(DROPS_TABLE):
            drops = store.query(f'SELECT reason, detail FROM "{DROPS_TABLE}" WHERE asset = ?', [table])
        examples = drops.drop_duplicates("reason").head(10)
        return warn_unless(
            empty_pairs_problems(table, pairs, drops["reason"]),
            f"{table} holds {pairs} pairs ({len(drops)} drops)",
            {
                "pairs": pairs,
                "drops": len(drops),
                "drops_by_reason": dg.MetadataValue.json(drops["reason"].value_counts().to_dict()),
                "drop_examples": dg.MetadataValue.md(markdown_preview(examples) if len(examples) else "none"),
            },
        )

    return check


crawlqa_not_empty = _not_empty_check("crawlqa_pairs")
e2hqa_not_empty = _not_empty_check("e2hqa_pairs")
