"""`webdancer ...`: the pipeline, the offline web and the agent from a terminal."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from webdancer_dagster.warehouse import WarehouseStore, resolve_home

app = typer.Typer(help="WebDancer on Dagster: crawl, synthesize, train and evaluate web agents.", no_args_is_help=True)
console = Console()

HomeOption = Annotated[Path | None, typer.Option("--home", help="WebDancer home (default $WEBDANCER_HOME or ./.webdancer).")]


def _dagster_home(home: Path) -> Path:
    from webdancer_dagster.pipeline import ensure_dagster_home

    return ensure_dagster_home(Path(os.environ.get("DAGSTER_HOME") or home / "dagster"))


@app.command()
def materialize(
    profile: Annotated[str, typer.Option(help="Profile name (smoke, full) or a run-config YAML path.")] = "smoke",
    select: Annotated[list[str] | None, typer.Option(help="Only these assets (repeatable).")] = None,
    home: HomeOption = None,
) -> None:
    """Materialize the whole asset graph (or a selection) in dependency order."""
    home = resolve_home(home)
    os.environ["WEBDANCER_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(_dagster_home(home))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import dagster as dg

    from webdancer_dagster.definitions import defs
    from webdancer_dagster.pipeline import load_profile, materialize_all

    with dg.DagsterInstance.get() as instance:
        results = materialize_all(defs, instance, run_config=load_profile(profile), selection=select)
    console.print(f"[green]materialized {len(results)} runs[/green] into {home}")
    console.print(
        f"Open the UI:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} WEBDANCER_HOME={home} "
        ".venv/bin/dagster dev -h 127.0.0.1 -p 3000   (or: make ui)"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 3000,
    home: HomeOption = None,
) -> None:
    """Start the Dagster UI on 127.0.0.1 over the same run history the CLI writes."""
    home = resolve_home(home)
    env = {**os.environ, "WEBDANCER_HOME": str(home), "DAGSTER_HOME": str(_dagster_home(home))}
    workspace = Path(__file__).resolve().parent.parent / "workspace.yaml"
    command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port), "-w", str(workspace)]
    raise typer.Exit(subprocess.call(command, env=env))


@app.command()
def search(
    queries: Annotated[list[str], typer.Argument(help="One to three queries.")],
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
        console.print(search_tool(LocalSearch(index_dir), list(queries)), markup=False, highlight=False)
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
    home = resolve_home(home)
    os.environ["WEBDANCER_HOME"] = str(home)
    os.environ["DAGSTER_HOME"] = str(_dagster_home(home))
    logging.basicConfig(level=logging.WARNING)

    import dagster as dg

    from webdancer_dagster.assets.corpus import SITE_NAMES
    from webdancer_dagster.definitions import defs
    from webdancer_dagster.pipeline import load_profile

    if site not in SITE_NAMES:
        console.print(f"[red]unknown site {site!r}[/red]; sites: {', '.join(SITE_NAMES)}")
        raise typer.Exit(2)
    store = WarehouseStore(home)
    run_config = {"ops": {k: v for k, v in (load_profile(profile).get("ops") or {}).items() if k == "crawl_pages"}}
    selection = ["crawl_pages"] if store.table_exists("sites") else ["web_sites", "crawl_pages"]
    with dg.DagsterInstance.get() as instance:
        if "web_sites" in selection:
            dg.materialize(defs.assets, selection=["web_sites"], instance=instance, resources=defs.resources)
        dg.materialize(
            defs.assets, selection=["crawl_pages"], partition_key=site, instance=instance,
            resources=defs.resources, run_config=run_config,
        )
    last = store.query("SELECT * FROM crawls WHERE site = ? ORDER BY started_at DESC LIMIT 1", [site])
    console.print_json(json.dumps(last.iloc[0].to_dict(), default=str))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
