"""The SQLite event-log file: schema, checks at open, stream rows, retention, start positions.

How this works: a ``streams`` table holds each stream's counters and limits,
``consumers`` the positions, ``meta`` the clean-shutdown marker, and each
stream has its own table ``events_<id>`` whose ``INTEGER PRIMARY KEY`` is the
offset of the row's first event: a row holds one record, or a batch of
consecutive ones (:mod:`headwater.log._codec`), so the row holding offset *n*
is the last row at or below *n* (reads are rowid range scans; dropping the
oldest is one range delete, and a batch cut in two is rewritten). Offsets
of a stream are contiguous from ``first_offset`` to ``last_offset``: only a
prefix is ever deleted. Everything here runs on a connection the caller
owns, inside the caller's transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

from headwater.log._codec import (
    CorruptRecord,
    batch_lengths,
    is_batch,
    split_batch,
    stored_size,
    stored_value,
)
from headwater.log.base import (
    LogCorrupted,
    LogError,
    LogFull,
    LogUnavailable,
    NotAHeadwaterLog,
    StreamConfig,
)

Durability = Literal["fsync", "normal"]

APPLICATION_ID: Final = 0x4857_4C47
"""``PRAGMA application_id`` of a Headwater log: ASCII "HWLG"."""

SCHEMA_VERSION: Final = 2
"""``PRAGMA user_version``; a file with a higher one was written by a newer Headwater.
Version 2 stores batches of records in a row (:func:`headwater.log._codec.encode_batch`);
a version 1 file, one record per row, is a version 2 file that has none yet,
and is marked 2 when opened while no other process has it open (:func:`upgrade`)."""

PAGE_SIZE: Final = 16 * 1024
"""``PRAGMA page_size`` of a new log file (a file keeps the size it was made with).
A commit writes each page it changed to the WAL as a frame of its own, so the
cost of a group commit follows its page count: a group of 512 MQTT events
(about 200 KB) took 0.50-0.57 ms of CPU to commit in 4 KiB pages and
0.32-0.33 ms in 16 KiB ones (64 KiB: no better). A commit of a single event
writes a few more KB to the WAL than with 4 KiB pages."""

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for another process's write lock before failing."""

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    max_age REAL,
    max_bytes INTEGER,
    max_events INTEGER,
    max_event_size INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    last_time REAL NOT NULL,
    bytes INTEGER NOT NULL,
    dropped INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS consumers (
    stream_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (stream_id, name)
) WITHOUT ROWID;
"""

EXPECTED_TABLES: Final = {
    "meta": {"key", "value"},
    "streams": {
        "id", "name", "max_age", "max_bytes", "max_events", "max_event_size",
        "first_offset", "last_offset", "last_time", "bytes", "dropped",
    },
    "consumers": {"stream_id", "name", "position"},
}  # fmt: skip

STREAM_COLUMNS: Final = (
    "id, max_age, max_bytes, max_events, max_event_size, "
    "first_offset, last_offset, last_time, bytes, dropped"
)


def events_table(stream_id: int) -> str:
    return f"events_{stream_id}"


def holding(table: str, offset: str = "?") -> str:
    """SQL for the key of the row of ``table`` holding ``offset`` (an SQL parameter):
    the last row at or below it, or NULL."""
    return f"(SELECT max(offset) FROM {table} WHERE offset <= {offset})"


@dataclass(slots=True)
class Row:
    """A stream's row, as the writer reads and updates it inside a transaction."""

    id: int
    max_age: float | None
    max_bytes: int | None
    max_events: int | None
    max_event_size: int
    first: int
    last: int
    last_time: float
    bytes: int
    dropped: int

    def config(self) -> StreamConfig:
        return StreamConfig(self.max_age, self.max_bytes, self.max_events, self.max_event_size)


def stream_row(conn: sqlite3.Connection, name: str) -> Row | None:
    found = conn.execute(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = ?", (name,))
    row = found.fetchone()
    return None if row is None else Row(*row)


def new_stream_id(conn: sqlite3.Connection) -> int:
    """An id no stream of this file ever had (in the writer's transaction).

    Never reused, because a process may still hold a deleted stream's id: with
    a reused one it would read another stream's table as that stream's."""
    (last,) = conn.execute(
        "SELECT max(coalesce((SELECT max(id) FROM streams), 0), "
        "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'last_stream_id'), 0))"
    ).fetchone()
    sid: int = last + 1
    conn.execute(
        "INSERT INTO meta VALUES ('last_stream_id', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(sid),),
    )
    return sid


def save_row(conn: sqlite3.Connection, row: Row) -> None:
    conn.execute(
        "UPDATE streams SET first_offset = ?, last_offset = ?, last_time = ?, bytes = ?, "
        "dropped = ? WHERE id = ?",
        (row.first, row.last, row.last_time, row.bytes, row.dropped, row.id),
    )


# -- opening and checking a file ----------------------------------------------------------


def connect(path: str, durability: Durability, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = " + ("FULL" if durability == "fsync" else "NORMAL"))
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    return conn


def prepare_file(path: str, durability: Durability) -> None:
    """Create the schema in a new file, or check that an existing one is a Headwater log."""
    try:
        conn = connect(path, durability)
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    try:
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                name: {col[1] for col in conn.execute(f"PRAGMA table_info({name})")}
                for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
        except sqlite3.Error as exc:
            raise open_error(path, exc) from exc
        if application_id == 0 and version == 0 and not tables:
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before anything is written
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(
                f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID};"
                f"PRAGMA user_version = {SCHEMA_VERSION}; {SCHEMA}"
                "INSERT INTO meta VALUES ('clean_shutdown', '1'); COMMIT;"
            )
            return
        if application_id != APPLICATION_ID:
            raise NotAHeadwaterLog(
                f"{path!r} is an SQLite database but not a Headwater event log "
                f"(application_id {application_id:#x}, expected {APPLICATION_ID:#x})"
            )
        if version > SCHEMA_VERSION:
            raise NotAHeadwaterLog(
                f"{path!r} has event log schema {version}; this Headwater reads up to "
                f"{SCHEMA_VERSION} (upgrade Headwater)"
            )
        for table, columns in EXPECTED_TABLES.items():
            if not columns <= tables.get(table, set()):
                raise NotAHeadwaterLog(f"{path!r}: table {table!r} is missing or incomplete")
        conn.execute("PRAGMA journal_mode = WAL")
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        if clean != ("1",):
            # The last process died without closing: SQLite has already rolled
            # back any torn tail; make sure the pages themselves are sound.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise LogCorrupted(f"{path!r} is damaged: {'; '.join(problems[:5])}")
        if version < SCHEMA_VERSION:
            upgrade(conn, path, version)
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    finally:
        conn.close()


def upgrade(conn: sqlite3.Connection, path: str, version: int) -> None:
    """Mark an older file as this version's, if no other connection has it open.

    A version 1 file (a record per row) reads as it is; but an older Headwater
    writing it meanwhile would not know batches (its retention would delete a
    whole batch for a part), so the mark is made only under an exclusive lock,
    which SQLite refuses while any other connection has the file open.
    """
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # released when the connection closes
    try:
        conn.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
            raise
        conn.execute("PRAGMA locking_mode = NORMAL")
        if conn.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return  # another Headwater like this one upgraded it meanwhile
        raise LogUnavailable(
            f"{path!r} has event log schema {version} and is open in another process "
            f"(an older Headwater?); close it so that this one can upgrade the file "
            f"to schema {SCHEMA_VERSION}"
        ) from exc
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("COMMIT")


def open_error(path: str, exc: sqlite3.Error) -> LogError:
    """Translate SQLite's complaint about a file: foreign or damaged files are not retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_NOTADB:
        return NotAHeadwaterLog(f"{path!r} is not a Headwater event log: {exc}")
    if code == sqlite3.SQLITE_CORRUPT:
        return LogCorrupted(f"{path!r} is damaged: {exc}")
    return LogUnavailable(f"cannot open event log {path!r}: {exc}")


def write_error(exc: sqlite3.Error) -> LogUnavailable:
    """Translate a failed write: a full disk is :class:`LogFull`, the rest retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
        return LogFull(f"event log write failed, the disk is full: {exc}")
    return LogUnavailable(f"event log write failed: {exc}")


# -- writing -------------------------------------------------------------------------------


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any error (also a failed COMMIT).

    A transaction already begun (the loop writer begins one to take the write
    lock without waiting) is the one committed.
    """
    if not conn.in_transaction:
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def drop_before(conn: sqlite3.Connection, row: Row, cut: int) -> bool:
    """Delete every event below offset ``cut`` and account for it in ``row``.

    A batch row holding events on both sides of ``cut`` keeps its newer ones,
    rewritten as the row at ``cut``. A damaged one is left whole (its readers
    get :class:`LogCorrupted`) until a later cut passes it.
    """
    if cut <= row.first:
        return False
    table = events_table(row.id)
    below = cut  # rows starting below this one are deleted
    freed = 0
    (start,) = conn.execute(f"SELECT {holding(table)}", (cut,)).fetchone()
    if start is not None and start < cut <= row.last:
        # No row begins at the cut, so the one before holds it: a batch to cut in two.
        (value,) = conn.execute(f"SELECT record FROM {table} WHERE offset = ?", (start,)).fetchone()
        try:
            records = split_batch(value) if is_batch(value) else ()
        except CorruptRecord:
            records = ()
        if start + len(records) > cut:
            kept = records[cut - start :]
            stored = stored_value(kept)
            conn.execute(
                f"UPDATE {table} SET offset = ?, record = ? WHERE offset = ?", (cut, stored, start)
            )
            freed = len(value) - len(stored)
        else:
            below = start  # damaged: it stays whole
    (whole,) = conn.execute(
        f"SELECT coalesce(sum(length(record)), 0) FROM {table} WHERE offset < ?", (below,)
    ).fetchone()
    conn.execute(f"DELETE FROM {table} WHERE offset < ?", (below,))
    row.bytes -= freed + whole
    row.dropped += cut - row.first
    row.first = cut
    return True


def apply_size_limits(conn: sqlite3.Connection, row: Row) -> None:
    if row.max_events is not None and row.last - row.first + 1 > row.max_events:
        drop_before(conn, row, row.last - row.max_events + 1)
    if row.max_bytes is not None and row.bytes > row.max_bytes:
        drop_before(conn, row, _bytes_cut(conn, row, row.bytes - row.max_bytes))


def _bytes_cut(conn: sqlite3.Connection, row: Row, excess: int) -> int:
    """The lowest offset to keep so that at least ``excess`` stored bytes are freed."""
    table = events_table(row.id)
    sizes = conn.execute(f"SELECT offset, length(record) FROM {table} ORDER BY offset")
    with contextlib.closing(sizes):  # read only as far as needed
        offset: int
        size: int
        for offset, size in sizes:
            if excess <= 0:
                return offset  # the first row kept whole
            if size > excess:  # if a batch, its newer events may stay: as many as can
                (value,) = conn.execute(
                    f"SELECT record FROM {table} WHERE offset = ?", (offset,)
                ).fetchone()
                skip = _batch_skip(value, excess)
                if skip:
                    return offset + skip
            excess -= size
    return row.last + 1


def _batch_skip(value: object, excess: int) -> int:
    """How few of a batch's oldest events to drop to free ``excess`` bytes (0: all of it)."""
    if not is_batch(value):
        return 0
    try:
        lengths = batch_lengths(value)
    except CorruptRecord:
        return 0  # damaged: it goes whole
    for skip in range(1, len(lengths)):
        if len(value) - stored_size(lengths[skip:]) >= excess:
            return skip
    return 0


def first_offset_at(conn: sqlite3.Connection, row: Row, timestamp: float) -> int:
    """The first offset appended at or after ``timestamp`` (``last + 1`` if none).

    Append times never decrease with the offset, so this bisects with point
    lookups: O(log n) queries, no index on time needed.
    """
    table = events_table(row.id)
    low, high = row.first, row.last + 1
    while low < high:
        middle = (low + high) // 2
        # The row holding offset ``middle`` (a batch row holds several: one time).
        found = conn.execute(
            f"SELECT time FROM {table} WHERE offset = {holding(table)}",
            (middle,),
        ).fetchone()
        if found is not None and found[0] >= timestamp:
            high = middle
        else:
            low = middle + 1
    return low
