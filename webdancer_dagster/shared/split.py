"""The monitoring split: synthesized QA pairs that no training stage ever sees, scored as the `synth_monitor`
benchmark, so training is watched on questions the local web answers without tuning anything on a real
benchmark (MuSiQue stays a test set).

A pair's side is a hash of its id: the same pair lands on the same side in every stage and every rerun, and
synthesizing more pairs never moves the old ones. Only synthesized pairs (CRAWLQA, E2HQA) are split; WebDancer's
released pairs need the live web and stay training data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from webdancer_dagster.shared.qa import QAPair

MONITOR_SHARE = 0.2
MONITOR_SALT = "monitor"
SPLIT_SOURCES = frozenset({"crawlqa", "e2hqa"})


def id_fraction(qa_id: str, salt: str) -> float:
    """A number in [0, 1) fixed by the id and the salt: compare it with a share to split deterministically."""
    digest = hashlib.sha256(f"{salt}:{qa_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_monitor(qa_id: str, source: str, share: float = MONITOR_SHARE) -> bool:
    """Whether the pair with this id and source belongs to the monitoring split: it is never sampled, trained on
    or put in the RL pool. Works on any table that keeps a pair's id and source."""
    return source in SPLIT_SOURCES and id_fraction(qa_id, MONITOR_SALT) < share


def is_monitor_pair(pair: QAPair) -> bool:
    """`is_monitor` of a pair."""
    return is_monitor(pair.id, pair.source)


def training_pairs(pairs: Iterable[QAPair]) -> list[QAPair]:
    """The pairs training stages may use: every pair outside the monitoring split, in order."""
    return [pair for pair in pairs if not is_monitor_pair(pair)]


def monitor_pairs(pairs: Iterable[QAPair]) -> list[QAPair]:
    """The monitoring split of `pairs`, in order."""
    return [pair for pair in pairs if is_monitor_pair(pair)]
