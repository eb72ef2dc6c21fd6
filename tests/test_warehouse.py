"""The warehouse: atomic writes, partition replacement, Parquet exports, clear errors."""

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import duckdb
import pandas as pd
import pytest

from webdancer_dagster.warehouse import WarehouseStore, frame_version, markdown_preview, resolve_home


@pytest.fixture
def store(tmp_path):
    return WarehouseStore(tmp_path / "home")


def test_home_comes_from_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WEBDANCER_HOME", str(tmp_path / "from-env"))
    assert resolve_home() == tmp_path / "from-env"
    assert resolve_home(tmp_path / "explicit") == tmp_path / "explicit"


def test_replace_table_writes_rows_and_parquet(store):
    write = store.replace_table("things", pd.DataFrame({"id": [1, 2], "name": ["a", "b"]}))
    assert write.rows == 2
    assert pd.read_parquet(write.parquet_path)["name"].tolist() == ["a", "b"]
    store.replace_table("things", pd.DataFrame({"id": [3], "name": ["c"]}))
    assert store.read_table("things")["id"].tolist() == [3]


def test_failed_write_keeps_previous_tables(store):
    store.replace_table("pages", pd.DataFrame({"site": ["a", "b"], "url": ["u1", "u2"]}))
    store.replace_table("history", pd.DataFrame({"url": ["u1"], "n": [1]}))
    with pytest.raises(duckdb.Error):
        store.write_tables(
            partition=("site", "a"),
            partition_replacements={"pages": pd.DataFrame({"site": ["a"], "url": ["u9"]})},
            # wrong column type for an existing table: the whole transaction must roll back
            appends={"history": pd.DataFrame({"url": ["u9"], "n": ["not a number"]})},
        )
    assert sorted(store.read_table("pages")["url"]) == ["u1", "u2"]
    assert store.read_table("history")["n"].tolist() == [1]


def test_partition_replacement_only_touches_its_partition(store):
    store.write_tables(
        partition=("site", "a"), partition_replacements={"pages": pd.DataFrame({"site": ["a"], "url": ["a1"]})}
    )
    store.write_tables(
        partition=("site", "b"), partition_replacements={"pages": pd.DataFrame({"site": ["b"], "url": ["b1"]})}
    )
    store.write_tables(
        partition=("site", "a"),
        partition_replacements={"pages": pd.DataFrame({"site": ["a", "a"], "url": ["a2", "a3"]})},
    )
    assert sorted(store.read_table("pages")["url"]) == ["a2", "a3", "b1"]


def test_reading_a_missing_table_names_it(store):
    store.replace_table("other", pd.DataFrame({"x": [1]}))
    with pytest.raises(LookupError, match="'pages'.*materialize"):
        store.read_table("pages")


def test_markdown_preview_cuts_long_cells():
    preview = markdown_preview(pd.DataFrame({"text": ["x" * 500, "a|b\nc"]}), max_chars=20)
    assert "x" * 19 + "…" in preview and "x" * 21 not in preview
    assert "a\\|b c" in preview


def test_append_to_a_table_first_written_empty(tmp_path):
    store = WarehouseStore(tmp_path)
    store.write_tables(appends={"skips": pd.DataFrame(columns=["url", "reason"])})
    store.write_tables(appends={"skips": pd.DataFrame({"url": ["http://a.test/"], "reason": ["http_404"]})})
    assert store.read_table("skips").to_dict("records") == [{"url": "http://a.test/", "reason": "http_404"}]


def test_frame_version_follows_contents_only():
    frame = pd.DataFrame({"url": ["http://a.test/", "http://b.test/"], "text": ["one", "two"]})
    assert frame_version(frame) == frame_version(frame.copy())
    assert frame_version(frame) != frame_version(frame.assign(text=["one", "changed"]))
    assert len(frame_version(frame)) == 32


def test_a_home_written_by_older_code_takes_the_columns_newer_code_adds(store):
    """An eval_runs table from before a column existed keeps its rows; the new column is empty for them."""
    store.write_tables(appends={"eval_runs": pd.DataFrame({"question_id": ["q1"], "correct": [True]})})
    newer = pd.DataFrame({"question_id": ["q2"], "correct": [False], "setting": ["local_web"], "note": [None]})

    store.write_tables(partition=("question_id", "q2"), partition_replacements={"eval_runs": newer})
    store.write_tables(appends={"eval_runs": newer.assign(question_id="q3", note="late")})

    rows = store.read_table("eval_runs").sort_values("question_id").to_dict("records")
    assert [row["question_id"] for row in rows] == ["q1", "q2", "q3"]
    assert [row["setting"] for row in rows][1:] == ["local_web", "local_web"] and pd.isna(rows[0]["setting"])
    assert rows[2]["note"] == "late"


def test_a_column_first_written_empty_takes_the_type_of_its_first_values(store):
    """The base model's score has no trained turn length; the sft one's integer must still be stored after it."""
    base = pd.DataFrame({"partition": ["musique|base"], "trained_turn_tokens_p95": [None]})
    store.write_tables(partition=("partition", "musique|base"), partition_replacements={"scores": base})
    sft = pd.DataFrame({"partition": ["musique|sft"], "trained_turn_tokens_p95": [215]})
    store.write_tables(partition=("partition", "musique|sft"), partition_replacements={"scores": sft})

    rows = store.read_table("scores").set_index("partition")["trained_turn_tokens_p95"]
    assert pd.isna(rows["musique|base"]) and rows["musique|sft"] == 215


HOLD_LOCK = """
import sys, time
from webdancer_dagster.warehouse import WarehouseStore
with WarehouseStore(sys.argv[1]).lock("crawl-wiki", holder="crawl wiki-1"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    open(sys.argv[3], "w").close()  # the last thing done while holding it
"""


def test_a_lock_held_by_another_process_makes_a_waiter_wait_then_names_the_holder(store, tmp_path):
    done = tmp_path / "holder-done"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store.home), "3", str(done)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TimeoutError, match=r"crawl-wiki\.lock, still held by crawl wiki-1 \(pid \d+\)"):
            with store.lock("crawl-wiki", timeout_s=0.3):
                pass
        still_held = not done.exists()  # the holder keeps it 3 s after "held"
        with store.lock("crawl-wiki", timeout_s=30):
            assert done.exists()  # got the lock only once the holder had let go
        assert still_held  # so this waiter did wait for it
    finally:
        holder.kill()
        holder.wait()
    with store.lock("crawl-wiki", timeout_s=0):  # free again; another name never waited on this one
        with store.lock("crawl-musique", timeout_s=0):
            pass


def test_a_lock_excludes_threads_of_one_process_too(store):
    inside = []
    overlaps = []

    def hold(_):
        with store.lock("crawl-wiki", timeout_s=30):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(hold, range(8)))
    assert overlaps == [1] * 8


def test_a_lock_name_cannot_leave_the_locks_folder(store):
    with pytest.raises(ValueError, match="lock name"):
        with store.lock("../warehouse"):
            pass


def test_paths_under_the_home_are_stored_relative_and_old_absolute_ones_stay_absolute(store, tmp_path):
    inside = store.home / "sites" / "wiki" / "html"
    assert store.stored_path(inside) == "sites/wiki/html"
    assert store.resolve_path("sites/wiki/html") == inside
    outside = tmp_path / "elsewhere" / "html"
    assert store.stored_path(outside) == str(outside)
    assert store.resolve_path(str(outside)) == outside
    moved = WarehouseStore(tmp_path / "moved")
    assert moved.resolve_path(store.stored_path(inside)) == moved.home / "sites" / "wiki" / "html"
