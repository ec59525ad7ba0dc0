"""The embedded event log on SQLite: one file, WAL, group commit.

How this works:

- **One writer thread per log** owns the only writing connection. Appends are
  encoded on the caller's side (:mod:`headwater.log._codec`) and queued; the
  writer takes everything queued, writes it in *one* transaction (one
  ``executemany`` per stream), commits once, and only then resolves every
  waiting ``append`` (one ``call_soon_threadsafe`` per group). While it
  commits, new appends queue up and form the next group: that is group commit,
  and it is why ``fsync`` durability still reaches tens of thousands of events
  per second. ``commit_window`` adds an optional wait for more work.
- **Durability**: ``"fsync"`` runs ``synchronous=FULL`` (every commit is on
  disk before ``append`` returns); ``"normal"`` runs ``synchronous=NORMAL``
  (a commit survives a process crash, but the last ones may be lost on power
  failure).
- **Storage**: a ``streams`` table holds each stream's counters and limits,
  ``consumers`` the positions, and each stream has its own table
  ``events_<id>`` whose ``INTEGER PRIMARY KEY`` is the offset, so that reads
  are rowid range scans. Records are stored as the codec wrote them and read
  back without validation.
- **Readers** use a separate connection on a reader thread (WAL: readers never
  block the writer). Waiting readers are woken by the writer after each commit;
  appends from *other* processes are noticed by polling every
  ``poll_interval`` seconds while waiting.
- **Acks** update the in-process cursor at once; positions are written by the
  writer with the next transaction (coalesced: one row per consumer however
  many acks), and ``Reader.flush()`` waits for that commit.
- **Crash safety**: SQLite's WAL discards a torn, uncommitted tail at open, so
  every acknowledged append survives ``kill -9``. A marker records clean
  shutdowns; after an unclean one the file is checked with
  ``PRAGMA quick_check`` before use. A file that is not a Headwater log (wrong
  ``application_id``, a newer ``user_version``, not SQLite at all) raises
  :class:`~headwater.log.NotAHeadwaterLog` instead of being touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar

from headwater.cloudevents import CloudEvent
from headwater.log._codec import decode, encode
from headwater.log._cursor import Cursor
from headwater.log._local import LocalReader, Signal
from headwater.log.base import (
    DEFAULT_STREAM_CONFIG,
    EARLIEST,
    Entry,
    EventTooLarge,
    LogClosed,
    LogError,
    LogUnavailable,
    NotAHeadwaterLog,
    Start,
    StartKind,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
    as_event_list,
    check_name,
    new_entry,
    stream_info,
)

T = TypeVar("T")

Durability = Literal["fsync", "normal"]

APPLICATION_ID: Final = 0x4857_4C47
"""``PRAGMA application_id`` of a Headwater log: ASCII "HWLG"."""

SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version``; a file with a higher one was written by a newer Headwater."""

DEFAULT_POLL_INTERVAL: Final = 0.5
"""Seconds between looks for appends made by other processes while a reader waits.
Appends in this process wake readers at once; this only bounds the delay for
a file shared between processes, at the cost of one cheap query per waiting
reader per interval."""

RETENTION_INTERVAL: Final = 1.0
"""Seconds between ``max_age`` sweeps (age limits act within about this much)."""

POSITION_DELAY: Final = 0.02
"""Seconds the writer waits, when woken only by acks, for more acks (or appends) to
write with them: positions reach the disk at most this much later than the ack
(``Reader.flush()`` does not wait for it), and a stream of acks costs about
50 small transactions a second instead of one per ack."""

MAX_GROUP: Final = 4096
"""Requests the writer takes into one transaction. A larger group amortises
the commit further but delays its first caller; the queue itself is not
bounded here because every caller awaits its own append (producers are
back-pressured by their own ``await``)."""

BUSY_TIMEOUT_MS: Final = 10_000
"""How long a connection waits for another process's write lock before failing."""

_IN_CHUNK: Final = 500
"""Offsets per ``IN (...)`` query (below SQLite's parameter limit)."""

_SCHEMA: Final = """
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

_EXPECTED_TABLES: Final = {
    "meta": {"key", "value"},
    "streams": {
        "id", "name", "max_age", "max_bytes", "max_events", "max_event_size",
        "first_offset", "last_offset", "last_time", "bytes", "dropped",
    },
    "consumers": {"stream_id", "name", "position"},
}  # fmt: skip

_STREAM_COLUMNS: Final = (
    "id, max_age, max_bytes, max_events, max_event_size, "
    "first_offset, last_offset, last_time, bytes, dropped"
)


def _events_table(stream_id: int) -> str:
    return f"events_{stream_id}"


@dataclass(slots=True)
class _Row:
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


def _stream_row(conn: sqlite3.Connection, name: str) -> _Row | None:
    found = conn.execute(f"SELECT {_STREAM_COLUMNS} FROM streams WHERE name = ?", (name,))
    row = found.fetchone()
    return None if row is None else _Row(*row)


def _save_row(conn: sqlite3.Connection, row: _Row) -> None:
    conn.execute(
        "UPDATE streams SET first_offset = ?, last_offset = ?, last_time = ?, bytes = ?, "
        "dropped = ? WHERE id = ?",
        (row.first, row.last, row.last_time, row.bytes, row.dropped, row.id),
    )


# -- opening and checking a file ----------------------------------------------------------


def _connect(path: str, durability: Durability, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = " + ("FULL" if durability == "fsync" else "NORMAL"))
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    return conn


def _prepare_file(path: str, durability: Durability) -> None:
    """Create the schema in a new file, or check that an existing one is a Headwater log."""
    try:
        conn = _connect(path, durability)
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    try:
        try:
            application_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {
                name: {col[1] for col in conn.execute(f"PRAGMA table_info({name})")}
                for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            }
        except sqlite3.Error as exc:
            raise _open_error(path, exc) from exc
        if application_id == 0 and version == 0 and not tables:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(
                f"BEGIN IMMEDIATE; PRAGMA application_id = {APPLICATION_ID};"
                f"PRAGMA user_version = {SCHEMA_VERSION}; {_SCHEMA}"
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
        for table, columns in _EXPECTED_TABLES.items():
            if not columns <= tables.get(table, set()):
                raise NotAHeadwaterLog(f"{path!r}: table {table!r} is missing or incomplete")
        conn.execute("PRAGMA journal_mode = WAL")
        clean = conn.execute("SELECT value FROM meta WHERE key = 'clean_shutdown'").fetchone()
        if clean != ("1",):
            # The last process died without closing: SQLite has already rolled
            # back any torn tail; make sure the pages themselves are sound.
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise NotAHeadwaterLog(f"{path!r} is damaged: {'; '.join(problems[:5])}")
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    finally:
        conn.close()


def _open_error(path: str, exc: sqlite3.Error) -> LogError:
    """Translate SQLite's complaint about a file: foreign or damaged files are not retryable."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_NOTADB:
        return NotAHeadwaterLog(f"{path!r} is not a Headwater event log: {exc}")
    if code == sqlite3.SQLITE_CORRUPT:
        return NotAHeadwaterLog(f"{path!r} is damaged: {exc}")
    return LogUnavailable(f"cannot open event log {path!r}: {exc}")


# -- the writer thread ----------------------------------------------------------------------


class _Append:
    __slots__ = ("future", "loop", "records", "stream")

    def __init__(
        self,
        stream: str,
        records: list[bytes],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[list[int]],
    ) -> None:
        self.stream = stream
        self.records = records
        self.loop = loop
        self.future = future


class _Call:
    """Run ``fn(conn)`` in a transaction of its own; ``fn=None`` just waits for a commit."""

    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any] | None,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.future = future


_WAKE: Final = object()  # positions are waiting to be written
_STOP: Final = object()

_Request = _Append | _Call
_Outcome = tuple[_Request, object, BaseException | None]


def _settle(outcomes: list[_Outcome], grown: set[str], signals: dict[str, Signal]) -> None:
    """On the event loop: resolve futures (each once) and wake readers of grown streams."""
    for request, result, error in outcomes:
        future: asyncio.Future[Any] = request.future
        if future.done():
            continue  # the caller was cancelled; what was stored stays stored
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    for name in grown:
        signal = signals.get(name)
        if signal is not None:
            signal.notify()


class _Writer:
    """The single writing connection and its thread."""

    def __init__(
        self,
        path: str,
        durability: Durability,
        commit_window: float,
        signals: dict[str, Signal],
        clock: Callable[[], float],
    ) -> None:
        self._conn = _connect(path, durability)
        self._conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean_shutdown'")
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._commit_window = commit_window
        self._signals = signals
        self._clock = clock
        self._positions: dict[tuple[str, str], int] = {}
        self._positions_lock = threading.Lock()
        self._next_sweep = 0.0
        self._thread = threading.Thread(target=self._run, name=f"headwater-log-writer:{path}")
        self._thread.daemon = True
        self._thread.start()

    # -- called from the event loop --

    def submit(self, request: object) -> None:
        self._queue.put(request)

    def save_position(self, stream: str, consumer: str, position: int) -> None:
        with self._positions_lock:
            first = not self._positions
            self._positions[stream, consumer] = position
        if first:
            self._queue.put(_WAKE)

    def stop(self) -> None:
        self._queue.put(_STOP)

    def join(self) -> None:
        self._thread.join()

    # -- the thread --

    def _run(self) -> None:
        stopping = False
        try:
            while not stopping:
                try:
                    first = self._queue.get(timeout=RETENTION_INTERVAL)
                except queue.Empty:
                    self._sweep_ages()
                    continue
                if first is _WAKE:
                    # Only positions to write: let acks pile up for a moment
                    # (one write for many), unless real work arrives first.
                    with contextlib.suppress(queue.Empty):
                        first = self._queue.get(timeout=POSITION_DELAY)
                if self._commit_window > 0:
                    time.sleep(self._commit_window)
                group = first if type(first) is list else [first]
                with contextlib.suppress(queue.Empty):
                    while len(group) < MAX_GROUP:
                        item = self._queue.get_nowait()
                        if type(item) is list:
                            group += item
                        else:
                            group.append(item)
                stopping = _STOP in group
                requests = [r for r in group if type(r) is _Append or type(r) is _Call]
                try:
                    outcomes, grown = self._process(requests)
                except Exception as exc:  # a bug must not strand every later append
                    failure = LogUnavailable(f"event log writer failed: {exc!r}")
                    outcomes, grown = [(r, None, failure) for r in requests], set()
                self._settle(outcomes, grown)
                if self._clock() >= self._next_sweep:
                    self._sweep_ages()
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("UPDATE meta SET value = '1' WHERE key = 'clean_shutdown'")
            self._conn.close()

    def _process(self, requests: list[_Request]) -> tuple[list[_Outcome], set[str]]:
        appends: dict[str, list[_Append]] = {}
        barriers: list[_Call] = []
        outcomes: list[_Outcome] = []
        for request in requests:
            if isinstance(request, _Append):
                appends.setdefault(request.stream, []).append(request)
            elif request.fn is None:
                barriers.append(request)
            else:
                outcomes.append(self._call(request))
        grown = self._commit_appends(appends, outcomes)
        outcomes += [(barrier, None, None) for barrier in barriers]
        return outcomes, grown

    def _settle(self, outcomes: list[_Outcome], grown: set[str]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, settled, grown, self._signals)

    def _call(self, call: _Call) -> _Outcome:
        conn = self._conn
        assert call.fn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = call.fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except LogError as exc:
            return (call, None, exc)
        except sqlite3.Error as exc:
            return (call, None, LogUnavailable(f"event log write failed: {exc}"))
        return (call, result, None)

    def _commit_appends(
        self, appends: dict[str, list[_Append]], outcomes: list[_Outcome]
    ) -> set[str]:
        """One transaction for every append of the group, and the pending positions."""
        with self._positions_lock:
            positions, self._positions = self._positions, {}
        if not appends and not positions:
            return set()
        conn = self._conn
        done: list[_Outcome] = []
        grown: set[str] = set()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for name, requests in appends.items():
                    if self._append_stream(conn, name, requests, done):
                        grown.add(name)
                if positions:
                    conn.executemany(
                        "INSERT INTO consumers (stream_id, name, position) "
                        "SELECT id, ?, ? FROM streams WHERE name = ? "
                        "ON CONFLICT (stream_id, name) DO UPDATE SET position = excluded.position",
                        [(c, p, s) for (s, c), p in positions.items()],
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            failure = LogUnavailable(f"event log write failed: {exc}")
            outcomes += [(r, None, failure) for rs in appends.values() for r in rs]
            with self._positions_lock:  # keep the positions for the next try
                self._positions = {**positions, **self._positions}
            return set()
        outcomes += done
        return grown

    def _append_stream(
        self, conn: sqlite3.Connection, name: str, requests: list[_Append], done: list[_Outcome]
    ) -> bool:
        row = _stream_row(conn, name)
        if row is None:
            missing = StreamNotFound(name)
            done += [(r, None, missing) for r in requests]
            return False
        limit = row.max_event_size
        now = self._clock()
        if now < row.last_time:
            now = row.last_time  # append times never go backwards (time starts bisect them)
        first = offset = row.last + 1
        accepted: list[bytes] = []
        for request in requests:
            records = request.records
            if max(map(len, records)) > limit:
                index = next(i for i, record in enumerate(records) if len(record) > limit)
                done.append((request, None, EventTooLarge(len(records[index]), limit, index)))
                continue
            accepted += records
            done.append((request, list(range(offset, offset + len(records))), None))
            offset += len(records)
        if not accepted:
            return False
        conn.executemany(
            f"INSERT INTO {_events_table(row.id)} (offset, time, record) VALUES (?, ?, ?)",
            zip(range(first, offset), repeat(now), accepted),
        )
        offset -= 1
        added = sum(map(len, accepted))
        row.last, row.last_time = offset, now
        row.bytes += added
        _apply_size_limits(conn, row)
        _save_row(conn, row)
        return True

    def _sweep_ages(self) -> None:
        """Drop events older than their stream's ``max_age`` (own transaction)."""
        now = self._clock()
        self._next_sweep = now + RETENTION_INTERVAL
        conn = self._conn
        try:
            names = [n for (n,) in conn.execute("SELECT name FROM streams WHERE max_age > 0")]
            if not names:
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                for name in names:
                    row = _stream_row(conn, name)
                    if row is not None and row.max_age is not None:
                        cut = conn.execute(
                            f"SELECT offset FROM {_events_table(row.id)} WHERE time >= ? "
                            "ORDER BY offset LIMIT 1",
                            (now - row.max_age,),
                        ).fetchone()
                        if _drop_before(conn, row, row.last + 1 if cut is None else cut[0]):
                            _save_row(conn, row)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error:
            return  # retried at the next sweep; appends report storage failures


def _drop_before(conn: sqlite3.Connection, row: _Row, cut: int) -> bool:
    """Delete every event below offset ``cut`` and account for it in ``row``."""
    if cut <= row.first:
        return False
    table = _events_table(row.id)
    (freed,) = conn.execute(
        f"SELECT coalesce(sum(length(record)), 0) FROM {table} WHERE offset < ?", (cut,)
    ).fetchone()
    conn.execute(f"DELETE FROM {table} WHERE offset < ?", (cut,))
    row.bytes -= freed
    row.dropped += cut - row.first
    row.first = cut
    return True


def _apply_size_limits(conn: sqlite3.Connection, row: _Row) -> None:
    if row.max_events is not None and row.last - row.first + 1 > row.max_events:
        _drop_before(conn, row, row.last - row.max_events + 1)
    if row.max_bytes is not None and row.bytes > row.max_bytes:
        excess = row.bytes - row.max_bytes
        cut = row.first
        for offset, size in conn.execute(
            f"SELECT offset, length(record) FROM {_events_table(row.id)} ORDER BY offset"
        ):
            excess -= size
            cut = offset + 1
            if excess <= 0:
                break
        _drop_before(conn, row, cut)


# -- the log ---------------------------------------------------------------------------------


class SqliteLog:
    """An :class:`~headwater.log.EventLog` in one SQLite file (see the module docstring)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        commit_window: float = 0.0,
        poll_interval: float | None = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if durability not in ("fsync", "normal"):
            raise ValueError(f"durability must be 'fsync' or 'normal', not {durability!r}")
        self.path = str(Path(path))
        self.durability = durability
        self.poll_interval = poll_interval
        self._clock = clock
        _prepare_file(self.path, durability)
        self._signals: dict[str, Signal] = {}
        self._cursors: dict[tuple[str, str], Cursor] = {}
        self._ids: dict[str, int] = {}
        self._readers: weakref.WeakSet[LocalReader] = weakref.WeakSet()
        self._closed = False
        self._read_conn = _connect(self.path, durability, readonly=True)
        # One reader thread: queries are short and SQLite serialises a
        # connection anyway; it keeps disk waits off the event loop.
        self._read_pool = ThreadPoolExecutor(1, thread_name_prefix="headwater-log-reader")
        self._writer = _Writer(self.path, durability, commit_window, self._signals, clock)
        self._outbox: list[_Append] = []
        self._outbox_loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"event log {self.path!r} is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.submit(_Call(fn, loop, future))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        conn = self._read_conn

        def run() -> T:
            try:
                return fn(conn)
            except sqlite3.Error as exc:
                raise LogUnavailable(f"event log read failed: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._read_pool, run)

    async def _stream_id(self, stream: str) -> int:
        sid = self._ids.get(stream)
        if sid is None:
            found = await self._read(
                lambda c: c.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()
            )
            if found is None:
                raise StreamNotFound(stream)
            sid = self._ids[stream] = found[0]
        return sid

    async def _read_events(
        self, stream: str, fn: Callable[[sqlite3.Connection, str], list[tuple[int, bytes]]]
    ) -> list[Entry]:
        """Run a query over the stream's table; a vanished table means the stream is gone."""
        for _ in range(2):
            table = _events_table(await self._stream_id(stream))

            def run(conn: sqlite3.Connection, table: str = table) -> list[Entry] | None:
                try:
                    rows = fn(conn, table)
                except sqlite3.OperationalError as exc:
                    if "no such table" in str(exc):
                        return None  # deleted, maybe by another process: look the name up again
                    raise
                return [new_entry(Entry, (offset, decode(record))) for offset, record in rows]

            entries = await self._read(run)
            if entries is not None:
                return entries
            self._ids.pop(stream, None)
        raise StreamNotFound(stream)

    # -- EventLog ----------------------------------------------------------------------

    async def create_stream(self, name: str, config: StreamConfig = DEFAULT_STREAM_CONFIG) -> None:
        check_name("stream", name)

        def create(conn: sqlite3.Connection) -> int:
            row = _stream_row(conn, name)
            limits = (config.max_age, config.max_bytes, config.max_events, config.max_event_size)
            if row is None:
                cursor = conn.execute(
                    "INSERT INTO streams (name, max_age, max_bytes, max_events, max_event_size, "
                    "first_offset, last_offset, last_time, bytes, dropped) "
                    "VALUES (?, ?, ?, ?, ?, 1, 0, 0, 0, 0)",
                    (name, *limits),
                )
                sid = cursor.lastrowid
                assert sid is not None
                conn.execute(
                    f"CREATE TABLE {_events_table(sid)} "
                    "(offset INTEGER PRIMARY KEY, time REAL NOT NULL, record BLOB NOT NULL)"
                )
                return sid
            conn.execute(
                "UPDATE streams SET max_age = ?, max_bytes = ?, max_events = ?, "
                "max_event_size = ? WHERE id = ?",
                (*limits, row.id),
            )
            row.max_age, row.max_bytes, row.max_events, row.max_event_size = limits
            _apply_size_limits(conn, row)
            _save_row(conn, row)
            return row.id

        self._ids[name] = await self._write(create)

    async def delete_stream(self, name: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = _stream_row(conn, name)
            if row is None:
                raise StreamNotFound(name)
            conn.execute(f"DROP TABLE {_events_table(row.id)}")
            conn.execute("DELETE FROM consumers WHERE stream_id = ?", (row.id,))
            conn.execute("DELETE FROM streams WHERE id = ?", (row.id,))

        await self._write(delete)
        self._ids.pop(name, None)
        for key in [key for key in self._cursors if key[0] == name]:
            del self._cursors[key]
        signal = self._signals.pop(name, None)
        if signal is not None:
            signal.notify()

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        self._check_open()
        records = [encode(event) for event in as_event_list(events)]
        if not records:
            await self._stream_id(stream)  # still report a missing stream
            return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        request = _Append(stream, records, loop, future)
        if self._outbox_loop is None:
            self._outbox_loop = loop
        if loop is not self._outbox_loop:
            self._writer.submit(request)
        else:
            # Appends made in one pass of the event loop reach the writer as
            # one hand-over: one thread wake-up instead of one per append.
            self._outbox.append(request)
            if len(self._outbox) == 1:
                loop.call_soon(self._hand_over)
        return await future

    def _hand_over(self) -> None:
        outbox, self._outbox = self._outbox, []
        if outbox:
            self._writer.submit(outbox)

    def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> LocalReader:
        self._check_open()
        reader = LocalReader(self, stream, consumer, start)
        self._readers.add(reader)
        return reader

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = _stream_row(conn, stream)
            if row is None:
                raise StreamNotFound(stream)
            conn.execute(
                "DELETE FROM consumers WHERE stream_id = ? AND name = ?", (row.id, consumer)
            )

        self._cursors.pop((stream, consumer), None)
        await self._write(delete)

    async def info(self, stream: str) -> StreamInfo:
        def read(conn: sqlite3.Connection) -> StreamInfo:
            row = _stream_row(conn, stream)
            if row is None:
                raise StreamNotFound(stream)
            positions = conn.execute(
                "SELECT name, position FROM consumers WHERE stream_id = ?", (row.id,)
            ).fetchall()
            return stream_info(
                stream,
                first=row.first,
                last=row.last,
                size=row.bytes,
                dropped=row.dropped,
                config=row.config(),
                positions=positions,
            )

        return await self._read(read)

    async def close(self) -> None:
        if self._closed:
            return
        for reader in list(self._readers):
            await reader.close()
        self._readers.clear()
        self._closed = True
        self._hand_over()  # appends still waiting for this loop pass go first
        self._writer.stop()
        await asyncio.to_thread(self._writer.join)
        await asyncio.to_thread(self._read_pool.shutdown)
        self._read_conn.close()
        for signal in self._signals.values():
            signal.notify()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- LocalBackend --------------------------------------------------------------------

    async def open_cursor(self, stream: str, consumer: str, start: Start) -> Cursor:
        cursor = self._cursors.get((stream, consumer))
        if cursor is not None:
            return cursor
        clock = self._clock

        def open_consumer(conn: sqlite3.Connection) -> int:
            row = _stream_row(conn, stream)
            if row is None:
                raise StreamNotFound(stream)
            found = conn.execute(
                "SELECT position FROM consumers WHERE stream_id = ? AND name = ?",
                (row.id, consumer),
            ).fetchone()
            if found is not None:
                position: int = found[0]
                return position
            position = _start_position(conn, row, start, clock())
            conn.execute("INSERT INTO consumers VALUES (?, ?, ?)", (row.id, consumer, position))
            return position

        position = await self._write(open_consumer)
        # Another reader of the same consumer may have opened it meanwhile.
        return self._cursors.setdefault((stream, consumer), Cursor(position))

    async def fetch_after(self, stream: str, after: int, limit: int) -> list[Entry]:
        return await self._read_events(
            stream,
            lambda conn, table: conn.execute(
                f"SELECT offset, record FROM {table} WHERE offset > ? ORDER BY offset LIMIT ?",
                (after, limit),
            ).fetchall(),
        )

    async def fetch_offsets(self, stream: str, offsets: Sequence[int]) -> list[Entry]:
        def query(conn: sqlite3.Connection, table: str) -> list[tuple[int, bytes]]:
            rows: list[tuple[int, bytes]] = []
            for chunk in _chunks(offsets, _IN_CHUNK):
                marks = ",".join("?" * len(chunk))
                rows += conn.execute(
                    f"SELECT offset, record FROM {table} WHERE offset IN ({marks}) ORDER BY offset",
                    chunk,
                ).fetchall()
            return rows

        return await self._read_events(stream, query)

    def signal(self, stream: str) -> Signal:
        self._check_open()
        signal = self._signals.get(stream)
        if signal is None:
            signal = self._signals[stream] = Signal()
        return signal

    def save_position(self, stream: str, consumer: str, position: int) -> None:
        if not self._closed:
            self._writer.save_position(stream, consumer, position)

    async def flush_positions(self) -> None:
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._writer.submit(_Call(None, loop, future))
        await future


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _start_position(conn: sqlite3.Connection, row: _Row, start: Start, now: float) -> int:
    if start.kind is StartKind.EARLIEST:
        return 0
    if start.kind is StartKind.LATEST:
        return row.last
    if start.kind is StartKind.OFFSET:
        return start.offset - 1
    # The first offset appended at or after the timestamp: append times never
    # decrease with the offset, so bisect with point lookups (O(log n) queries).
    table = _events_table(row.id)
    low, high = row.first, row.last + 1
    while low < high:
        middle = (low + high) // 2
        found = conn.execute(
            f"SELECT offset, time FROM {table} WHERE offset >= ? ORDER BY offset LIMIT 1",
            (middle,),
        ).fetchone()
        if found is None or found[1] >= start.timestamp:
            high = middle
        else:
            low = found[0] + 1
    return low - 1
