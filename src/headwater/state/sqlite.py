"""The state store on SQLite: ``state.db`` in the data directory, WAL, durable on return.

How this works: one table holds every bucket's revision counter, another
every key's latest version (tombstones included, so that a watcher sees
deletes), indexed by revision for watchers. Writes go through one writing
connection, one at a time (a lock), in a worker thread: a write is a ``BEGIN
IMMEDIATE`` transaction that reads the key and the bucket's revision, checks
the expected revision, writes both and commits with ``synchronous=FULL``, so
the revision it returns is on disk. Reads use a second, query-only
connection on the caller's thread (WAL: readers never block the writer).

Files are opened as the event log opens its own (:mod:`headwater.log.sqlite`):
a new file gets the schema and ``application_id`` "HWST"; an existing file
must carry that id and a schema this Headwater reads, and passes ``PRAGMA
quick_check`` (the file is small). A file that is not a state store, a
damaged one, or a file or directory Headwater may not write raise
:class:`~headwater.state.NotAStateStore`, :class:`~headwater.state.StateCorrupted`
or :class:`~headwater.state.StateUnavailable` with the path and the reason,
before anything else happens. Another process may open the same file: its
writes wait for the lock up to ``BUSY_TIMEOUT_MS``, and its changes reach
this process's watchers within ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, TypeVar

from headwater.state._watch import Signal, watch_changes
from headwater.state.base import (
    Entry,
    NotAStateStore,
    RevisionMismatch,
    StateClosed,
    StateCorrupted,
    StateError,
    StateUnavailable,
    check_bucket,
    check_key,
    check_prefix,
    check_revision,
    check_value,
)

__all__ = [
    "APPLICATION_ID",
    "DEFAULT_POLL_INTERVAL",
    "SCHEMA_VERSION",
    "SqliteBucket",
    "SqliteStore",
]

T = TypeVar("T")

APPLICATION_ID: Final = 0x4857_5354
"""``PRAGMA application_id`` of a Headwater state store: ASCII "HWST"."""

SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version``; a file with a higher one was written by a newer Headwater."""

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a write waits for another process's write lock before failing."""

DEFAULT_POLL_INTERVAL: Final = 0.5
"""Seconds between a waiting watcher's looks for changes made by another process.
Writes through this store wake watchers at once; this bounds the delay for a
file another process writes, at one indexed query per watcher per interval."""

WATCH_BATCH: Final = 256
"""Changes one look of a watcher reads at most."""

SCHEMA: Final = """
CREATE TABLE buckets (name TEXT PRIMARY KEY, revision INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE entries (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    revision INTEGER NOT NULL,
    updated REAL NOT NULL,
    deleted INTEGER NOT NULL,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
CREATE INDEX entries_by_revision ON entries (bucket, revision);
"""

EXPECTED_TABLES: Final = {
    "buckets": {"name", "revision"},
    "entries": {"bucket", "key", "value", "revision", "updated", "deleted"},
}


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


def _error(path: str, exc: sqlite3.Error, doing: str) -> StateError:
    """Translate SQLite's complaint: foreign and damaged files are not retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_NOTADB:
        return NotAStateStore(f"{path} is not a Headwater state store: {exc}")
    if code == sqlite3.SQLITE_CORRUPT:
        return StateCorrupted(f"{path} is damaged: {exc}")
    return StateUnavailable(f"cannot {doing} state store {path}: {exc}")


def _prepare(conn: sqlite3.Connection, path: str) -> None:
    """Create the schema in a new file, or check an existing one; then prove it is writable."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {
        name: {col[1] for col in conn.execute(f"PRAGMA table_info({name})")}
        for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    }
    conn.execute("PRAGMA journal_mode = WAL")
    if application_id == 0 and version == 0 and not tables:
        conn.executescript(
            f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID};"
            f"PRAGMA user_version = {SCHEMA_VERSION}; {SCHEMA} COMMIT;"
        )
        return
    if application_id != APPLICATION_ID:
        raise NotAStateStore(
            f"{path} is an SQLite database but not a Headwater state store "
            f"(application_id {application_id:#x}, expected {APPLICATION_ID:#x})"
        )
    if version > SCHEMA_VERSION:
        raise NotAStateStore(
            f"{path} has state store schema {version}; this Headwater reads up to "
            f"{SCHEMA_VERSION} (upgrade Headwater)"
        )
    for table, columns in EXPECTED_TABLES.items():
        if not columns <= tables.get(table, set()):
            raise NotAStateStore(f"{path}: table {table!r} is missing or incomplete")
    problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    if problems != ["ok"]:
        raise StateCorrupted(f"{path} is damaged: {'; '.join(problems[:5])}")
    # A read-only file (or directory, for the WAL) fails here, at open, not at
    # the first write a user makes.
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE buckets SET revision = revision WHERE 0")
    conn.execute("COMMIT")


def _live_revision(conn: sqlite3.Connection, bucket: str, key: str) -> int:
    """The key's revision, 0 when it does not exist (or was deleted)."""
    found = conn.execute(
        "SELECT revision FROM entries WHERE bucket = ? AND key = ? AND NOT deleted",
        (bucket, key),
    ).fetchone()
    return int(found[0]) if found is not None else 0


def _store_row(
    conn: sqlite3.Connection, bucket: str, key: str, value: bytes, deleted: bool, now: float
) -> int:
    """Write one entry at the bucket's next revision (in the caller's transaction)."""
    (revision,) = conn.execute(
        "UPDATE buckets SET revision = revision + 1 WHERE name = ? RETURNING revision",
        (bucket,),
    ).fetchone()
    conn.execute(_UPSERT, (bucket, key, value, revision, now, int(deleted)))
    return int(revision)


_UPSERT: Final = (
    "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bucket, key) "
    "DO UPDATE SET value = excluded.value, revision = excluded.revision, "
    "updated = excluded.updated, deleted = excluded.deleted"
)


class SqliteBucket:
    """A :class:`~headwater.state.Bucket` in a :class:`SqliteStore`'s file."""

    def __init__(self, store: SqliteStore, name: str) -> None:
        self._store = store
        self._name = name
        self.signal = Signal()

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"SqliteBucket({self._store.path!r}, {self._name!r})"

    def _entry(self, row: tuple[str, bytes, int, float, int]) -> Entry:
        key, value, revision, updated, deleted = row
        return Entry(
            self._name,
            key,
            bytes(value),
            revision,
            datetime.fromtimestamp(updated, UTC),
            "delete" if deleted else "put",
        )

    async def _write(
        self, key: str, value: bytes, deleted: bool, expected: int | None
    ) -> int | None:
        """One write; None (nothing written) for an unconditional delete of a missing key."""
        name, clock = self._name, self._store.clock

        def write(conn: sqlite3.Connection) -> int | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                actual = _live_revision(conn, name, key)
                if expected is not None and expected != actual:
                    raise RevisionMismatch(name, key, expected, actual)
                if deleted and not actual:
                    conn.execute("ROLLBACK")
                    return None
                revision = _store_row(conn, name, key, value, deleted, clock())
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            result: int = revision
            return result

        revision = await self._store.write(write)
        if revision is not None:
            self.signal.notify()
        return revision

    async def write_many(self, changes: Mapping[str, bytes | None]) -> None:
        checked = [
            (check_key(k), check_value(v) if v is not None else None) for k, v in changes.items()
        ]
        if not checked:
            return
        name, clock = self._name, self._store.clock

        def write(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                rows = [
                    (key, value)
                    for key, value in checked
                    if value is not None or _live_revision(conn, name, key)
                ]
                if rows:
                    # One bump of the bucket's revision for the whole batch, then one
                    # statement run over every row: each change still takes its own
                    # revision, in order (a batch of presence records after a storm
                    # costs the writer a fraction of one statement pair per row).
                    (last,) = conn.execute(
                        "UPDATE buckets SET revision = revision + ? WHERE name = ? "
                        "RETURNING revision",
                        (len(rows), name),
                    ).fetchone()
                    now, first = clock(), last - len(rows) + 1
                    conn.executemany(
                        _UPSERT,
                        [
                            (name, key, value or b"", first + i, now, int(value is None))
                            for i, (key, value) in enumerate(rows)
                        ],
                    )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return bool(rows)

        if await self._store.write(write):
            self.signal.notify()

    async def _put(self, key: str, value: bytes, expected: int | None) -> int:
        revision = await self._write(key, value, False, expected)
        assert revision is not None  # only deletes write nothing
        return revision

    async def get(self, key: str) -> Entry | None:
        check_key(key)
        row = await self._store.read(
            lambda c: c.execute(
                "SELECT key, value, revision, updated, deleted FROM entries "
                "WHERE bucket = ? AND key = ? AND NOT deleted",
                (self._name, key),
            ).fetchone()
        )
        return self._entry(row) if row is not None else None

    async def put(self, key: str, value: bytes) -> int:
        return await self._put(check_key(key), check_value(value), None)

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> int:
        expected = check_revision(expected_revision)
        return await self._put(check_key(key), check_value(value), expected)

    async def delete(self, key: str, expected_revision: int | None = None) -> int | None:
        check_key(key)
        expected = None if expected_revision is None else check_revision(expected_revision)
        return await self._write(key, b"", True, expected)

    async def keys(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        rows = await self._store.read(
            lambda c: c.execute(
                "SELECT key FROM entries WHERE bucket = ? AND NOT deleted "
                "AND substr(key, 1, ?) = ? ORDER BY key",
                (self._name, len(prefix), prefix),
            ).fetchall()
        )
        return [row[0] for row in rows]

    async def revision(self) -> int:
        return self._revision_now()

    def _revision_now(self) -> int:
        row = self._store.read_now(
            lambda c: c.execute(
                "SELECT revision FROM buckets WHERE name = ?", (self._name,)
            ).fetchone()
        )
        return int(row[0]) if row is not None else 0

    async def _changes_after(self, prefix: str, seen: int) -> list[Entry]:
        rows = await self._store.read(
            lambda c: c.execute(
                "SELECT key, value, revision, updated, deleted FROM entries "
                "WHERE bucket = ? AND revision > ? AND substr(key, 1, ?) = ? "
                "ORDER BY revision LIMIT ?",
                (self._name, seen, len(prefix), prefix, WATCH_BATCH),
            ).fetchall()
        )
        return [self._entry(row) for row in rows]

    def watch(self, prefix: str = "", *, after: int | None = None) -> AsyncIterator[Entry]:
        check_prefix(prefix)
        # "From now on" is now, when watch() is called, not at the first anext().
        start = self._revision_now() if after is None else check_revision(after)
        return watch_changes(
            lambda seen: self._changes_after(prefix, seen),
            start,
            self.signal,
            closed=lambda: self._store.closed,
            poll=self._store.poll_interval,
        )


class SqliteStore:
    """A :class:`~headwater.state.StateStore` in one SQLite file (see the module docstring).

    The constructor opens and checks the file; from async code use :meth:`open`,
    which does that in a worker thread.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, not {poll_interval!r}")
        self.path = str(Path(path))
        self.poll_interval = poll_interval
        self.clock = clock
        self.closed = False
        self._lock = threading.Lock()
        self._buckets: dict[str, SqliteBucket] = {}
        try:
            self._conn = _connect(self.path)
        except sqlite3.Error as exc:
            raise _error(self.path, exc, "open") from exc
        try:
            _prepare(self._conn, self.path)
            self._read_conn = _connect(self.path)
            self._read_conn.execute("PRAGMA query_only = 1")
        except sqlite3.Error as exc:
            self._conn.close()
            raise _error(self.path, exc, "open") from exc
        except StateError:
            self._conn.close()
            raise

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> SqliteStore:
        return await asyncio.to_thread(cls, path, poll_interval=poll_interval, clock=clock)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r})"

    def _check_open(self) -> None:
        if self.closed:
            raise StateClosed(f"state store {self.path} is closed")

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(writing connection)`` in a worker thread, one at a time."""
        self._check_open()

        def run() -> T:
            with self._lock:
                self._check_open()
                try:
                    return fn(self._conn)
                except sqlite3.Error as exc:
                    raise _error(self.path, exc, "write") from exc

        return await asyncio.to_thread(run)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(read connection)``, here on the caller's thread (small indexed queries)."""
        return self.read_now(fn)

    def read_now(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        try:
            return fn(self._read_conn)
        except sqlite3.Error as exc:
            raise _error(self.path, exc, "read") from exc

    async def bucket(self, name: str) -> SqliteBucket:
        self._check_open()
        check_bucket(name)
        bucket = self._buckets.get(name)
        if bucket is None:
            await self.write(
                lambda c: c.execute(
                    "INSERT INTO buckets VALUES (?, 0) ON CONFLICT (name) DO NOTHING", (name,)
                )
            )
            bucket = self._buckets.setdefault(name, SqliteBucket(self, name))
        return bucket

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        def close() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(close)
        self._read_conn.close()
        for bucket in self._buckets.values():
            bucket.signal.notify()
