"""Crawl speed: pages/s of the Scrapy crawler on the python3.11-doc site against `wget --mirror` of the same site.

Both go through the same local site server (as its HTTP proxy) in the same run. The crawler's figure includes
main-text extraction and link ranking; wget only downloads. Target: at least 0.5x wget.

    .venv/bin/python benchmarks/bench_crawl.py [--concurrency 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from webdancer_dagster.paths import PYTHON_DOC_DIR
from webdancer_dagster.web.crawl import CrawlLimits, crawl_site
from webdancer_dagster.web.server import SiteServer
from webdancer_dagster.web.sites import site_host, site_root_url

RESULTS = Path(__file__).resolve().parent / "results"
SITE = "python-docs"


def wget_mirror(proxy_url: str, out_dir: Path) -> tuple[int, float]:
    """HTML pages wget mirrored and the seconds it took (wget exits 8 when some link 404s: not a failure)."""
    if shutil.which("wget") is None:
        raise SystemExit("wget is not installed (apt-get install wget; scripts/bootstrap.sh does)")
    command = [
        "wget", "--mirror", "--no-verbose", "--no-parent", "-e", "robots=off", "-e", "use_proxy=yes",
        "-e", f"http_proxy={proxy_url}", "-P", str(out_dir), site_root_url(SITE),
    ]  # fmt: skip
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if completed.returncode not in (0, 8):
        raise SystemExit(f"wget failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return sum(1 for _ in out_dir.rglob("*.html")), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each; medians are compared")
    args = parser.parse_args()
    wget_runs, crawl_runs = [], []
    limits = CrawlLimits(max_pages=100_000, max_depth=100, concurrency=args.concurrency)
    with tempfile.TemporaryDirectory() as tmp, SiteServer({site_host(SITE): PYTHON_DOC_DIR}) as server:
        for repeat in range(args.repeats):
            wget_pages, seconds = wget_mirror(server.proxy_url, Path(tmp) / f"wget-{repeat}")
            wget_runs.append(seconds)
            started = time.perf_counter()
            result = crawl_site(site_root_url(SITE), server.proxy_url, limits, Path(tmp) / f"scrapy-{repeat}")
            crawl_runs.append(time.perf_counter() - started)
    wget_s, crawl_s = statistics.median(wget_runs), statistics.median(crawl_runs)
    crawl_pages = len(result.pages)
    wget_rate, crawl_rate = wget_pages / wget_s, crawl_pages / crawl_s
    summary = {
        "benchmark": "crawl",
        "site": SITE,
        "repeats": args.repeats,
        "concurrency": args.concurrency,
        "wget_pages": wget_pages,
        "wget_s": round(wget_s, 2),
        "wget_pages_per_s": round(wget_rate, 1),
        "crawl_pages": crawl_pages,
        "crawl_s": round(crawl_s, 2),
        "crawl_pages_per_s": round(crawl_rate, 1),
        "crawl_skipped": int(len(result.skipped)),
        "ratio": round(crawl_rate / wget_rate, 3),
        "target_ratio": 0.5,
        "meets_target": crawl_rate / wget_rate >= 0.5,
    }
    print(
        f"python-docs (median of {args.repeats}): "
        f"wget --mirror {wget_pages} pages in {wget_s:.1f}s ({wget_rate:.0f} pages/s); "
        f"crawl_site {crawl_pages} pages in {crawl_s:.1f}s ({crawl_rate:.0f} pages/s) "
        f"-> ratio {summary['ratio']:.2f}x (target >= 0.5x)"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crawl.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
