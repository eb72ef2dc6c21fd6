"""A home that fills up or turns read-only under a materialization: the run fails with an error naming the file and
the reason, and the last good tables stay readable, in the warehouse and in their Parquet exports."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from webdancer_dagster.assets import qa
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.warehouse import WarehouseStore

RUNNER = Path(__file__).with_name("full_disk_runner.py")
RELEASED_QA = DATA_DIR / "webdancer_samples" / "sample_qa.jsonl"
GOOD_ROWS = 10
# Far below what the 200 released pairs take in the write-ahead log (about 64 KiB), far above the file's first page.
MAX_FILE_BYTES = 16 * 1024


def materialize_reference_pairs(home: Path, qa_file: Path) -> None:
    result = dg.materialize(
        [qa.reference_qa_pairs],
        resources={"warehouse": Warehouse(home=str(home))},
        run_config={"ops": {"reference_qa_pairs": {"config": {"path": str(qa_file)}}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success


@pytest.fixture
def good_home(isolated_home, tmp_path) -> tuple[Path, pd.DataFrame]:
    """A home holding the first 10 released pairs: the last good data."""
    first = tmp_path / "first_pairs.jsonl"
    first.write_text("".join(RELEASED_QA.read_text().splitlines(keepends=True)[:GOOD_ROWS]))
    materialize_reference_pairs(isolated_home, first)
    good = WarehouseStore(isolated_home).read_table("reference_qa_pairs")
    assert len(good) == GOOD_ROWS
    return isolated_home, good


def run_all_pairs(home: Path, max_file_bytes: int, wrap: list[str] | None = None) -> dict:
    command = [sys.executable, str(RUNNER), str(home), str(RELEASED_QA), str(max_file_bytes)]
    done = subprocess.run([*(wrap or []), *command], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_last_good_data_readable(home: Path, good: pd.DataFrame) -> None:
    store = WarehouseStore(home)
    pd.testing.assert_frame_equal(store.read_table("reference_qa_pairs"), good)
    pd.testing.assert_frame_equal(pd.read_parquet(home / "exports" / "reference_qa_pairs.parquet"), good)


@pytest.mark.slow
def test_a_full_disk_fails_the_write_clearly_and_keeps_the_previous_tables(good_home):
    home, good = good_home
    outcome = run_all_pairs(home, MAX_FILE_BYTES)
    assert not outcome["success"]
    assert f'Could not write file "{home / "warehouse.duckdb.wal"}": File too large' in outcome["error"]
    assert "reference_qa_pairs keep their previous version" in outcome["error"]
    assert "cannot rollback" not in outcome["error"]  # the failed commit's error is the one reported
    assert outcome["rows"] == GOOD_ROWS
    assert_last_good_data_readable(home, good)

    materialize_reference_pairs(home, RELEASED_QA)  # with room again, the same home takes the write
    assert len(WarehouseStore(home).read_table("reference_qa_pairs")) == 200


# Appends a row to `notes` with writes capped at MAX_FILE_BYTES: its log entry fits, the table's new export does not.
APPEND_UNDER_LIMIT = """
import resource, signal, sys
import pandas as pd
from webdancer_dagster.warehouse import WarehouseStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    WarehouseStore(sys.argv[1]).write_tables(appends={"notes": pd.DataFrame({"text": ["one more"]})})
except Exception as error:
    print("\\n".join([str(error), *getattr(error, "__notes__", [])]))
"""


@pytest.mark.slow
def test_an_export_the_full_disk_cuts_off_keeps_the_previous_export_and_says_the_tables_were_written(isolated_home):
    store = WarehouseStore(isolated_home)
    # Random text does not compress: the Parquet export is far larger than the limit, the appended row far smaller.
    notes = pd.DataFrame({"text": [os.urandom(3000).hex() for _ in range(40)]})
    store.write_tables(appends={"notes": notes})
    export = isolated_home / "exports" / "notes.parquet"
    done = subprocess.run(
        [sys.executable, "-c", APPEND_UNDER_LIMIT, str(isolated_home), str(MAX_FILE_BYTES)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "File too large" in done.stdout
    assert f"notes were written to {store.database_path}, but not exported" in done.stdout
    assert len(store.read_table("notes")) == len(notes) + 1  # the append itself was committed
    pd.testing.assert_frame_equal(pd.read_parquet(export), notes)  # the previous export, whole
    assert sorted(path.name for path in export.parent.iterdir()) == ["notes.parquet"]  # no cut-off file left


def read_only_wrapper(home: Path) -> list[str] | None:
    """A command prefix that runs its command with `home` read-only: root ignores file modes, so the home is mounted
    read-only in a mount namespace of the command's own (nothing outside it sees the mount); None if root cannot."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = f'mount --bind "{home}" "{home}" && mount -o remount,ro,bind "{home}" && exec "$@"'
    wrapper = [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "read-only-home"]
    probe = subprocess.run([*wrapper, "true"], capture_output=True, timeout=30)
    return wrapper if probe.returncode == 0 else None


def make_read_only(home: Path) -> None:
    for path in [home, *home.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.mark.slow
def test_a_read_only_home_fails_the_write_clearly_and_its_tables_stay_readable(good_home):
    home, good = good_home
    if os.geteuid() == 0:
        wrapper = read_only_wrapper(home)
        if wrapper is None:
            pytest.skip("root ignores file modes and may not mount here: no way to make the home read-only")
        outcome, reason = run_all_pairs(home, -1, wrapper), os.strerror(30)  # EROFS
    else:
        make_read_only(home)
        try:
            outcome, reason = run_all_pairs(home, -1), os.strerror(13)  # EACCES
        finally:
            for path in [home, *home.rglob("*")]:
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert not outcome["success"]
    assert f'Cannot open file "{home / "warehouse.duckdb"}": {reason}' in outcome["error"]
    assert outcome["rows"] == GOOD_ROWS  # read back inside the read-only home
    assert_last_good_data_readable(home, good)
