"""One `crawl_pages` run in its own process, as `webdancer crawl` or a Dagster step runs it; prints its summary.

``python crawl_racer.py HOME SITE CONFIG_JSON MEET_DIR``: before diffing against the previous snapshot the run
drops a file in MEET_DIR and waits (at most MEET_TIMEOUT_S) until the other racer has dropped one too, so two
crawls that both read the previous snapshot before either writes really do meet there.
"""

import json
import sys
import time
import uuid
from pathlib import Path

import dagster as dg

from webdancer_dagster.assets import corpus
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.resources.web import WebEnvironment
from webdancer_dagster.web import crawl_store

MEET_TIMEOUT_S = 20.0
RACERS = 2


def main(home: str, site: str, config: str, meet_dir: str) -> None:
    real_diff = crawl_store.diff_snapshot

    def diff_once_both_have_read(previous, crawled, crawl_id):
        meet = Path(meet_dir)
        (meet / f"{uuid.uuid4().hex}.read").touch()
        deadline = time.monotonic() + MEET_TIMEOUT_S
        while len(list(meet.glob("*.read"))) < RACERS and time.monotonic() < deadline:
            time.sleep(0.05)
        return real_diff(previous, crawled, crawl_id)

    crawl_store.diff_snapshot = diff_once_both_have_read
    warehouse = Warehouse(home=home)
    result = dg.materialize(
        [corpus.web_sites, corpus.crawl_pages],
        selection=["crawl_pages"],
        partition_key=site,
        run_config=json.loads(config),
        resources={"warehouse": warehouse, "web": WebEnvironment(warehouse=warehouse)},
        instance=dg.DagsterInstance.ephemeral(),
    )
    print(json.dumps(corpus.crawl_summary(result)))


if __name__ == "__main__":
    main(*sys.argv[1:])
