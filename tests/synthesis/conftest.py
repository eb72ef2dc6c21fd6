"""Fixtures for synthesis tests: the tiny crawl graph of `synth_helpers` as pages and links tables."""

from __future__ import annotations

import pandas as pd
import pytest
from synth_helpers import ADA, BABBAGE, BENCH, BENCH_PAGE, ENGINE, PAGE_TEXT, STUB, TITLES


@pytest.fixture
def pages() -> pd.DataFrame:
    rows = [
        {
            "url": url,
            "site": "musique" if url.startswith(BENCH) else "wiki",
            "title": TITLES.get(url, "Benchmark"),
            "text": text,
        }
        for url, text in PAGE_TEXT.items()
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def links() -> pd.DataFrame:
    """Ada links to Babbage, the stub and the benchmark copy; Babbage links to the engine (one click further)."""
    rows = [
        (ADA, BABBAGE, True),
        (ADA, f"{STUB}#top", True),
        (ADA, BENCH_PAGE, False),
        (BABBAGE, ENGINE, True),
        (BABBAGE, ADA, True),
    ]
    return pd.DataFrame(rows, columns=["src_url", "dst_url", "internal"])
