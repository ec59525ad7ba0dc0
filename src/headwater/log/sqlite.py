"""The embedded event log on SQLite: one file, WAL, group commit.

How this works:

- **One writer per log** (:mod:`headwater.log._sqlite_writer`) owns the only
  writing connection. Appends are encoded on the caller's side
  (:mod:`headwater.log._codec`) and put in the writer's deque; the first one
  since the writer last looked wakes it. The writer takes everything waiting,
  writes it in *one* transaction (a stream's events as one row, a batch), commits
  once, and only then resolves every waiting ``append``. While it commits,
  new appends queue up and form the next group: that is group commit, and it
  is why ``fsync`` durability still reaches tens of thousands of events per
  second. With ``fsync`` the writer is a thread (a commit waits for the disk,
  which must not stop the event loop); with ``normal``, where a commit is a
  write into the WAL, the groups are written on the event loop itself, after
  the rest of its pass (:class:`~headwater.log._sqlite_writer.LoopWriter`:
  no thread hand-overs, which cost more than the commit; the figures are in
  docs/architecture.md, "Decisions"). ``commit_window``
  adds an optional wait for more work. WAL checkpoints run on a thread of
  their own, not inside an append's commit.
- **Durability**: ``"fsync"`` runs ``synchronous=FULL`` (every commit is on
  disk before ``append`` returns); ``"normal"`` runs ``synchronous=NORMAL``
  (a commit survives a process crash, but the last ones may be lost on power
  failure).
- **Storage** (:mod:`headwater.log._sqlite_store`): a ``streams`` table holds
  each stream's counters and limits, ``consumers`` the positions, and each
  stream has its own table ``events_<id>`` whose ``INTEGER PRIMARY KEY`` is the
  offset of the row's first event, so that reads are rowid range scans. A row
  holds one record, as the codec wrote it, or the records of one group commit
  as a batch (as Kafka stores record batches): one B-tree insert per group
  instead of one per event. Records are read back without validation. A new
  file has 16 KiB pages (:data:`~headwater.log._sqlite_store.PAGE_SIZE`): a
  commit writes each changed page to the WAL as a frame of its own, and a
  group of hundreds of events commits in 40% less time than in 4 KiB pages.
- **Pre-encoded events**: appends of
  :class:`~headwater.log._codec.EncodedEvents` (an MQTT source's batches)
  store the records they carry instead of encoding the events again.
- **Readers** use a separate connection (WAL: readers never block the writer),
  queried on the event loop's own thread. A reader thread measured worse:
  while the loop was busy (the MQTT ingest of ``benchmarks/mqtt_to_http.py``)
  each hand-over waited for the GIL, and a dispatcher's read of 50 entries
  took 10-12 ms instead of under 1 ms, starving its deliveries. A read is a
  rowid range scan of at most a batch, mostly from the page cache (the writer
  just wrote it); a replay from a cold disk waits for the disk on the loop.
  Waiting readers are woken by the writer after each commit;
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
import functools
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TypeVar

from headwater.cloudevents import CloudEvent
from headwater.log._codec import (
    CorruptRecord,
    decode,
    encode,
    is_batch,
    records_of,
    split_batch,
)
from headwater.log._cursor import Cursor
from headwater.log._local import LocalReader, Signal
from headwater.log._sqlite_store import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    Durability,
    apply_size_limits,
    connect,
    events_table,
    first_offset_at,
    holding,
    new_stream_id,
    prepare_file,
    save_row,
    stream_row,
)
from headwater.log._sqlite_writer import Call, LoopWriter, Writer
from headwater.log.base import (
    DEFAULT_STREAM_CONFIG,
    EARLIEST,
    Entry,
    EventLogBase,
    LogClosed,
    LogCorrupted,
    LogUnavailable,
    Start,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
    as_event_list,
    check_name,
    new_entry,
    stream_info,
)

T = TypeVar("T")

DEFAULT_POLL_INTERVAL: Final = 0.5
"""Seconds between looks for appends made by other processes while a reader waits.
Appends in this process wake readers at once; this only bounds the delay for
a file shared between processes, at the cost of one cheap query per waiting
reader per interval."""

_IN_CHUNK: Final = 500
"""Offsets per ``IN (...)`` query (below SQLite's parameter limit)."""

__all__ = ["APPLICATION_ID", "DEFAULT_POLL_INTERVAL", "SCHEMA_VERSION", "Durability", "SqliteLog"]


class SqliteLog(EventLogBase):
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
        if not commit_window >= 0:
            raise ValueError(f"commit_window must be >= 0 seconds, not {commit_window!r}")
        if poll_interval is not None and not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds or None, not {poll_interval!r}")
        self.path = str(Path(path))
        self.durability = durability
        self.poll_interval = poll_interval
        prepare_file(self.path, durability)
        self._signals: dict[str, Signal] = {}
        self._cursors: dict[tuple[str, str], Cursor] = {}
        self._ids: dict[str, int] = {}
        self._readers: weakref.WeakSet[LocalReader] = weakref.WeakSet()
        self._closed = False
        self._read_conn = connect(self.path, durability, readonly=True)
        # `normal` commits are writes, not syncs: made on the loop (see LoopWriter).
        writer = LoopWriter if durability == "normal" else Writer
        self._writer = writer(self.path, durability, commit_window, self._signals, clock)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        durability: Durability = "fsync",
        commit_window: float = 0.0,
        poll_interval: float | None = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> SqliteLog:
        """Open from async code: the constructor's file checks run in a worker thread
        (after an unclean shutdown they read the whole file)."""
        return await asyncio.to_thread(
            functools.partial(
                cls,
                path,
                durability=durability,
                commit_window=commit_window,
                poll_interval=poll_interval,
                clock=clock,
            )
        )

    # -- plumbing ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"event log {self.path!r} is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._writer.submit(Call(fn, loop, future))
        return await future

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(read connection)``, run here on the loop's thread (see the module docstring)."""
        self._check_open()
        try:
            return fn(self._read_conn)
        except CorruptRecord as exc:
            raise LogCorrupted(f"event log {self.path!r}: a stored event is damaged") from exc
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_CORRUPT:
                raise LogCorrupted(f"event log {self.path!r} is damaged: {exc}") from exc
            raise LogUnavailable(f"event log read failed: {exc}") from exc
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log read failed: {exc}") from exc

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
        self, stream: str, fn: Callable[[sqlite3.Connection, int], list[tuple[int, bytes]]]
    ) -> list[Entry]:
        """Run a query over the stream's table (``fn(conn, stream id)``); a vanished table
        means the stream is gone."""
        for _ in range(2):
            sid = await self._stream_id(stream)

            def run(conn: sqlite3.Connection, sid: int = sid) -> list[Entry] | None:
                try:
                    rows = fn(conn, sid)
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
            row = stream_row(conn, name)
            limits = (config.max_age, config.max_bytes, config.max_events, config.max_event_size)
            if row is None:
                sid = new_stream_id(conn)
                conn.execute(
                    "INSERT INTO streams (id, name, max_age, max_bytes, max_events, "
                    "max_event_size, first_offset, last_offset, last_time, bytes, dropped) "
                    "VALUES (?, ?, ?, ?, ?, ?, 1, 0, 0, 0, 0)",
                    (sid, name, *limits),
                )
                conn.execute(
                    f"CREATE TABLE {events_table(sid)} "
                    "(offset INTEGER PRIMARY KEY, time REAL NOT NULL, record BLOB NOT NULL)"
                )
                return sid
            conn.execute(
                "UPDATE streams SET max_age = ?, max_bytes = ?, max_events = ?, "
                "max_event_size = ? WHERE id = ?",
                (*limits, row.id),
            )
            row.max_age, row.max_bytes, row.max_events, row.max_event_size = limits
            apply_size_limits(conn, row)
            save_row(conn, row)
            return row.id

        self._ids[name] = await self._write(create)

    async def delete_stream(self, name: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = stream_row(conn, name)
            if row is None:
                raise StreamNotFound(name)
            conn.execute(f"DROP TABLE {events_table(row.id)}")
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
        if self._closed:
            raise LogClosed(f"event log {self.path!r} is closed")
        if type(events) is list and len(events) == 1:
            records = [encode(events[0])]  # one event per call: the usual case, kept short
        else:
            records = records_of(as_event_list(events))
            if not records:
                await self._stream_id(stream)  # still report a missing stream
                return []
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[int]] = loop.create_future()
        self._writer.append((loop, stream, records, future))
        return await future

    def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> LocalReader:
        self._check_open()
        reader = LocalReader(self, stream, consumer, start)
        self._readers.add(reader)
        return reader

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            row = stream_row(conn, stream)
            if row is None:
                raise StreamNotFound(stream)
            conn.execute(
                "DELETE FROM consumers WHERE stream_id = ? AND name = ?", (row.id, consumer)
            )

        self._cursors.pop((stream, consumer), None)
        await self._write(delete)

    async def info(self, stream: str) -> StreamInfo:
        def read(conn: sqlite3.Connection) -> StreamInfo:
            row = stream_row(conn, stream)
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
        await self._writer.close()
        self._read_conn.close()
        for signal in self._signals.values():
            signal.notify()

    # -- LocalBackend --------------------------------------------------------------------

    async def open_cursor(self, stream: str, consumer: str, start: Start) -> Cursor:
        cursor = self._cursors.get((stream, consumer))
        if cursor is not None:
            return cursor

        def open_consumer(conn: sqlite3.Connection) -> int:
            row = stream_row(conn, stream)
            if row is None:
                raise StreamNotFound(stream)
            found = conn.execute(
                "SELECT position FROM consumers WHERE stream_id = ? AND name = ?",
                (row.id, consumer),
            ).fetchone()
            if found is not None:
                position: int = found[0]
                return position
            position = start.position(row.last, lambda t: first_offset_at(conn, row, t))
            conn.execute("INSERT INTO consumers VALUES (?, ?, ?)", (row.id, consumer, position))
            return position

        position = await self._write(open_consumer)
        # Another reader of the same consumer may have opened it meanwhile.
        return self._cursors.setdefault((stream, consumer), Cursor(position))

    async def fetch_after(self, stream: str, after: int, limit: int) -> list[Entry]:
        start = after + 1

        def query(conn: sqlite3.Connection, sid: int) -> list[tuple[int, bytes]]:
            table = events_table(sid)
            # From the row holding ``start`` (a batch may begin before it), as far as
            # needed; nothing at all, not even that row, when ``start`` is past the end
            # (a reader waiting at the end asks often).
            rows = conn.execute(
                f"SELECT offset, record FROM {table} "
                "WHERE ?1 <= (SELECT last_offset FROM streams WHERE id = ?2) AND offset >= "
                f"coalesce({holding(table, '?1')}, ?1) "
                "ORDER BY offset",
                (start, sid),
            )
            found: list[tuple[int, bytes]] = []
            with contextlib.closing(rows):
                for offset, value in rows:
                    if is_batch(value):
                        skip = start - offset if offset < start else 0
                        records = split_batch(value, skip, limit - len(found))
                        first = offset + skip
                        found += [(first + i, record) for i, record in enumerate(records)]
                    elif offset >= start:
                        found.append((offset, value))
                    if len(found) >= limit:
                        break
            return found

        return await self._read_events(stream, query)

    async def fetch_offsets(self, stream: str, offsets: Sequence[int]) -> list[Entry]:
        wanted = sorted(set(offsets))
        if not wanted:
            return []

        def query(conn: sqlite3.Connection, sid: int) -> list[tuple[int, bytes]]:
            table = events_table(sid)
            if wanted[-1] - wanted[0] < 4 * len(wanted):  # close together: one range scan
                rows = conn.execute(
                    f"SELECT offset, record FROM {table} "
                    f"WHERE offset >= coalesce({holding(table, '?1')}, ?1) "
                    "AND offset <= ?2 ORDER BY offset",
                    (wanted[0], wanted[-1]),
                ).fetchall()
                return _pick(rows, wanted)
            # Spread out: the rows that begin at them, then the batches holding the others.
            held: dict[int, bytes] = {}
            for i in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                held.update(
                    conn.execute(
                        f"SELECT offset, record FROM {table} WHERE offset IN ({marks})", chunk
                    ).fetchall()
                )
            for offset in wanted:
                if offset not in held:
                    (key,) = conn.execute(f"SELECT {holding(table)}", (offset,)).fetchone()
                    if key is not None and key not in held:
                        held.update(
                            conn.execute(
                                f"SELECT offset, record FROM {table} WHERE offset = ?", (key,)
                            ).fetchall()
                        )
            return _pick(sorted(held.items()), wanted)

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
        self._writer.submit(Call(None, loop, future))
        await future


def _pick(rows: list[tuple[int, bytes]], wanted: list[int]) -> list[tuple[int, bytes]]:
    """The ``wanted`` offsets (ascending) that ``rows`` (ascending) hold, with their records."""
    found: list[tuple[int, bytes]] = []
    index = 0
    for offset, value in rows:
        records = split_batch(value) if is_batch(value) else [value]
        end = offset + len(records)
        while index < len(wanted) and wanted[index] < offset:
            index += 1  # dropped, or not stored
        while index < len(wanted) and wanted[index] < end:
            found.append((wanted[index], records[wanted[index] - offset]))
            index += 1
    return found
