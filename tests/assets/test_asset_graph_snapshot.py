"""The asset graph (keys, groups, deps, checks, partitions, jobs, schedules) matches its checked-in snapshot, so an
unintended change to the graph fails here. An intended one is recorded by rerunning with UPDATE_SNAPSHOTS=1.

The graph is read in a fresh interpreter from `webdancer_dagster.definitions` with empty evaluation and site
registries: the built-in graph, whatever `$WEBDANCER_EVALUATION`, `$WEBDANCER_SITES` or the repository's
`evaluation.yaml` and `sites.yaml` declare (both are read when the definitions are imported).
"""

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]
SNAPSHOT = REPO / "tests" / "snapshots" / "asset_graph.json"
UPDATE_ENV = "UPDATE_SNAPSHOTS"

DESCRIBE = """
import json
import dagster as dg
from webdancer_dagster.definitions import defs

def partitions(definition):
    if definition is None:
        return None
    if isinstance(definition, dg.MultiPartitionsDefinition):
        return {"multi": {d.name: list(d.partitions_def.get_partition_keys()) for d in definition.partitions_defs}}
    if isinstance(definition, dg.StaticPartitionsDefinition):
        return {"static": list(definition.get_partition_keys())}
    return {type(definition).__name__: str(definition)}

graph = defs.resolve_asset_graph()
assets = {}
for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
    node = graph.get(key)
    assets[key.to_user_string()] = {
        "group": node.group_name,
        "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
        "partitions": partitions(node.partitions_def),
        "checks": {
            check.name: {"blocking": graph.get_check_spec(check).blocking}
            for check in sorted(node.check_keys, key=lambda c: c.name)
        },
    }
print(json.dumps({
    "assets": assets,
    "jobs": sorted(job.name for job in defs.jobs or []),
    "schedules": sorted(schedule.name for schedule in defs.schedules or []),
}))
"""


def _built_in_graph(tmp_path: Path) -> dict:
    evaluation = tmp_path / "evaluation.yaml"
    evaluation.write_text("models: []\nbenchmarks: []\n")
    sites = tmp_path / "sites.yaml"
    sites.write_text("contact_url: null\nsites: []\n")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("WEBDANCER_")}
    environment.update(
        WEBDANCER_HOME=str(tmp_path / "home"),
        WEBDANCER_EVALUATION=str(evaluation),
        WEBDANCER_SITES=str(sites),
        DAGSTER_HOME=str(tmp_path),
    )
    command = [sys.executable, "-c", DESCRIBE]
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"the definitions did not load:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_asset_graph_matches_its_snapshot(tmp_path: Path) -> None:
    graph = _built_in_graph(tmp_path)
    rendered = json.dumps(graph, indent=2) + "\n"
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(rendered)

    expected = SNAPSHOT.read_text() if SNAPSHOT.is_file() else ""

    diff = "".join(difflib.unified_diff(expected.splitlines(True), rendered.splitlines(True), str(SNAPSHOT), "now"))
    assert rendered == expected, (
        f"the asset graph differs from {SNAPSHOT}:\n{diff}\n"
        f"If the change is intended, record it with `{UPDATE_ENV}=1 .venv/bin/pytest "
        f"{Path(__file__).relative_to(REPO)}` and commit {SNAPSHOT.relative_to(REPO)} with it."
    )
