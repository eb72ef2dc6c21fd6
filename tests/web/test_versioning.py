"""Re-crawl versioning: new, changed, removed and unchanged pages, and content-based data versions."""

import pandas as pd

from webdancer_dagster.web.versioning import diff_snapshot


def crawl(pairs):
    return pd.DataFrame({"url": [u for u, _ in pairs], "content_hash": [h for _, h in pairs], "title": "t"})


def test_first_crawl_marks_everything_new():
    diff = diff_snapshot(pd.DataFrame(columns=["url"]), crawl([("u1", "h1"), ("u2", "h2")]), "c1")
    assert diff.counts == {"new": 2, "changed": 0, "unchanged": 0, "removed": 0}
    assert diff.pages["version"].tolist() == [1, 1]
    assert set(diff.history["change"]) == {"new"}


def test_recrawl_counts_changes_and_bumps_only_changed_versions():
    first = diff_snapshot(pd.DataFrame(columns=["url"]), crawl([("u1", "h1"), ("u2", "h2"), ("u3", "h3")]), "c1")
    second = diff_snapshot(first.pages, crawl([("u1", "h1"), ("u2", "h2-new"), ("u4", "h4")]), "c2")
    assert second.counts == {"new": 1, "changed": 1, "unchanged": 1, "removed": 1}
    versions = dict(zip(second.pages["url"], second.pages["version"], strict=True))
    assert versions == {"u1": 1, "u2": 2, "u4": 1}
    first_seen = dict(zip(second.pages["url"], second.pages["first_seen_crawl"], strict=True))
    assert first_seen == {"u1": "c1", "u2": "c1", "u4": "c2"}
    removed = second.history[second.history["change"] == "removed"]
    assert removed["url"].tolist() == ["u3"] and removed["version"].tolist() == [1]


def test_data_version_depends_on_content_only():
    a = diff_snapshot(pd.DataFrame(columns=["url"]), crawl([("u1", "h1"), ("u2", "h2")]), "c1")
    b = diff_snapshot(a.pages, crawl([("u2", "h2"), ("u1", "h1")]), "c2")
    c = diff_snapshot(a.pages, crawl([("u1", "h1"), ("u2", "CHANGED")]), "c3")
    assert a.data_version == b.data_version
    assert c.data_version != a.data_version
