"""The SQLite event log's single writer: a thread that turns queued appends into group commits.

How this works: callers queue :class:`Append` requests (records already
encoded) and :class:`Call` requests (a function to run in a transaction of its
own, or a barrier). The thread takes everything queued, runs the calls, then
writes every append of the group and the pending consumer positions in *one*
transaction (one ``executemany`` per stream), commits once, and only then
resolves the callers' futures, with one ``call_soon_threadsafe`` per event
loop. While it commits, new requests queue up and form the next group.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any, Final

from headwater.log._local import Signal
from headwater.log._sqlite_store import (
    Durability,
    apply_size_limits,
    connect,
    drop_before,
    events_table,
    save_row,
    stream_row,
    transaction,
)
from headwater.log.base import EventTooLarge, LogError, LogUnavailable, StreamNotFound

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


class Append:
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


class Call:
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


WAKE: Final = object()  # positions are waiting to be written
STOP: Final = object()

Request = Append | Call
Outcome = tuple[Request, object, BaseException | None]


def settle(outcomes: list[Outcome], grown: set[str], signals: dict[str, Signal]) -> None:
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


class Writer:
    """The single writing connection and its thread."""

    def __init__(
        self,
        path: str,
        durability: Durability,
        commit_window: float,
        signals: dict[str, Signal],
        clock: Callable[[], float],
    ) -> None:
        self._conn = connect(path, durability)
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
            self._queue.put(WAKE)

    def stop(self) -> None:
        self._queue.put(STOP)

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
                if first is WAKE:
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
                stopping = STOP in group
                requests = [r for r in group if type(r) is Append or type(r) is Call]
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

    def _process(self, requests: list[Request]) -> tuple[list[Outcome], set[str]]:
        appends: dict[str, list[Append]] = {}
        barriers: list[Call] = []
        outcomes: list[Outcome] = []
        for request in requests:
            if isinstance(request, Append):
                appends.setdefault(request.stream, []).append(request)
            elif request.fn is None:
                barriers.append(request)
            else:
                outcomes.append(self._call(request))
        grown = self._commit_appends(appends, outcomes)
        outcomes += [(barrier, None, None) for barrier in barriers]
        return outcomes, grown

    def _settle(self, outcomes: list[Outcome], grown: set[str]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, settled, grown, self._signals)

    def _call(self, call: Call) -> Outcome:
        conn = self._conn
        assert call.fn is not None
        try:
            with transaction(conn):
                result = call.fn(conn)
        except LogError as exc:
            return (call, None, exc)
        except sqlite3.Error as exc:
            return (call, None, LogUnavailable(f"event log write failed: {exc}"))
        return (call, result, None)

    def _commit_appends(
        self, appends: dict[str, list[Append]], outcomes: list[Outcome]
    ) -> set[str]:
        """One transaction for every append of the group, and the pending positions."""
        with self._positions_lock:
            positions, self._positions = self._positions, {}
        if not appends and not positions:
            return set()
        conn = self._conn
        done: list[Outcome] = []
        grown: set[str] = set()
        try:
            with transaction(conn):
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
        except sqlite3.Error as exc:
            failure = LogUnavailable(f"event log write failed: {exc}")
            outcomes += [(r, None, failure) for rs in appends.values() for r in rs]
            with self._positions_lock:  # keep the positions for the next try
                self._positions = {**positions, **self._positions}
            return set()
        outcomes += done
        return grown

    def _append_stream(
        self, conn: sqlite3.Connection, name: str, requests: list[Append], done: list[Outcome]
    ) -> bool:
        row = stream_row(conn, name)
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
            f"INSERT INTO {events_table(row.id)} (offset, time, record) VALUES (?, ?, ?)",
            zip(range(first, offset), repeat(now), accepted),
        )
        offset -= 1
        added = sum(map(len, accepted))
        row.last, row.last_time = offset, now
        row.bytes += added
        apply_size_limits(conn, row)
        save_row(conn, row)
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
            with transaction(conn):
                for name in names:
                    row = stream_row(conn, name)
                    if row is not None and row.max_age is not None:
                        cut = conn.execute(
                            f"SELECT offset FROM {events_table(row.id)} WHERE time >= ? "
                            "ORDER BY offset LIMIT 1",
                            (now - row.max_age,),
                        ).fetchone()
                        if drop_before(conn, row, row.last + 1 if cut is None else cut[0]):
                            save_row(conn, row)
        except sqlite3.Error:
            return  # retried at the next sweep; appends report storage failures
