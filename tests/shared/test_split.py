"""The monitoring split: fixed by a pair's id, about MONITOR_SHARE of the synthesized pairs, never released ones."""

from webdancer_dagster.shared.qa import QAPair
from webdancer_dagster.shared.split import MONITOR_SHARE, is_monitor, is_monitor_pair, monitor_pairs, training_pairs


def pair(index: int, source: str = "e2hqa") -> QAPair:
    kind = {"e2hqa": "e2hqa", "crawlqa": "count", "webdancer_sample": "reference"}[source]
    return QAPair(
        question=f"In which year was person {index} born?", answer=str(1700 + index), kind=kind, source=source
    )


def test_the_split_takes_about_its_share_and_the_two_sides_partition_the_pairs():
    pairs = [pair(index, source) for index in range(2000) for source in ("e2hqa", "crawlqa")]
    monitored, training = monitor_pairs(pairs), training_pairs(pairs)
    assert abs(len(monitored) / len(pairs) - MONITOR_SHARE) < 0.02
    assert {p.id for p in monitored}.isdisjoint({p.id for p in training})
    assert len(monitored) + len(training) == len(pairs)
    assert training == [p for p in pairs if p not in monitored]  # order kept


def test_a_pairs_side_depends_on_its_id_alone():
    pairs = [pair(index) for index in range(200)]
    monitored = {p.id for p in monitor_pairs(pairs)}
    # Reordered, or among more pairs, the same pairs are monitored.
    assert {p.id for p in monitor_pairs(reversed(pairs))} == monitored
    assert {p.id for p in monitor_pairs([*pairs, *(pair(i) for i in range(200, 400))])} >= monitored
    # Tables keep id and source, which is all the decision reads.
    assert all(is_monitor(p.id, p.source) == is_monitor_pair(p) for p in pairs)


def test_released_pairs_are_never_monitored():
    released = [pair(index, "webdancer_sample") for index in range(200)]
    assert monitor_pairs(released) == [] and training_pairs(released) == released
    # The same id from a synthesizer would be split: it is the source that exempts them.
    assert any(is_monitor(p.id, "e2hqa") for p in released)
