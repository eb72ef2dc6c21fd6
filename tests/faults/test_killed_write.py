"""kill -9 of a process while it writes the warehouse: the table holds one whole version, the newest committed one or
the next, never a mix or nothing; its Parquet export is one whole version too; and the home takes the next write."""

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from webdancer_dagster.warehouse import WarehouseStore

ROWS = 200_000
# Replaces partition "a" of the table `versions` again and again (its rows deleted, then the new ones inserted, as a
# crawl replaces its site's pages), each time with ROWS rows of one version; prints "committed N" after each write.
# With argv[2] == "hold", every insert first prints "inserting N" and waits a second: the rows are deleted by then.
WRITE_FOREVER = f"""
import sys, time
import pandas as pd
from webdancer_dagster import warehouse
version = 0
if sys.argv[2] == "hold":
    real_insert = warehouse._insert
    def held_insert(con, table, frame):
        print("inserting", version, flush=True)
        time.sleep(1.0)
        real_insert(con, table, frame)
    warehouse._insert = held_insert
store = warehouse.WarehouseStore(sys.argv[1])
while True:
    frame = pd.DataFrame({{"site": "a", "version": version, "row": range({ROWS}), "text": f"v{{version}}" + "-" * 40}})
    store.write_tables(partition=("site", "a"), partition_replacements={{"versions": frame}})
    print("committed", version, flush=True)
    version += 1
"""


def kill_while_writing(home, kill_at: str | float) -> int:
    """Start the writer, and once it has committed twice kill it: when it announces its next insert ("insert"), or
    `kill_at` seconds later. Returns the last version it reported committed."""
    hold = "hold" if kill_at == "insert" else "run"
    writer = subprocess.Popen([sys.executable, "-c", WRITE_FOREVER, str(home), hold], stdout=subprocess.PIPE, text=True)
    committed: list[int] = []
    try:
        while len(committed) < 2 or kill_at == "insert":
            what, version = writer.stdout.readline().split()
            if what == "committed":
                committed.append(int(version))
            elif len(committed) >= 2:
                break  # inserting, after the partition's rows were deleted in the same transaction
        if kill_at != "insert":
            time.sleep(kill_at)  # into a later write: most of the loop's time is spent writing
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    committed += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("committed")]
    return max(committed)


# "insert": killed mid-transaction, after the partition's old rows were deleted; the delays land anywhere in a write.
@pytest.mark.parametrize("kill_at", ["insert", 0.0, 0.1, 0.25, 0.5])
def test_a_write_killed_half_way_leaves_one_whole_version(isolated_home, kill_at):
    last = kill_while_writing(isolated_home, kill_at)
    store = WarehouseStore(isolated_home)
    table = store.read_table("versions")
    [version] = table["version"].unique()  # one version, not a mix and not nothing
    assert version in ((last,) if kill_at == "insert" else (last, last + 1))
    assert len(table) == ROWS and table["row"].is_unique
    export = pd.read_parquet(isolated_home / "exports" / "versions.parquet")
    [exported] = export["version"].unique()
    assert exported in (last, version) and len(export) == ROWS  # exported after each commit

    store.replace_table("versions", pd.DataFrame({"site": ["a"], "version": [-1], "row": [0], "text": ["after"]}))
    assert store.read_table("versions")["text"].tolist() == ["after"]
