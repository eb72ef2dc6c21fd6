"""Dagster overhead: materializing `search_index` through Dagster vs calling its domain function directly.

Both paths index the same pages (the 2Wiki + MuSiQue corpora loaded straight into the `pages` table, so no crawl
is needed) in the same process. Target: Dagster adds under 1.5 s.

    .venv/bin/python benchmarks/bench_dagster_overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import dagster as dg
import pandas as pd

from webdancer_dagster.assets.corpus import search_index
from webdancer_dagster.paths import DATA_DIR
from webdancer_dagster.resources.warehouse import Warehouse
from webdancer_dagster.warehouse import WarehouseStore
from webdancer_dagster.web.search import build_search_index

RESULTS = Path(__file__).resolve().parent / "results"


def load_pages() -> pd.DataFrame:
    rows = []
    for site, path in [
        ("wiki", DATA_DIR / "wiki2/2wikimultihopqa_corpus.json"),
        ("musique", DATA_DIR / "musique/musique_corpus.json"),
    ]:
        for i, doc in enumerate(json.loads(path.read_text())):
            rows.append(
                {
                    "site": site,
                    "url": f"http://{site}.webdancer.test/p/{i}.html",
                    "title": doc["title"],
                    "text": doc["text"],
                    "content_hash": str(hash(doc["text"])),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = WarehouseStore(Path(tmp) / "home")
        store.replace_table("pages", load_pages())
        direct, through_dagster = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            docs = store.query("SELECT url, title, text, site, content_hash FROM pages ORDER BY url")
            build_search_index(docs[["url", "title", "text", "site"]], store.home / "direct_index")
            direct.append(time.perf_counter() - started)

            started = time.perf_counter()
            result = dg.materialize(
                [search_index],
                resources={"warehouse": Warehouse(home=str(store.home))},
                instance=dg.DagsterInstance.ephemeral(),
            )
            through_dagster.append(time.perf_counter() - started)
            assert result.success
        docs_count = len(docs)
    direct_s, dagster_s = statistics.median(direct), statistics.median(through_dagster)
    summary = {
        "benchmark": "dagster_overhead",
        "docs": docs_count,
        "repeats": args.repeats,
        "direct_s": round(direct_s, 3),
        "dagster_s": round(dagster_s, 3),
        "extra_s": round(dagster_s - direct_s, 3),
        "ratio": round(dagster_s / direct_s, 3),
        "target_extra_s": 1.5,
        "meets_target": dagster_s - direct_s < 1.5,
    }
    print(
        f"search_index over {docs_count} docs: direct {direct_s:.2f}s, via Dagster {dagster_s:.2f}s "
        f"-> extra {summary['extra_s']:.2f}s (ratio {summary['ratio']:.2f}x; target extra < 1.5 s)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dagster_overhead.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
