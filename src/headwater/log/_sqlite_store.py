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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Literal

from headwater.log._codec import (
    CorruptRecord,
    batch_lengths,
    encode_batch,
    is_batch,
    split_batch,
    stored_size,
)
from headwater.log.base import (
    LogCorrupted,
    LogError,
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
and is marked 2 when opened for writing."""

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
        if version < SCHEMA_VERSION:  # readable as it is; batches may be written from now on
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        if clean != ("1",):
            # The last process died without closing: SQLite has already rolled
            # back any torn tail; make sure the pages themselves are sound.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise LogCorrupted(f"{path!r} is damaged: {'; '.join(problems[:5])}")
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    finally:
        conn.close()


def open_error(path: str, exc: sqlite3.Error) -> LogError:
    """Translate SQLite's complaint about a file: foreign or damaged files are not retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_NOTADB:
        return NotAHeadwaterLog(f"{path!r} is not a Headwater event log: {exc}")
    if code == sqlite3.SQLITE_CORRUPT:
        return LogCorrupted(f"{path!r} is damaged: {exc}")
    return LogUnavailable(f"cannot open event log {path!r}: {exc}")


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
    found = conn.execute(
        f"SELECT offset, record FROM {table} WHERE offset < ? ORDER BY offset DESC LIMIT 1",
        (cut,),
    ).fetchone()
    if found is not None and is_batch(found[1]):
        start, value = found
        try:
            records = split_batch(value)
        except CorruptRecord:
            # Damaged: its end is where the next row begins; it stays if that is past the cut.
            if (
                cut <= row.last
                and not conn.execute(f"SELECT 1 FROM {table} WHERE offset = ?", (cut,)).fetchone()
            ):
                below = start
        else:
            if start + len(records) > cut:
                kept = records[cut - start :]
                stored = kept[0] if len(kept) == 1 else encode_batch(kept)
                conn.execute(
                    f"UPDATE {table} SET offset = ?, record = ? WHERE offset = ?",
                    (cut, stored, start),
                )
                freed = len(value) - len(stored)
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
    rows = conn.execute(f"SELECT offset, record FROM {events_table(row.id)} ORDER BY offset")
    with contextlib.closing(rows):  # read only as far as needed
        return _cut_in(rows, excess, row.last + 1)


def _cut_in(rows: Iterable[tuple[int, bytes]], excess: int, end: int) -> int:
    """:func:`_bytes_cut` over the stream's rows, oldest first; ``end`` if all must go."""
    for offset, value in rows:
        if excess <= 0:
            return offset  # the first row kept whole
        size = len(value)
        if size > excess and is_batch(value):  # its newer events may stay: as many as can
            try:
                lengths = batch_lengths(value)
            except CorruptRecord:
                lengths = ()  # damaged: it goes whole
            for skip in range(1, len(lengths)):
                if size - stored_size(lengths[skip:]) >= excess:
                    return offset + skip
        excess -= size
    return end


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
            f"SELECT time FROM {table} WHERE offset <= ? ORDER BY offset DESC LIMIT 1",
            (middle,),
        ).fetchone()
        if found is not None and found[0] >= timestamp:
            high = middle
        else:
            low = middle + 1
    return low
