"""The DuckDB warehouse every stage reads and writes: one file, atomic writes, Parquet exports.

Plain Python (no Dagster) so the CLI, benchmarks and training entry points can use it too; the Dagster
resource in `resources/warehouse.py` only says where the warehouse lives.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random_exponential

log = logging.getLogger(__name__)

DEFAULT_HOME = ".webdancer"
LOCKS_DIR = "locks"
LOCK_POLL_S = 0.05


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """`home`, else `$WEBDANCER_HOME`, else `./.webdancer`, as an absolute path."""
    chosen = home or os.environ.get("WEBDANCER_HOME") or DEFAULT_HOME
    return Path(chosen).expanduser().resolve()


def _is_lock_conflict(error: BaseException) -> bool:
    # Dagster runs steps in separate processes; DuckDB lets one process hold the file at a time.
    return isinstance(error, duckdb.IOException) and "lock" in str(error).lower()


# Why DuckDB cannot open a file for writing that it could still read: a read-only mount, no write permission.
_UNWRITABLE = (os.strerror(errno.EROFS), os.strerror(errno.EACCES))


def _is_unwritable(error: BaseException) -> bool:
    return isinstance(error, duckdb.IOException) and any(reason in str(error) for reason in _UNWRITABLE)


@dataclass(frozen=True)
class TableWrite:
    """What a write did, for asset metadata."""

    table: str
    rows: int
    parquet_path: Path


class WarehouseStore:
    """One DuckDB file under the WebDancer home, plus folders for large artefacts (sites, indexes, models)."""

    def __init__(self, home: str | os.PathLike | None = None) -> None:
        self.home = resolve_home(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.database_path = self.home / "warehouse.duckdb"
        self.exports_dir = self.home / "exports"

    def artifact_dir(self, *parts: str) -> Path:
        """A folder for files too large for a table (HTML trees, indexes, checkpoints)."""
        path = self.home.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stored_path(self, path: str | os.PathLike) -> str:
        """How a table stores a path: relative to the home when it lies under it, so a copied or moved home
        keeps using its own folders; a path outside the home stays absolute."""
        path = Path(path)
        if not path.is_absolute():
            return path.as_posix()
        try:
            return path.relative_to(self.home).as_posix()
        except ValueError:
            return str(path)

    def resolve_path(self, stored: str | os.PathLike) -> Path:
        """A path read from a table: a relative one lies under this home; an absolute one (rows written before
        paths were stored relative, or files outside the home) is kept as it is."""
        path = Path(stored)
        return path if path.is_absolute() else self.home / path

    @contextmanager
    def lock(self, name: str, timeout_s: float = 600.0, holder: str = "") -> Iterator[None]:
        """Hold the lock `name` of this home: one holder at a time, across processes and threads alike.

        An `flock` on `locks/<name>.lock`, taken through a file opened for this call only, so two threads of one
        process exclude each other as two processes do, and the kernel releases it if the holder dies. A waiter
        polls until `timeout_s` and then raises TimeoutError naming the holder (`holder`, written into the file).
        """
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"lock name {name!r} must be letters, digits, '.', '_' or '-'")
        path = self.artifact_dir(LOCKS_DIR) / f"{name}.lock"
        with path.open("a+") as handle:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        handle.seek(0)
                        held_by = handle.read().strip() or "another process"
                        # The kernel drops the lock of a dead process, so the holder is still running.
                        raise TimeoutError(
                            f"waited {timeout_s:g} s for the lock {path}, still held by {held_by}"
                        ) from None
                    time.sleep(LOCK_POLL_S)
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"{holder} (pid {os.getpid()})\n" if holder else f"pid {os.getpid()}\n")
                handle.flush()
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A short-lived connection; waits (with jitter) while another process holds the file."""
        connection = self._open(read_only)
        try:
            yield connection
        finally:
            connection.close()

    @retry(
        retry=retry_if_exception(_is_lock_conflict),
        wait=wait_random_exponential(multiplier=0.05, max=2),
        stop=stop_after_delay(120),
        reraise=True,
    )
    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        if read_only and not self.database_path.exists():
            raise FileNotFoundError(f"no warehouse at {self.database_path}; materialize the pipeline first")
        return duckdb.connect(str(self.database_path), read_only=read_only)

    @contextmanager
    def _reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reads. In a home this process may not write (a read-only mount, no permission) DuckDB
        refuses to open the file for writing; the last good tables are then read through a read-only connection."""
        try:
            connection = self._open(False)
        except duckdb.IOException as error:
            if not _is_unwritable(error):
                raise
            log.info("%s cannot be written (%s): reading it read-only", self.database_path, error)
            connection = self._open(True)
        try:
            yield connection
        finally:
            connection.close()

    def table_exists(self, table: str) -> bool:
        if not self.database_path.exists():
            return False
        with self._reading() as con:
            return _table_exists(con, table)

    def read_table(self, table: str, where: str = "", params: Sequence | None = None) -> pd.DataFrame:
        """The whole table (or the rows matching `where`); a clear error names a table not yet written."""
        with self._reading() as con:
            if not _table_exists(con, table):
                raise LookupError(
                    f"table {table!r} does not exist in {self.database_path}; materialize its asset first"
                )
            sql = f'SELECT * FROM "{table}"' + (f" WHERE {where}" if where else "")
            return con.execute(sql, params or []).df()

    def query(self, sql: str, params: Sequence | None = None) -> pd.DataFrame:
        with self._reading() as con:
            return con.execute(sql, params or []).df()

    def replace_table(self, table: str, frame: pd.DataFrame) -> TableWrite:
        """Replace a whole table in one transaction: readers see the old rows or the new, never half."""
        return self.write_tables({table: frame})[table]

    def write_tables(
        self,
        replacements: Mapping[str, pd.DataFrame] | None = None,
        partition: tuple[str, str] | None = None,
        partition_replacements: Mapping[str, pd.DataFrame] | None = None,
        appends: Mapping[str, pd.DataFrame] | None = None,
    ) -> dict[str, TableWrite]:
        """Apply several writes in ONE transaction, then refresh the Parquet exports of the touched tables.

        replacements: whole tables swapped. partition_replacements: rows whose `partition[0]` column equals
        `partition[1]` are swapped (one site's crawl). appends: rows added (history tables).
        """
        replacements = dict(replacements or {})
        partition_replacements = dict(partition_replacements or {})
        appends = dict(appends or {})
        if partition_replacements and partition is None:
            raise ValueError("partition_replacements needs partition=(column, key)")
        touched = [*replacements, *partition_replacements, *appends]
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for table, frame in replacements.items():
                    con.register("incoming", frame)
                    con.execute(f'CREATE OR REPLACE TABLE "{table}" AS SELECT * FROM incoming')
                    con.unregister("incoming")
                for table, frame in partition_replacements.items():
                    column, key = partition
                    _ensure_table(con, table, frame)
                    con.execute(f'DELETE FROM "{table}" WHERE "{column}" = ?', [key])
                    _insert(con, table, frame)
                for table, frame in appends.items():
                    _ensure_table(con, table, frame)
                    _insert(con, table, frame)
                con.execute("COMMIT")
            except BaseException as error:
                _rollback(con)
                if isinstance(error, duckdb.Error):
                    error.add_note(
                        f"Nothing of this write reached {self.database_path}: {', '.join(touched)} keep their "
                        "previous version."
                    )
                raise
            try:
                return {table: self._export(con, table) for table in touched}
            except (duckdb.Error, OSError) as error:
                error.add_note(
                    f"{', '.join(touched)} were written to {self.database_path}, but not exported: the Parquet files "
                    f"in {self.exports_dir} keep their previous version."
                )
                raise

    def _export(self, con: duckdb.DuckDBPyConnection, table: str) -> TableWrite:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        target = self.exports_dir / f"{table}.parquet"
        staging = target.with_suffix(".parquet.tmp")
        try:
            con.execute(f"COPY \"{table}\" TO '{staging}' (FORMAT PARQUET)")
        except BaseException:
            staging.unlink(missing_ok=True)  # what a full disk cut off is no export; the previous one stays
            raise
        os.replace(staging, target)
        rows = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        return TableWrite(table=table, rows=int(rows), parquet_path=target)


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """End a failed transaction. A COMMIT that failed (on a full disk) has already ended it, and DuckDB then refuses a
    ROLLBACK: that refusal must not replace the error worth reading, the commit's, which the caller raises."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as error:
        log.debug("rollback after a failed write: %s", error)


def _table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ? AND table_schema = 'main'", [table]
    ).fetchone()[0]
    return bool(found)


def _ensure_table(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    """Create `table` from `frame`'s columns, or add the columns a newer version of the code writes.

    Appended and partitioned tables outlive code changes (a home keeps its eval runs and page history), so a
    column added since the table was created is added to it, empty for the older rows, rather than failing.
    """
    if frame.empty:
        # An empty object column would become a column of type NULL, which no later row can be cast to.
        frame = frame.astype({column: "string" for column in frame.columns if frame[column].dtype == object})
    con.register("incoming", frame)
    try:
        if not _table_exists(con, table):
            con.execute(f'CREATE TABLE "{table}" AS SELECT * FROM incoming LIMIT 0')
            return
        existing = {row[0]: row[1].strip('"') for row in con.execute(f'DESCRIBE "{table}"').fetchall()}
        for name, column_type, *_ in con.execute("DESCRIBE incoming").fetchall():
            # A column holding only nulls has type NULL, which no later value can be cast to: it takes the type of
            # the first real values, and a new column of nulls becomes VARCHAR.
            if name not in existing:
                column_type = "VARCHAR" if column_type.strip('"') == "NULL" else column_type
                con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {column_type}')
            elif existing[name] == "NULL" and column_type.strip('"') != "NULL":
                con.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{name}" TYPE {column_type}')
    finally:
        con.unregister("incoming")


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame) -> None:
    if frame.empty:
        return
    con.register("incoming", frame)
    con.execute(f'INSERT INTO "{table}" BY NAME SELECT * FROM incoming')
    con.unregister("incoming")


def frame_version(*frames: pd.DataFrame) -> str:
    """A Dagster data version from table contents: equal rows give equal versions, so unchanged outputs leave
    downstream assets fresh."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(frame.to_csv(index=False).encode())
    return digest.hexdigest()[:32]


def markdown_preview(frame: pd.DataFrame, rows: int = 5, max_chars: int = 80) -> str:
    """A few rows as a Markdown table for the Dagster UI; long cells are cut so the table stays readable."""
    head = frame.head(rows).copy()
    for column in head.columns:
        head[column] = head[column].map(lambda value: _cut(value, max_chars))
    return head.to_markdown(index=False)


def _cut(value: object, max_chars: int) -> str:
    text = str(value).replace("\n", " ").replace("|", "\\|")
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
