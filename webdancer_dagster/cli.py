"""`webdancer ...`: the pipeline, the offline web and the agent from a terminal."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from webdancer_dagster.agent.trajectory import Step
from webdancer_dagster.config_files import ConfigFileError
from webdancer_dagster.warehouse import WarehouseStore, resolve_home

if TYPE_CHECKING:
    import dagster as dg


class _Commands(TyperGroup):
    """A mistake in a config or data file (a profile, evaluation.yaml, a benchmark file) ends any command with its
    message, which names the file and line, and exit status 2: a traceback would only bury it."""

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigFileError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None


# Plain Python tracebacks: rich's pretty ones looped on the error chain of a failed Dagster run, using minutes of
# CPU and gigabytes of memory before the command exited, and they print local variables, which may hold keys.
app = typer.Typer(
    cls=_Commands,
    help="WebDancer on Dagster: crawl, synthesize, train and evaluate web agents.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

HomeOption = Annotated[
    Path | None, typer.Option("--home", help="WebDancer home (default $WEBDANCER_HOME or ./.webdancer).")
]


def _use_home(home: Path | None) -> Path:
    """Resolve the WebDancer home and point this process's Dagster instance at its run history.

    A home given with --home brings its own run history (`<home>/dagster`), whatever $DAGSTER_HOME says: a run on
    another home (a test's, a copy) must not land in the user's history. Without --home, $DAGSTER_HOME (which the
    Makefile sets) or `<home>/dagster`."""
    explicit = home is not None
    home = resolve_home(home)
    os.environ["WEBDANCER_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(_dagster_home(home, prefer_environment=not explicit))
    return home


@contextmanager
def _run_history() -> Iterator[dg.DagsterInstance]:
    """This home's Dagster instance, once runs a killed process left unfinished are reported failed."""
    import dagster as dg

    from webdancer_dagster.run_history import fail_orphaned_runs

    with dg.DagsterInstance.get() as instance:
        for run_id in fail_orphaned_runs(instance):
            console.print(f"[yellow]run {run_id} was killed before it ended: reported it failed[/yellow]")
        yield instance


def _dagster_home(home: Path, prefer_environment: bool) -> Path:
    from webdancer_dagster.pipeline import ensure_dagster_home

    chosen = os.environ.get("DAGSTER_HOME") if prefer_environment else None
    return ensure_dagster_home(Path(chosen or home / "dagster"))


@app.command()
def materialize(
    profile: Annotated[str, typer.Option(help="Profile name (smoke, full) or a run-config YAML path.")] = "smoke",
    select: Annotated[list[str] | None, typer.Option(help="Only these assets (repeatable).")] = None,
    home: HomeOption = None,
) -> None:
    """Materialize the whole asset graph (or a selection) in dependency order."""
    home = _use_home(home)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from webdancer_dagster.definitions import defs
    from webdancer_dagster.pipeline import load_profile, materialize_all

    with _run_history() as instance:
        results = materialize_all(defs, instance, run_config=load_profile(profile), selection=select)
    jobs = ", ".join(dict.fromkeys(result.dagster_run.job_name for result in results))
    console.print(f"[green]materialized {len(results)} runs[/green] (jobs {jobs}) into {home}")
    console.print(
        f"Open the UI:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} WEBDANCER_HOME={home} "
        ".venv/bin/dagster dev -h 127.0.0.1 -p 3000   (or: make ui)"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 3000,
    home: HomeOption = None,
) -> None:
    """Start the Dagster UI on 127.0.0.1 over the same run history the CLI writes; Ctrl-C (SIGINT) or SIGTERM stops
    it with everything it started."""
    from webdancer_dagster.pipeline import WORKSPACE_YAML
    from webdancer_dagster.processes import run_until_signalled

    _use_home(home)
    with _run_history():
        pass  # runs a killed process left unfinished show as failed, not as running forever
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(WORKSPACE_YAML)]
    raise typer.Exit(run_until_signalled(command, env=dict(os.environ)))


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="One to three queries.")],
    results: Annotated[int, typer.Option(min=1, help="Results a query (WebDancer's search returns 10).")] = 10,
    home: HomeOption = None,
) -> None:
    """Search the crawled local web exactly as the agent's `search` tool does."""
    from webdancer_dagster.resources.web import SEARCH_INDEX_DIR
    from webdancer_dagster.web.errors import ToolInputError
    from webdancer_dagster.web.search import LocalSearch, search_tool

    index_dir = WarehouseStore(home).home / SEARCH_INDEX_DIR
    if not index_dir.exists():
        console.print(f"[red]no search index at {index_dir}[/red]; run `webdancer materialize` first")
        raise typer.Exit(1)
    try:
        console.print(search_tool(LocalSearch(index_dir), list(queries), results), markup=False, highlight=False)
    except ToolInputError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error


@app.command()
def crawl(
    site: Annotated[str, typer.Option("--site", help="Site name (a crawl_pages partition).")],
    profile: Annotated[str, typer.Option(help="Profile whose crawl limits apply.")] = "smoke",
    home: HomeOption = None,
) -> None:
    """Re-crawl one site (the crawl_pages partition) and print what changed."""
    home = _use_home(home)
    logging.basicConfig(level=logging.WARNING)

    import dagster as dg

    from webdancer_dagster.assets.corpus import crawl_summary
    from webdancer_dagster.assets.jobs import profile_config, profile_job_name
    from webdancer_dagster.assets.registries import SITE_NAMES, SITE_REGISTRY
    from webdancer_dagster.definitions import defs
    from webdancer_dagster.pipeline import load_profile, run_job_in_process, validate_profile

    if site not in SITE_NAMES:
        console.print(f"[red]unknown site {site!r}[/red]; sites: {', '.join(SITE_NAMES)}")
        raise typer.Exit(2)
    store = WarehouseStore(home)
    chosen = load_profile(profile)
    validate_profile(defs, chosen)
    # A live site declared in sites.yaml needs no local site built before its crawl.
    needs_sites = not store.table_exists("sites") and site not in SITE_REGISTRY.sites
    selection = ["web_sites", "crawl_pages"] if needs_sites else ["crawl_pages"]
    # The crawl job the UI launches (the profile's own for a profile in profiles/), so the run shows under its name.
    job = profile_job_name("crawl", chosen.name) if chosen.name else "crawl"
    # Each run with the profile's config for its op and the profile's resources: the environment it crawls in.
    sites_config = profile_config(chosen, ["web_sites"])
    run_config = profile_config(chosen, ["crawl_pages"])
    with _run_history() as instance:
        if "web_sites" in selection:
            run_job_in_process(defs, job, instance, asset_selection=[dg.AssetKey("web_sites")], run_config=sites_config)
        result = run_job_in_process(
            defs, job, instance, asset_selection=[dg.AssetKey("crawl_pages")], partition_key=site, run_config=run_config
        )
    console.print_json(json.dumps(crawl_summary(result)))


@app.command()
def sites(home: HomeOption = None) -> None:
    """List the built-in local sites and the live sites declared in sites.yaml, with each one's last crawl."""
    from rich.table import Table

    from webdancer_dagster.assets.corpus import daily_recrawl
    from webdancer_dagster.assets.registries import LOCAL_SITE_SPECS, SITE_REGISTRY
    from webdancer_dagster.web.sites_table import site_overview

    store = WarehouseStore(resolve_home(home))
    frame = site_overview(store, LOCAL_SITE_SPECS, list(SITE_REGISTRY.sites.values()), daily_recrawl.cron_schedule)
    title = f"sites: built-in, and live ones declared in {SITE_REGISTRY.source or 'no sites.yaml'}"
    headers = ["site", "kind", "benchmark", "schedule (UTC)", "root URL", "last crawl", "pages", "changed", "304"]
    table = Table(*headers, "skips", title=title)

    def number(value: object) -> str:
        return "" if value is None or value != value else str(int(value))

    for row in frame.itertuples(index=False):
        crawled = row.last_crawl is not None and row.last_crawl == row.last_crawl
        changed = sum(int(v) for v in (row.new, row.changed, row.removed) if v == v and v is not None)
        table.add_row(
            row.site, row.kind, "yes" if row.benchmark else "", row.schedule, row.root_url,
            str(row.last_crawl)[:16] if crawled else "never", number(row.pages),
            str(changed) if crawled else "", number(row.not_modified), number(row.skipped),
        )  # fmt: skip
    console.print(table)


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Option(help="Model partition of benchmark_scores.")] = "base",
    benchmark: Annotated[str, typer.Option(help="Benchmark partition of benchmark_scores.")] = "musique",
    profile: Annotated[str, typer.Option(help="Profile whose evaluation budget applies.")] = "smoke",
    home: HomeOption = None,
) -> None:
    """Score one model on one benchmark (a benchmark_scores partition; resumes a killed run), then print all scores."""
    home = _use_home(home)
    logging.basicConfig(level=logging.WARNING)

    import dagster as dg

    from webdancer_dagster.assets.evaluation import BENCHMARK_NAMES, MODELS
    from webdancer_dagster.assets.jobs import profile_config, profile_job_name
    from webdancer_dagster.definitions import defs
    from webdancer_dagster.pipeline import load_profile, run_job_in_process, validate_profile

    if model not in MODELS or benchmark not in BENCHMARK_NAMES:
        console.print(
            f"[red]no partition {model}|{benchmark}[/red]; models: {MODELS}, benchmarks: {BENCHMARK_NAMES} "
            "(declare more in evaluation.yaml)"
        )
        raise typer.Exit(2)
    chosen = load_profile(profile)
    validate_profile(defs, chosen)
    # The profile's resources too (its web's search results a query): scored in the environment the profile trains in.
    run_config = profile_config(chosen, ["benchmark_scores"])
    # The evaluate job the UI launches (the profile's own for a profile in profiles/): the asset's checks run with
    # it, and the run shows under that job's name.
    job = profile_job_name("evaluate", chosen.name) if chosen.name else "evaluate"
    with _run_history() as instance:
        result = run_job_in_process(
            defs,
            job,
            instance,
            run_config=run_config,
            partition_key=dg.MultiPartitionKey({"model": model, "benchmark": benchmark}),
        )
    _print_scores(WarehouseStore(home))
    for check in result.get_asset_check_evaluations():
        verdict = "[green]passed[/green]" if check.passed else f"[red]failed ({check.severity.value})[/red]"
        console.print(f"check {check.check_name}: {verdict}")


@app.command()
def scores(home: HomeOption = None) -> None:
    """Print every scored (model, benchmark): Pass@1, Pass@3, Cons@3, actions, format errors."""
    _print_scores(WarehouseStore(resolve_home(home)))


SCORE_HEADERS = {
    "questions": "questions",
    "format_valid_rate": "format-valid",
    "answered_rate": "answered",
    "pass_at_1": "Pass@1",
    "pass_at_k": "Pass@k",
    "cons_at_k": "Cons@k",
    "exact_match": "EM",
    "f1": "F1",
    "mean_actions": "actions",
    "format_error_rate": "format errors",
    "mean_tokens": "tokens",
}


def _print_scores(store: WarehouseStore) -> None:
    from rich.table import Table

    from webdancer_dagster.assets.evaluation import SCORES_TABLE
    from webdancer_dagster.evaluation.plots import comparison_table

    if not store.table_exists(SCORES_TABLE):
        console.print("[red]nothing scored yet[/red]; run `webdancer eval` or materialize benchmark_scores")
        raise typer.Exit(1)
    frame = comparison_table(store.read_table(SCORES_TABLE)).rename(columns=SCORE_HEADERS)
    table = Table(*frame.columns)
    for row in frame.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    console.print(table)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question, answered from the local web.")],
    base_url: Annotated[
        str | None, typer.Option(help="An OpenAI-compatible endpoint (ending in /v1); default: start llama.cpp.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model id at --base-url (required with it).")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the API key for --base-url.")
    ] = None,
    gguf: Annotated[
        Path | None, typer.Option(help="GGUF for the local llama.cpp server; default: SmolLM2-135M-Instruct.")
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Serve a trained checkpoint: 'sft', 'rl' (the recorded one) or a transformers folder."),
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Model folder or GGUF whose tokenizer counts context; default: the GGUF.")
    ] = None,
    cot: Annotated[str, typer.Option(help="'short' (instruct model) or 'long' (reasoning model).")] = "short",
    max_llm_calls: Annotated[int, typer.Option(help="Assistant turns before giving up.")] = 8,
    max_tokens: Annotated[int, typer.Option(help="Tokens per assistant turn.")] = 512,
    n_ctx: Annotated[int, typer.Option(help="The model's context window in tokens.")] = 8192,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the agent's turns.")] = 0.6,
    search_results: Annotated[
        int, typer.Option(min=1, help="Results a query of the agent's `search` (the web resource's setting).")
    ] = 10,
    timeout: Annotated[float, typer.Option(help="Seconds one model request waits for an answer per try.")] = 120.0,
    deadline: Annotated[
        float, typer.Option(help="Seconds one model request may take in all, its retries included.")
    ] = 180.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the trajectory as JSON on stdout.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the response cache.")] = False,
    home: HomeOption = None,
) -> None:
    """Answer a question with the WebDancer agent on the local web, printing each step as it happens."""
    from contextlib import ExitStack

    from webdancer_dagster.agent.factory import build_web_agent
    from webdancer_dagster.evaluation.models import GGUF_CACHE_DIR, checkpoint_server_config
    from webdancer_dagster.llm.client import (
        LLM_CACHE_FILE,
        EndpointConfig,
        LLMEndpoint,
        LLMEndpointError,
        SamplingParams,
    )
    from webdancer_dagster.llm.model_files import find_smollm2_gguf
    from webdancer_dagster.llm.server import ModelServer, ModelServerConfig
    from webdancer_dagster.llm.tokenizer import load_tokenizer
    from webdancer_dagster.resources.web import SEARCH_INDEX_DIR, site_roots
    from webdancer_dagster.web.scope import LocalSites, WebScope
    from webdancer_dagster.web.search import LocalSearch
    from webdancer_dagster.web.server import SiteServer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Console(stderr=True) if json_output else console
    if cot not in ("short", "long"):
        raise typer.BadParameter("--cot must be 'short' or 'long'")
    if base_url and not model:
        raise typer.BadParameter("--base-url needs --model (the model id that endpoint serves)")
    if sum(option is not None for option in (base_url, gguf, checkpoint)) > 1:
        raise typer.BadParameter("give at most one of --base-url, --gguf and --checkpoint")
    store = WarehouseStore(home)
    index_dir = store.home / SEARCH_INDEX_DIR
    if not store.table_exists("sites") or not index_dir.exists():
        out.print(f"[red]no local web in {store.home}[/red]: run `webdancer materialize` first")
        raise typer.Exit(1)
    model_file = gguf or (None if base_url or checkpoint else find_smollm2_gguf())
    if base_url:
        server_config = ModelServerConfig(mode="external", base_url=base_url, served_model_name=model, n_ctx=n_ctx)
    elif checkpoint:
        with out.status(f"exporting the {checkpoint} checkpoint to GGUF (once per checkpoint)…"):
            recorded = _recorded_checkpoint(store, checkpoint)
            # The template lends only its settings (context, threads); the model path is the export's.
            template = ModelServerConfig(model_path=str(recorded.path), n_ctx=n_ctx)
            server_config = checkpoint_server_config(recorded, store.artifact_dir(GGUF_CACHE_DIR), template)
        model_file = recorded.path
    else:
        server_config = ModelServerConfig(model_path=str(model_file), n_ctx=n_ctx)
    tokenizer_source = tokenizer or str(model_file or find_smollm2_gguf())
    cache_path = None if no_cache else store.home / LLM_CACHE_FILE

    with ExitStack() as stack:
        web = stack.enter_context(SiteServer(site_roots(store)))
        with out.status(f"starting the model server ({server_config.mode})…"):
            server = stack.enter_context(ModelServer(server_config))
            token_counter = load_tokenizer(tokenizer_source, str(store.home / "tokenizers"))

        def endpoint(role: str, sampling: SamplingParams) -> LLMEndpoint:
            config = EndpointConfig(
                role=role,
                base_url=server.base_url,
                model=server.model,
                api_key_env=api_key_env,
                sampling=sampling,
                cache_path=cache_path,
                served_by=server.config.served_by(),
                timeout_s=timeout,
                deadline_s=deadline,
            )
            return LLMEndpoint(config)

        summarizer = endpoint("summarizer", SamplingParams(temperature=0.0, max_tokens=512))
        policy = endpoint("policy", SamplingParams(temperature=temperature, max_tokens=max_tokens))
        scope = WebScope.every_local_site(LocalSites.of_home(store), web.proxy_url)
        agent = build_web_agent(
            policy, summarizer, LocalSearch(index_dir), scope, token_counter,
            n_ctx=n_ctx, max_llm_calls=max_llm_calls, cot_mode=cot, search_results_per_query=search_results,
        )  # fmt: skip
        out.print(f"[bold]Question:[/bold] {question}  [dim]({server.model} at {server.base_url})[/dim]")
        try:
            trajectory = agent.run(question, on_step=lambda step: _print_step(out, step))
        except LLMEndpointError as error:
            out.print(str(error), style="red", markup=False, highlight=False)
            raise typer.Exit(1) from error

    out.print(
        f"[bold]Answer:[/bold] {trajectory.answer or '(none)'}\n[bold]Termination:[/bold] {trajectory.termination}"
        f"  [dim]{trajectory.llm_calls} LLM calls, {trajectory.tool_calls} tool calls, "
        f"{trajectory.completion_tokens} tokens generated, {trajectory.latency_s:.1f}s[/dim]"
    )
    if json_output:
        typer.echo(trajectory.model_dump_json(indent=2))


def _recorded_checkpoint(store: WarehouseStore, checkpoint: str):
    """'sft' / 'rl': the folder the asset of that name recorded; anything else: a transformers folder."""
    from webdancer_dagster.evaluation.models import CheckpointMissingError, RecordedCheckpoint, recorded_checkpoint
    from webdancer_dagster.shared.hashing import folder_sha256

    if checkpoint in ("sft", "rl"):
        try:
            return recorded_checkpoint(store, f"{checkpoint}_checkpoint")
        except CheckpointMissingError as error:
            console.print(f"[red]{error}[/red]")
            raise typer.Exit(1) from error
    folder = Path(checkpoint)
    if not (folder / "config.json").is_file():
        raise typer.BadParameter(f"--checkpoint {checkpoint!r} is neither sft, rl nor a transformers model folder")
    return RecordedCheckpoint(folder, folder_sha256(folder), "folder_checkpoint")


def _print_step(out: Console, step: Step) -> None:
    """One agent step as a panel: thought, action with arguments, and the start of the observation."""
    from rich.panel import Panel
    from rich.text import Text

    text = Text()
    text.append("Thought: ", style="bold").append(_clip(step.thought or "(none)", 600) + "\n")
    if step.answer is not None:
        text.append("Answer: ", style="bold green").append(step.answer)
    elif step.arguments is not None:
        text.append(f"{step.action}: ", style="bold cyan").append(json.dumps(step.arguments, ensure_ascii=False))
    if step.observation is not None:
        text.append("\nObservation: ", style="bold").append(_clip(step.observation, 800))
    if step.error and step.error != step.observation:
        text.append("\nError: ", style="bold red").append(_clip(step.error, 300))
    subtitle = f"{step.completion_tokens} tokens, {step.llm_latency_s:.1f}s"
    if step.format_issues:
        subtitle += " · " + "; ".join(step.format_issues)
    out.print(Panel(text, title=f"step {step.index + 1} · {step.action}", subtitle=subtitle, title_align="left"))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more chars)"


@app.command()
def lineage(
    asset: Annotated[str, typer.Argument(help="Asset key, e.g. benchmark_scores or search_index.")],
    partition: Annotated[
        str | None, typer.Option(help="Partition of a partitioned asset, e.g. 'musique|sft' or a site.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the chain as JSON on stdout.")] = False,
    home: HomeOption = None,
) -> None:
    """Print the chain that produced an asset's latest materialization, as the run history recorded it: every
    upstream asset and partition with its data version, time, run and identifying metadata, and whether each
    materialization read its inputs' current versions."""
    _use_home(home)

    import dagster as dg
    from rich.markup import escape

    from webdancer_dagster.definitions import defs
    from webdancer_dagster.lineage import LineageError, describe
    from webdancer_dagster.lineage import lineage as walk

    # Read only: no run is started, and runs a killed process left unfinished are left for the next run to report.
    with dg.DagsterInstance.get() as instance:
        try:
            chain = walk(instance, defs.resolve_asset_graph(), asset, partition)
        except LineageError as error:
            console.print(f"[red]{escape(str(error))}[/red]", highlight=False)
            raise typer.Exit(2) from error
    if json_output:
        typer.echo(json.dumps(chain.to_dict(), indent=2))
        return
    for line in describe(chain):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
