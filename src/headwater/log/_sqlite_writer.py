"""The SQLite event log's single writer, which turns queued appends into group commits.

Two ways to drive it: :class:`Writer`, a thread (``fsync`` durability, whose
commits wait for the disk), described here; and :class:`LoopWriter`, which
makes the same group commits on the event loop (``normal``: see its docstring).

How this works: appends (records already encoded) go into a deque, and the
first one since the thread last looked also queues a wake-up token, so the
thread starts waking while the event loop is still making the rest of its
pass; :class:`Call` requests (a function to run in a transaction of its own,
or a barrier) are queued. The thread takes everything queued and every
append waiting, runs the calls, then writes every append of the group and
the pending consumer positions in *one* transaction, commits once, and only
then resolves the callers' futures, with one ``call_soon_threadsafe`` per
event loop. While it commits, new requests queue up and form the next group.

The thread holds the GIL as little as it can, because every moment it holds
it the event loop cannot run: a group's events of a stream go in as one row,
a batch of records (one SQLite call, the GIL released, instead of a GIL round
trip and a B-tree insert per event; see :data:`BATCH_BYTES`), and WAL checkpoints,
which copy pages to the database file and sync it, run on a
:class:`Checkpointer` thread of their own instead of inside some unlucky
append's commit (SQLite's automatic checkpoint stays on, at a much larger
size, as a backstop should the checkpointer fall behind).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from headwater.log._codec import stored_value
from headwater.log._local import Signal
from headwater.log._sqlite_store import (
    BUSY_TIMEOUT_MS,
    Durability,
    apply_size_limits,
    connect,
    drop_before,
    events_table,
    save_row,
    stream_row,
    transaction,
    write_error,
)
from headwater.log.base import EventTooLarge, LogError, LogUnavailable, StreamNotFound

log = logging.getLogger(__name__)

RETENTION_INTERVAL: Final = 1.0
"""Seconds between ``max_age`` sweeps (age limits act within about this much)."""

POSITION_DELAY: Final = 0.02
"""Seconds the writer waits, when woken only by acks, for more acks (or appends) to
write with them: positions reach the disk at most this much later than the ack
(``Reader.flush()`` does not wait for it), and a stream of acks costs about
50 small transactions a second instead of one per ack."""

MAX_APPENDS: Final = 4096
"""Appends the writer takes into one transaction. A larger group amortises
the commit further but delays its first caller; the queue itself is not
bounded here because every caller awaits its own append (producers are
back-pressured by their own ``await``)."""

MAX_GROUP: Final = 1024
"""Queued requests (calls, barriers, wake-up tokens) the writer takes at once."""

BATCH_EVENTS: Final = 1024
BATCH_BYTES: Final = 64 * 1024
"""The most events and record bytes stored in one row. A group's events of a
stream go into one row, a batch (:func:`headwater.log._codec.encode_batch`),
as long as they fit: inserting one row of 100 events costs SQLite little more
than inserting one event, where 100 rows cost 100 B-tree inserts
(``benchmarks/log_append.py``: 0.9 us per event, a fifth of an append). The
bounds keep what a reader copies out of SQLite for one event small; a
record over ``BATCH_BYTES`` is a row of its own."""

CHECKPOINT_BYTES: Final = 1024 * 1024
"""Bytes written to the WAL (estimated: the records plus two pages per commit)
after which the checkpointer is asked to copy the WAL into the database file.
Small enough that each background checkpoint is short, and the writer's
catch-up (see :class:`Checkpointer`) copies little."""

COMMIT_PAGES: Final = 2
"""The estimated pages a commit writes to the WAL besides its records (the partly
filled last page of the events table, the stream's row, positions)."""

RESTART_BYTES: Final = 4 * 1024 * 1024
"""WAL size from which the writer, after a background checkpoint, copies the
remainder itself so that the WAL restarts: SQLite's own ``wal_autocheckpoint``
default (1000 pages of 4 KiB)."""

BACKSTOP_BYTES: Final = 40 * 1024 * 1024
"""The WAL size at which SQLite checkpoints inside a commit (``wal_autocheckpoint``
of the writing connection): only if the checkpointer cannot keep up (a very
slow disk) or has failed."""


Item = tuple[asyncio.AbstractEventLoop, str, list[bytes], "asyncio.Future[list[int]]"]
"""One ``append`` call: the caller's loop, the stream, the encoded records, the future."""


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
APPENDS: Final = object()  # appends are waiting in the deque
STOP: Final = object()

Outcome = tuple["asyncio.Future[Any]", object, BaseException | None]


def settle(outcomes: list[Outcome], grown: set[str], signals: dict[str, Signal]) -> None:
    """On the event loop: resolve futures (each once) and wake readers of grown streams."""
    for future, result, error in outcomes:
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
        # The file's own page size: a file made before PAGE_SIZE keeps 4 KiB pages.
        self._page_size: int = self._conn.execute("PRAGMA page_size").fetchone()[0]
        backstop = BACKSTOP_BYTES // self._page_size
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {backstop}")
        self._conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean_shutdown'")
        self._appends: collections.deque[Item] = collections.deque()
        self._commit_window = commit_window
        self._signals = signals
        self._clock = clock
        self._positions: dict[tuple[str, str], int] = {}
        self._positions_lock = threading.Lock()
        self._next_sweep = 0.0
        self._inserts: dict[int, str] = {}
        self._checkpointer = Checkpointer(path, durability, RESTART_BYTES // self._page_size)
        self._unchecked = 0  # estimated WAL bytes since the checkpointer was last asked
        self._start(path)

    def _start(self, path: str) -> None:
        """Start what drives the groups (here: the thread and its queue)."""
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._told = False  # an APPENDS token is queued that the thread has not taken yet
        self._thread = threading.Thread(target=self._run, name=f"headwater-log-writer:{path}")
        self._thread.daemon = True
        self._thread.start()

    # -- called from the event loop --

    def submit(self, request: Call) -> None:
        self._queue.put(request)

    def append(self, item: Item) -> None:
        """Queue an append; any thread. One wake-up token per look of the writer."""
        self._appends.append(item)
        if not self._told:
            self._told = True
            self._queue.put(APPENDS)

    def save_position(self, stream: str, consumer: str, position: int) -> None:
        with self._positions_lock:
            first = not self._positions
            self._positions[stream, consumer] = position
        if first:
            self._queue.put(WAKE)

    async def close(self) -> None:
        """Write what is queued, then stop; the connection is closed when this returns."""
        self._queue.put(STOP)
        await asyncio.to_thread(self._thread.join)

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
                if self._checkpointer.restart_wanted:
                    self._finish_checkpoint()
                group = [first]
                with contextlib.suppress(queue.Empty):
                    while len(group) < MAX_GROUP:
                        group.append(self._queue.get_nowait())
                stopping = STOP in group
                # Reset before taking: an append that finds it reset queues
                # another token, so none waits unseen (at worst a wake-up
                # finds the deque empty).
                self._told = False
                waiting = self._appends
                items = [waiting.popleft() for _ in range(min(len(waiting), MAX_APPENDS))]
                if len(waiting):
                    self._told = True  # the rest: next group, without waiting
                    self._queue.put(APPENDS)
                self._settle(*self._process(group, items))
                if self._clock() >= self._next_sweep:
                    self._sweep_ages()
        finally:
            self._shut()

    def _shut(self) -> None:
        self._checkpointer.stop()
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("UPDATE meta SET value = '1' WHERE key = 'clean_shutdown'")
        self._conn.close()

    def _finish_checkpoint(self) -> None:
        """Copy what the background checkpoint left, so that the next commit restarts
        the WAL; tried again after the next group while the checkpointer is busy."""
        try:
            ((busy, _, _),) = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            return  # tried again next time; the backstop remains
        if not busy:
            self._checkpointer.restart_wanted = False

    def _process(
        self, group: list[object], items: list[Item]
    ) -> tuple[dict[asyncio.AbstractEventLoop, list[Outcome]], set[str]]:
        """Run the calls, then commit the appends: the outcomes per event loop to tell,
        and the streams that grew."""
        barriers: list[Call] = []
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for request in group:
            if type(request) is Call:
                if request.fn is None:
                    barriers.append(request)
                else:
                    by_loop.setdefault(request.loop, []).append(self._call(request))
        appends: dict[str, list[Item]] = {}
        loop: asyncio.AbstractEventLoop | None = None
        if items:
            loop, stream = items[0][0], items[0][1]
            if all(item[0] is loop and item[1] == stream for item in items):
                appends[stream] = items  # one loop, one stream: the usual case
            else:
                loop = None
                for item in items:
                    appends.setdefault(item[1], []).append(item)
        failure: LogError | None = None
        try:
            outcomes, grown = self._commit_appends(appends)
        except LogUnavailable as exc:
            failure = exc
        except Exception as exc:  # a bug must not strand every later append
            failure = LogUnavailable(f"event log writer failed: {exc!r}")
        if failure is not None:  # nothing of the group was written
            outcomes, grown = [(i[3], None, failure) for r in appends.values() for i in r], set()
        if items:
            if loop is not None and not by_loop:
                by_loop[loop] = outcomes
            else:
                owner = {id(item[3]): item[0] for item in items}
                for outcome in outcomes:
                    by_loop.setdefault(owner[id(outcome[0])], []).append(outcome)
        for barrier in barriers:  # waiting for this commit: told whether it failed
            by_loop.setdefault(barrier.loop, []).append((barrier.future, None, failure))
        return by_loop, grown

    def _settle(
        self, by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]], grown: set[str]
    ) -> None:
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
            return (call.future, None, exc)
        except sqlite3.Error as exc:
            return (call.future, None, write_error(exc))
        except Exception as exc:  # a bug in the call: its caller gets it, the group goes on
            return (call.future, None, exc)
        return (call.future, result, None)

    def _commit_appends(self, appends: dict[str, list[Item]]) -> tuple[list[Outcome], set[str]]:
        """One transaction for every append of the group, and the pending positions
        (kept for the next group if it fails; SQLite's errors raise LogUnavailable)."""
        with self._positions_lock:
            positions, self._positions = self._positions, {}
        if not appends and not positions:
            return [], set()
        conn = self._conn
        done: list[Outcome] = []
        grown: set[str] = set()
        written = COMMIT_PAGES * self._page_size
        try:
            with transaction(conn):
                for name, items in appends.items():
                    stored = self._append_stream(conn, name, items, done)
                    if stored:
                        grown.add(name)
                        written += stored
                if positions:
                    conn.executemany(
                        "INSERT INTO consumers (stream_id, name, position) "
                        "SELECT id, ?, ? FROM streams WHERE name = ? "
                        "ON CONFLICT (stream_id, name) DO UPDATE SET position = excluded.position",
                        [(c, p, s) for (s, c), p in positions.items()],
                    )
        except Exception as exc:
            with self._positions_lock:  # keep the positions for the next try
                self._positions = {**positions, **self._positions}
            if isinstance(exc, sqlite3.Error):
                raise write_error(exc) from exc
            raise
        self._unchecked += written
        if self._unchecked >= CHECKPOINT_BYTES:
            self._unchecked = 0
            self._checkpointer.request()
        return done, grown

    def _append_stream(
        self, conn: sqlite3.Connection, name: str, items: list[Item], done: list[Outcome]
    ) -> int:
        """Insert the stream's appends that fit its limits; the bytes stored."""
        row = stream_row(conn, name)
        if row is None:
            missing = StreamNotFound(name)
            done += [(item[3], None, missing) for item in items]
            return 0
        limit = row.max_event_size
        now = self._clock()
        if now < row.last_time:
            now = row.last_time  # append times never go backwards (time starts bisect them)
        first = offset = row.last + 1
        if len(items) == 1:
            accepted = items[0][2]
        else:
            accepted = [record for item in items for record in item[2]]
        if max(map(len, accepted)) <= limit:  # the usual case: every record fits
            for _, _, records, future in items:
                count = len(records)
                done.append(
                    (future, [offset] if count == 1 else list(range(offset, offset + count)), None)
                )
                offset += count
        else:
            accepted = []
            for _, _, records, future in items:
                if max(map(len, records)) > limit:
                    index = next(i for i, record in enumerate(records) if len(record) > limit)
                    done.append((future, None, EventTooLarge(len(records[index]), limit, index)))
                    continue
                accepted += records
                done.append((future, list(range(offset, offset + len(records))), None))
                offset += len(records)
            if not accepted:
                return 0
        stored = self._insert(conn, row.id, first, now, accepted)
        row.last, row.last_time = first + len(accepted) - 1, now
        row.bytes += stored
        apply_size_limits(conn, row)
        save_row(conn, row)
        return stored

    def _insert(
        self, conn: sqlite3.Connection, stream_id: int, first: int, now: float, records: list[bytes]
    ) -> int:
        """Rows for offsets ``first, first + 1, ...``: batches of up to :data:`BATCH_EVENTS`
        records and :data:`BATCH_BYTES` bytes (a record alone is stored as itself);
        the bytes stored."""
        sql = self._inserts.get(stream_id)
        if sql is None:
            sql = self._inserts[stream_id] = (
                f"INSERT INTO {events_table(stream_id)} (offset, time, record) VALUES (?, ?, ?)"
            )
        if len(records) <= BATCH_EVENTS and sum(map(len, records)) <= BATCH_BYTES:  # usual
            value = stored_value(records)
            conn.execute(sql, (first, now, value))
            return len(value)
        rows = []
        start, size = 0, 0
        for index, record in enumerate(records):
            full = size + len(record) > BATCH_BYTES or index - start == BATCH_EVENTS
            if full and index > start:
                rows.append((first + start, now, stored_value(records[start:index])))
                start, size = index, 0
            size += len(record)
        rows.append((first + start, now, stored_value(records[start:])))
        conn.executemany(sql, rows)
        return sum(len(value) for _, _, value in rows)

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


class LoopWriter(Writer):
    """The same group commits, made on the event loop's own thread (``normal`` durability).

    Why: with ``synchronous=NORMAL`` a commit is a write into the WAL, not a
    sync, so it is short; what the writer thread cost was the hand-overs.
    Each group took two thread wake-ups, and the thread waited for the GIL
    whenever the loop was busy. ``benchmarks/log_append.py``: 100 producers
    appending one event each ran at 0.27-0.34x raw ``sqlite3``'s 1000-row
    transactions on the thread, and at 0.41-0.45x here.

    How: the first append (or call, or position) since the last group
    schedules one drain with ``call_soon``; the drain runs after the rest of
    the loop's pass, takes everything queued, commits it as one transaction
    (:meth:`Writer._process`, unchanged) and resolves the callers' futures at
    once. The loop never waits for the disk or for another process:

    - the background WAL checkpoints run on the :class:`Checkpointer`'s
      thread as before; the writer's own checkpoint catch-up and the
      ``max_age`` sweeps run as jobs on a thread of this writer's, during
      which no group is written (appends wait in the queue);
    - the connection's busy timeout is 0 on the loop: when another process
      holds the write lock, the group is written by a job instead, which
      waits for the lock as the thread writer would.

    The connection is used by one drain or job at a time (a lock, whatever
    the thread). Groups are written on the loop that first used the log;
    callers on another loop are woken through theirs, and if that first
    loop is closed (or stopped while another runs), the next caller's loop
    takes over.
    """

    def _start(self, path: str) -> None:
        self._conn.execute("PRAGMA busy_timeout = 0")
        self._calls: collections.deque[Call] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False
        self._stopped = False
        self._caught_up = False  # the checkpoint catch-up was tried since the last group
        self._lock = threading.Lock()
        self._job: concurrent.futures.Future[None] | None = None
        self._jobs = ThreadPoolExecutor(1, thread_name_prefix=f"headwater-log-writer:{path}")
        self._position_timer: asyncio.TimerHandle | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Future[None] | None = None

    # -- called from the event loop --

    def submit(self, request: Call) -> None:
        self._calls.append(request)
        self._wake(request.loop)

    def append(self, item: Item) -> None:
        self._appends.append(item)
        if not self._scheduled or item[0] is not self._loop:
            self._wake(item[0])

    def save_position(self, stream: str, consumer: str, position: int) -> None:
        with self._positions_lock:
            first = not self._positions
            self._positions[stream, consumer] = position
        if not first or self._stopped:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # written with the next group, or at close
        bound = self._bind(loop)
        if bound is loop:
            self._arm_positions()
        else:
            with contextlib.suppress(RuntimeError):
                bound.call_soon_threadsafe(self._arm_positions)

    async def close(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._stopped = True  # timers and drains do nothing from now on
        job = self._job
        if job is not None:
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(job)
        # On a thread: the last group may wait for another process's lock.
        await asyncio.to_thread(self._final)
        self._jobs.shutdown(wait=True)

    # -- scheduling --

    def _bind(self, loop: asyncio.AbstractEventLoop) -> asyncio.AbstractEventLoop:
        """The loop the groups are written on: the first caller's, until it is gone."""
        bound = self._loop
        if bound is loop:
            return loop
        if bound is None or bound.is_closed() or (not bound.is_running() and loop.is_running()):
            for timer in (self._position_timer, self._sweep_timer):
                if timer is not None:
                    timer.cancel()
            self._position_timer = None
            self._scheduled = False  # a drain scheduled there will never run
            self._loop = loop
            self._sweep_timer = loop.call_later(RETENTION_INTERVAL, self._sweep_due)
            return loop
        return bound

    def _wake(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make sure a drain runs soon on the writer's loop."""
        bound = self._bind(loop)
        if self._scheduled or self._busy() or self._stopped:
            return  # a drain is coming, or follows the job
        self._scheduled = True
        try:
            if self._commit_window > 0:
                bound.call_soon_threadsafe(self._drain_later)
            elif loop is bound:
                bound.call_soon(self._drain)
            else:
                bound.call_soon_threadsafe(self._drain)
        except RuntimeError:  # closed meanwhile: the next caller's loop takes over
            self._scheduled = False

    def _busy(self) -> bool:
        job = self._job
        return job is not None and not job.done()

    def _drain_later(self) -> None:
        """After ``commit_window`` seconds, to gather more work into the group."""
        assert self._loop is not None
        self._loop.call_later(self._commit_window, self._drain)

    def _arm_positions(self) -> None:
        # Let acks pile up for a moment: one write for many (see POSITION_DELAY).
        if self._position_timer is None and self._loop is not None and not self._stopped:
            self._position_timer = self._loop.call_later(POSITION_DELAY, self._positions_due)

    def _positions_due(self) -> None:
        self._position_timer = None
        if self._loop is not None and not self._stopped:
            self._wake(self._loop)

    def _sweep_due(self) -> None:
        loop = self._loop
        if self._stopped or loop is None:
            return
        self._sweep_timer = loop.call_later(RETENTION_INTERVAL, self._sweep_due)
        if not self._busy():
            self._run_job(self._sweep_ages)

    def _run_job(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the writer's thread, holding the connection; no group meanwhile."""

        def run() -> None:
            with self._lock:
                if not self._stopped:
                    job()

        future = self._jobs.submit(run)
        self._job = future
        future.add_done_callback(self._job_done)

    def _job_done(self, job: concurrent.futures.Future[None]) -> None:
        """On the job's thread: report a failure, and wake the loop for what queued up."""
        error = None if job.cancelled() else job.exception()
        if error is not None:  # the jobs handle SQLite's errors: this is a bug
            log.error("event log writer job failed", exc_info=error)
        loop = self._loop
        if loop is not None and not self._stopped:
            with contextlib.suppress(RuntimeError):  # closed: the next caller's loop takes over
                loop.call_soon_threadsafe(self._resume)

    def _resume(self) -> None:
        if self._loop is not None and (self._appends or self._calls or self._positions):
            self._wake(self._loop)

    # -- the drain --

    def _drain(self) -> None:
        """On the writer's loop: write everything queued as one group."""
        if asyncio.get_running_loop() is not self._loop:
            return  # scheduled on a loop the writer has left
        self._scheduled = False
        if self._stopped or self._busy():
            return
        if self._checkpointer.restart_wanted and not self._caught_up:
            self._caught_up = True  # once per group: a failing catch-up must not stop writing
            self._run_job(self._finish_checkpoint)
            return
        with self._lock:
            if self._stopped:
                return
            try:
                self._conn.execute("BEGIN IMMEDIATE")  # busy timeout 0: never waits
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    raise
                # Another process writes: a job waits for the lock instead of the loop.
                self._run_job(self._drain_waiting)
                return
            group, items = self._take()
            if self._appends or self._calls:
                self._wake(self._loop)  # the rest: the next group
            answers = self._write(group, items)
        self._caught_up = False
        self._answer(*answers)

    def _drain_waiting(self) -> None:
        """A job: one group, waiting for another process's write lock as long as SQLite does."""
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        try:
            self._answer(*self._write(*self._take()), on_loop=False)
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _final(self) -> None:
        """At close, on a thread: write what is left, then close the connection."""
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        with self._lock:
            while True:
                self._answer(*self._write(*self._take()), on_loop=False)
                if not (self._appends or self._calls):
                    break
            self._shut()

    def _take(self) -> tuple[list[object], list[Item]]:
        calls, waiting = self._calls, self._appends
        group: list[object] = [calls.popleft() for _ in range(min(len(calls), MAX_GROUP))]
        # One popleft each, not list() and clear(): this also runs on the jobs'
        # thread while other threads append, and popleft is atomic.
        items = [waiting.popleft() for _ in range(min(len(waiting), MAX_APPENDS))]
        return group, items

    def _write(
        self, group: list[object], items: list[Item]
    ) -> tuple[dict[asyncio.AbstractEventLoop, list[Outcome]], set[str]]:
        """The group's transaction (begun already, or begun here); what to tell whom."""
        try:
            answers = self._process(group, items)
        except Exception as exc:  # a bug must not leave the group's callers waiting
            failure = LogUnavailable(f"event log writer failed: {exc!r}")
            by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
            for request in group:
                if type(request) is Call:
                    by_loop.setdefault(request.loop, []).append((request.future, None, failure))
            for item in items:
                by_loop.setdefault(item[0], []).append((item[3], None, failure))
            answers = (by_loop, set())
        if self._conn.in_transaction:  # begun for a group that had nothing to write
            self._conn.execute("ROLLBACK")
        return answers

    def _answer(
        self,
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]],
        grown: set[str],
        on_loop: bool = True,
    ) -> None:
        """Resolve the callers' futures: at once on the writer's loop (``on_loop``), through
        their loops otherwise (:meth:`Writer._settle`)."""
        here = by_loop.pop(self._loop, None) if on_loop else None  # type: ignore[arg-type]
        if here is not None:
            settle(here, grown, self._signals)
        self._settle(by_loop, grown)


class Checkpointer:
    """Copies the WAL into the database file on a thread of its own, when asked.

    A checkpoint writes pages to the database file and syncs it: milliseconds
    that, inside SQLite's automatic checkpoint, some unlucky append would wait
    for. A ``PASSIVE`` checkpoint on another connection runs while the writer
    goes on committing (SQLite allows one writer and one checkpointer at a
    time); whatever it cannot copy yet (a reader still needs old pages) it
    copies the next time.

    The WAL restarts from its beginning only at a commit that began when
    *everything* had been copied, which a checkpoint running beside a busy
    writer never achieves; so once the WAL has :data:`RESTART_BYTES`, the
    writer, between two groups, checkpoints the few pages committed since the
    background checkpoint itself (no concurrent commit: it completes), and the
    WAL stays near that size.
    """

    def __init__(self, path: str, durability: Durability, restart_pages: int) -> None:
        self._conn = connect(path, durability)
        self._restart_pages = restart_pages
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self.restart_wanted = False
        """Set when the WAL is large: the writer copies what was committed meanwhile."""
        self._thread = threading.Thread(target=self._run, name=f"headwater-log-checkpoint:{path}")
        self._thread.daemon = True
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wanted.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._stopping.is_set():
                return
            if self.restart_wanted:
                continue  # the writer's turn to checkpoint: do not make it busy
            try:
                # fetchall: a statement left unfinished would hold a read
                # transaction open, and the WAL could never restart.
                ((_, pages, _),) = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:
                pass  # busy or failing: next time, or the backstop
            else:
                if pages >= self._restart_pages:
                    self.restart_wanted = True
