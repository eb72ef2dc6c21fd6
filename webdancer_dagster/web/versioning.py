"""Compare a fresh crawl with the previous snapshot of the same site: what is new, changed, removed.

Versions only move when the extracted text changes, so a re-crawl that changes nothing produces the same
data version and downstream assets stay fresh.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

CHANGE_NEW = "new"
CHANGE_CHANGED = "changed"
CHANGE_REMOVED = "removed"
CHANGE_UNCHANGED = "unchanged"


@dataclass
class SnapshotDiff:
    """The next snapshot of a site's pages, plus the history rows that record how it differs from the last."""

    pages: pd.DataFrame
    history: pd.DataFrame
    counts: dict[str, int]
    data_version: str


def snapshot_data_version(pages: pd.DataFrame) -> str:
    """A hash of (url, content_hash) pairs: equal for equal content, whatever the fetch times were."""
    digest = hashlib.sha256()
    for url, content_hash in sorted(zip(pages["url"], pages["content_hash"], strict=True)):
        digest.update(f"{url}\t{content_hash}\n".encode())
    return digest.hexdigest()[:32]


def diff_snapshot(previous: pd.DataFrame, crawled: pd.DataFrame, crawl_id: str) -> SnapshotDiff:
    """Version `crawled` pages against `previous` (the site's current `pages` rows; may be empty).

    `crawled` needs url, content_hash and the page columns; `previous` needs url, content_hash, version,
    first_seen_crawl. A page keeps its version while its text is unchanged and gets version + 1 when it changes.
    Pages missing from the new crawl are recorded as removed in the history.
    """
    if crawled["url"].duplicated().any():
        raise ValueError(
            f"crawl {crawl_id} returned duplicate URLs: {crawled.loc[crawled['url'].duplicated(), 'url'].tolist()[:3]}"
        )
    prior = previous.set_index("url")[["content_hash", "version", "first_seen_crawl"]] if len(previous) else None
    pages = crawled.copy()
    if prior is None:
        pages["change"] = CHANGE_NEW
        pages["version"] = 1
        pages["first_seen_crawl"] = crawl_id
    else:
        joined = pages.join(prior, on="url", rsuffix="_prior")
        is_new = joined["content_hash_prior"].isna()
        is_changed = ~is_new & (joined["content_hash"] != joined["content_hash_prior"])
        pages["change"] = CHANGE_UNCHANGED
        pages.loc[is_new, "change"] = CHANGE_NEW
        pages.loc[is_changed, "change"] = CHANGE_CHANGED
        prior_version = joined["version"].fillna(0).astype("int64")
        pages["version"] = (prior_version + (is_new | is_changed).astype("int64")).astype("int64")
        pages["first_seen_crawl"] = joined["first_seen_crawl"].where(~is_new, crawl_id)
    pages["crawl_id"] = crawl_id

    history = pages.loc[pages["change"] != CHANGE_UNCHANGED].copy()
    if prior is not None:
        gone = prior.loc[~prior.index.isin(pages["url"])].reset_index()
        if len(gone):
            removed = pd.DataFrame(
                {
                    "url": gone["url"],
                    "content_hash": gone["content_hash"],
                    "version": gone["version"].astype("int64"),
                    "change": CHANGE_REMOVED,
                    "crawl_id": crawl_id,
                }
            )
            history = pd.concat([history, removed], ignore_index=True)
    counts = {
        CHANGE_NEW: int((pages["change"] == CHANGE_NEW).sum()),
        CHANGE_CHANGED: int((pages["change"] == CHANGE_CHANGED).sum()),
        CHANGE_UNCHANGED: int((pages["change"] == CHANGE_UNCHANGED).sum()),
        CHANGE_REMOVED: int((history["change"] == CHANGE_REMOVED).sum()),
    }
    return SnapshotDiff(
        pages=pages.drop(columns=["change"]).reset_index(drop=True),
        history=history.reset_index(drop=True),
        counts=counts,
        data_version=snapshot_data_version(pages),
    )
