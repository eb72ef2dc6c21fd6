"""Materialize `reference_qa_pairs` in a process whose files may not grow past a size, as on a full disk.

``python full_disk_runner.py HOME QA_FILE MAX_FILE_BYTES``: RLIMIT_FSIZE makes every write past MAX_FILE_BYTES fail with
a real EFBIG (SIGXFSZ, which would kill the process instead, is ignored), whatever the file: the warehouse, its
write-ahead log, a Parquet export; -1 sets no limit (for a home the caller made read-only). Then reads the table back
in the same process. Prints {"success": ..., "error": the step's error message, "rows": the rows read, or why none
could be} as the last line.
"""

import json
import resource
import signal
import sys

import dagster as dg

from webdancer_dagster.assets import qa
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.warehouse import WarehouseStore


def main(home: str, qa_file: str, max_file_bytes: str) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(max_file_bytes)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    result = dg.materialize(
        [qa.reference_qa_pairs],
        resources={"warehouse": Warehouse(home=home)},
        run_config={"ops": {"reference_qa_pairs": {"config": {"path": qa_file}}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    failure = None if result.success else result.failure_data_for_node("reference_qa_pairs")
    error = failure.error if failure is not None else None
    messages = []
    while error is not None:
        messages.append(error.message.strip())
        error = error.cause
    try:
        rows: int | str = len(WarehouseStore(home).read_table("reference_qa_pairs"))
    except Exception as read_error:  # noqa: BLE001 - reported to the test, which says what it expected
        rows = f"{type(read_error).__name__}: {read_error}"
    print(json.dumps({"success": result.success, "error": "\n".join(messages), "rows": rows}))


if __name__ == "__main__":
    main(*sys.argv[1:])
