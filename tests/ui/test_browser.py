"""The Dagster UI in a real browser: Debian's headless Chromium, driven by Playwright, over a webserver started from
`workspace.yaml` on a fresh home. It opens the asset graph, materializes `web_sites` from its asset page, waits for
the run to succeed, checks that the asset's metadata and its plots are shown, and that the Overview timeline shows
the run the CLI made before the UI started.

Screenshots are test artefacts under the test's tmp dir (`screenshots/`) and, when $WEBDANCER_SCREENSHOT_DIR is set,
are copied there too: `asset_graph.png` is the README's picture of the graph (docs/asset_graph.png).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from webserver_wait import wait_for_webserver

from webdancer_dagster.definitions import defs
from webdancer_dagster.llm.server import free_port
from webdancer_dagster.pipeline import ensure_dagster_home, materialize_all
from webdancer_dagster.processes import die_with_parent

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# What this offline machine needs: no sandbox (root in a container), no GPU, and nothing that phones home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous on purpose: on 2 busy cores the code location takes tens of seconds to load in each of the webserver,
# the run and the step process. These are limits on waiting, never on speed.
SERVER_START_S = 300
RUN_FINISH_S = 300
UI_WAIT_MS = 120_000
SHUTDOWN_S = 20


@dataclass
class DagsterUI:
    url: str
    instance: dg.DagsterInstance


def _session_members(session_id: int) -> list[int]:
    """Live processes of a session (the server's `start_new_session`): the webserver and everything it started."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _server_preexec() -> None:
    """Dies with the test, and takes SIGINT even when pytest runs as a background job of a script (which starts it
    with SIGINT ignored, a setting children inherit: `dagster dev` would then never stop on SIGINT)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_session(process: subprocess.Popen) -> list[int]:
    """SIGINT to the whole session (how `dagster dev` wants to be stopped), SIGKILL to what is left; returns the
    processes still alive after that."""
    for sig, grace in ((signal.SIGINT, SHUTDOWN_S), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if process.poll() is None:
                time.sleep(0.5)
                continue
            if not _session_members(process.pid):
                return []
            time.sleep(0.5)
    process.wait(timeout=10)
    return _session_members(process.pid)


@pytest.fixture
def dagster_ui(isolated_home: Path, tmp_path: Path) -> Iterator[DagsterUI]:
    """`dagster dev` over this test's home and run history, with `web_sites` materialized once already by the CLI's
    path (so its plots have a line); the webserver, its daemon, code server and runs all die with the test."""
    dagster_home = ensure_dagster_home(Path(os.environ["DAGSTER_HOME"]))
    with dg.DagsterInstance.get() as instance:
        port = free_port()
        log_path = tmp_path / "dagster-dev.log"
        env = {**os.environ, "WEBDANCER_HOME": str(isolated_home), "DAGSTER_HOME": str(dagster_home)}
        command = [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(port)]
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [*command, "-w", str(REPO / "workspace.yaml")],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_server_preexec,
            )
        try:
            # While the webserver loads the code: as `webdancer materialize` runs it (the `crawl` job, in process).
            [result] = materialize_all(defs, instance, selection=["web_sites"])
            assert result.success
            url = f"http://127.0.0.1:{port}"
            wait_for_webserver(url, server, SERVER_START_S, log=lambda: log_path.read_text()[-3000:])
            yield DagsterUI(url=url, instance=instance)
        finally:
            survivors = _stop_session(server)
        assert not survivors, f"processes of the webserver outlived it: {survivors}"


@pytest.fixture
def page(tmp_path: Path):
    """A page in headless Chromium with a fresh profile; the Dagster community pop-up is skipped whenever it shows."""
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run scripts/bootstrap.sh (apt-get install chromium)"
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1600, "height": 900},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(UI_WAIT_MS)
            skip = page.get_by_role("button", name="Skip", exact=True)
            page.add_locator_handler(skip, lambda: skip.click())
            yield page
        finally:
            context.close()


class Screenshots:
    """PNGs under the test's tmp dir, copied to $WEBDANCER_SCREENSHOT_DIR when it is set."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "screenshots"
        self.dir.mkdir()
        extra = os.environ.get("WEBDANCER_SCREENSHOT_DIR")
        self.extra = Path(extra) if extra else None

    def take(self, page, name: str) -> Path:
        path = self.dir / f"{name}.png"
        page.screenshot(path=str(path))
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)
        return path


def _frame_graph(page, asset_names: list[str]) -> None:
    """Hide the side panels, then centre and zoom the graph until it fills the view: the UI fits the graph to the
    view only when it first lays it out, while the panels are still open."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Hide navigation").click()
    page.get_by_role("button", name="panel_show_right", exact=True).click()
    expect(page.get_by_placeholder("Jump to")).to_be_hidden()
    # The graph's viewport: the first element around its zoom buttons that is about as wide as the window.
    view = page.get_by_role("button", name="zoom_in", exact=True).evaluate(
        """button => { let e = button; while (e.parentElement && e.getBoundingClientRect().width < innerWidth * 0.7) {
            e = e.parentElement; } const r = e.getBoundingClientRect();
            return {x: r.x, y: r.y, width: r.width, height: r.height}; }"""
    )

    def bounds() -> tuple[float, float, float, float]:
        boxes = [page.get_by_text(name, exact=True).first.bounding_box() for name in asset_names]
        return (
            min(b["x"] for b in boxes),
            min(b["y"] for b in boxes),
            max(b["x"] + b["width"] for b in boxes),
            max(b["y"] + b["height"] for b in boxes),
        )

    centre = (view["x"] + view["width"] / 2, view["y"] + view["height"] / 2)
    x0, y0, x1, y1 = bounds()
    start = (view["x"] + 8, view["y"] + view["height"] - 8)  # a bottom-left corner the fitted graph leaves empty
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + centre[0] - (x0 + x1) / 2, start[1] + centre[1] - (y0 + y1) / 2, steps=10)
    page.mouse.up()
    page.mouse.move(*centre)
    for _ in range(40):
        x0, y0, x1, y1 = bounds()
        if x1 - x0 > view["width"] * 0.8 or y1 - y0 > view["height"] * 0.75:
            break
        page.keyboard.down("Control")
        page.mouse.wheel(0, -20)
        page.keyboard.up("Control")
        page.wait_for_timeout(150)


def test_materialize_from_the_ui_and_see_metadata_and_plots(dagster_ui: DagsterUI, page, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = Screenshots(tmp_path)
    asset_names = sorted(key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys())
    groups = sorted({spec.group_name for spec in defs.resolve_all_asset_specs() if spec.group_name})
    expanded = ",".join(f"global@global:{group}" for group in groups)
    graph_url = f"{dagster_ui.url}/asset-groups?expanded={urllib.parse.quote(expanded)}"

    # The asset graph: every asset of the definitions is on it (the code location loaded in the webserver).
    page.goto(graph_url)
    for name in asset_names:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()

    # Materialize web_sites from its asset page, follow the launched run to its end.
    page.goto(f"{dagster_ui.url}/assets/web_sites")
    page.get_by_role("button").filter(has_text=re.compile(r"^Materialize$")).click()
    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    short_id = toast.inner_text().split()[-1]
    # The toast's "View" link leads to the run; the toast fades, so follow its address rather than click it.
    run_path = page.get_by_role("link", name="View", exact=True).get_attribute("href")
    assert run_path is not None and re.fullmatch(rf"/runs/{short_id}[0-9a-f-]+", run_path), run_path
    page.goto(dagster_ui.url + run_path)
    outcome = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(outcome).to_be_visible(timeout=RUN_FINISH_S * 1000)
    shots.take(page, "run")
    assert outcome.inner_text() == "Success", f"the UI's run {short_id} ended {outcome.inner_text()}"
    [run] = [r for r in dagster_ui.instance.get_runs() if r.run_id.startswith(short_id)]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    latest = dagster_ui.instance.get_latest_materialization_event(dg.AssetKey("web_sites"))
    assert latest is not None and latest.run_id == run.run_id
    metadata = latest.asset_materialization.metadata

    # The asset page: the UI run's metadata, the Markdown preview rendered as a table, then the plots.
    page.goto(f"{dagster_ui.url}/assets/web_sites")
    for key in ("sites", "pages_total", "live_sites", "root_urls", "parquet"):
        expect(page.get_by_role("cell", name=key, exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name=str(metadata["pages_total"].value), exact=True)).to_be_visible()
    preview = page.locator(".dagster-markdown table").first
    expect(preview.get_by_role("columnheader", name="root_url", exact=True)).to_be_visible()
    for site in ("python-docs", "wiki", "musique"):
        expect(preview.get_by_role("cell", name=site, exact=True)).to_be_visible()
    page.get_by_role("cell", name="sites", exact=True).scroll_into_view_if_needed()
    shots.take(page, "asset_metadata")

    page.get_by_role("button", name="Plots").click()
    numeric = sorted(
        key for key, value in metadata.items() if isinstance(value, dg.IntMetadataValue | dg.FloatMetadataValue)
    )
    assert {"pages_total", "live_sites", "dagster/row_count"} <= set(numeric)
    for key in numeric:
        expect(page.get_by_text(key, exact=True)).to_be_visible()
    expect(page.locator("canvas")).to_have_count(len(numeric))
    page.get_by_text(numeric[0], exact=True).scroll_into_view_if_needed()
    shots.take(page, "asset_plots")

    # The Overview timeline: the CLI's run under its job's name (the UI's own run is a jobless materialization).
    page.goto(f"{dagster_ui.url}/overview/activity/timeline")
    # Its row links to the job in the code location the UI loaded from workspace.yaml.
    expect(page.locator('a[href*="/locations/webdancer_dagster/jobs/crawl"]').first).to_be_visible()
    expect(page.get_by_text("Jobless asset materializations", exact=True).first).to_be_visible()
    shots.take(page, "timeline")

    # The README's picture: the whole graph, groups expanded, web_sites materialized.
    page.goto(graph_url)
    expect(page.get_by_text("web_sites", exact=True).first).to_be_visible()
    _frame_graph(page, asset_names)
    shots.take(page, "asset_graph")
