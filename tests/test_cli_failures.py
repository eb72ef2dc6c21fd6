"""The CLI as a user runs it: a failed Dagster run ends the command with the cause, not a long pretty traceback."""

import subprocess
import sys
from pathlib import Path


def test_a_failed_run_exits_with_its_cause(tmp_path: Path) -> None:
    # Scoring on an empty home fails at its first read. With rich's pretty tracebacks the process then spent
    # minutes and gigabytes on the error chain; the timeout only keeps a regression from hanging the suite.
    command = [sys.executable, "-m", "webdancer_dagster.cli", "eval", "--home", str(tmp_path / "home")]

    finished = subprocess.run(command, capture_output=True, text=True, timeout=240)

    assert finished.returncode == 1
    assert finished.stderr.rstrip().endswith(
        f"LookupError: table 'sites' does not exist in {tmp_path / 'home' / 'warehouse.duckdb'}; "
        "materialize its asset first"
    )
    assert "locals" not in finished.stderr
