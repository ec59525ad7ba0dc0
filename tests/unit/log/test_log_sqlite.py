"""SQLite backend specifics: file checks, durability settings, several processes on one file.

(Everything every backend must do is in tests/contract/.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import (
    EventTooLarge,
    LogClosed,
    LogCorrupted,
    LogFull,
    LogUnavailable,
    NotAHeadwaterLog,
    Reader,
    Start,
    StreamConfig,
    StreamNotFound,
)
from headwater.log._sqlite_store import PAGE_SIZE
from headwater.log._sqlite_writer import BACKSTOP_BYTES, LoopWriter, Writer
from headwater.log.sqlite import APPLICATION_ID, SCHEMA_VERSION, SqliteLog
from tests.helpers import WAIT


def event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(i), "source": "/s", "type": "t"}, b"x" * 64)


async def test_a_new_file_gets_the_headwater_header(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream("s")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta").fetchone()[0] == "1"  # clean shutdown
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(b"this is not a database, just some text that happens to be here" * 100)
    with pytest.raises(NotAHeadwaterLog, match="not a Headwater event log"):
        SqliteLog(path)
    assert path.read_bytes().startswith(b"this is not a database")  # untouched


def test_another_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE mine (x)")
    conn.commit()
    conn.close()
    with pytest.raises(NotAHeadwaterLog, match="application_id"):
        SqliteLog(path)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    asyncio.run(SqliteLog(path).close())
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(NotAHeadwaterLog, match="upgrade Headwater"):
        SqliteLog(path)


def test_a_missing_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    asyncio.run(SqliteLog(path).close())
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE consumers")
    conn.close()
    with pytest.raises(NotAHeadwaterLog, match="consumers"):
        SqliteLog(path)


def scribble(path: Path, at: int, size: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(b"\xa5" * size)


async def test_a_damaged_file_after_an_unclean_shutdown_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, durability="normal") as log:
        await log.create_stream("s")
        for i in range(20):
            await log.append("s", [event(i * 100 + k) for k in range(100)])
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("UPDATE meta SET value = '0'")  # as if the process had been killed
    conn.commit()
    conn.close()
    assert pages > 10
    scribble(path, page_size * (pages // 2), page_size)  # a page amid the events
    with pytest.raises(LogCorrupted, match="damaged"):
        SqliteLog(path)


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


async def version_1_file(path: Path, batches: list[list[CloudEvent]]) -> None:
    """A file as schema version 1 left it: stream "s", one append call per batch."""
    async with SqliteLog(path, durability="normal") as log:
        await log.create_stream("s")
        for batch in batches:
            await log.append("s", batch)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 1")


async def test_a_version_1_file_open_elsewhere_is_not_upgraded(tmp_path: Path) -> None:
    # An older Headwater writing the file would not know batches (its retention
    # would delete a whole batch for a part of it): no upgrade while it is open.
    path = tmp_path / "log.db"
    await version_1_file(path, [[event(1)], [event(2)]])
    with contextlib.closing(sqlite3.connect(path)) as older:
        assert older.execute("SELECT count(*) FROM streams").fetchone() == (1,)  # it has read
        with pytest.raises(LogUnavailable, match="schema 1 and is open in another process"):
            SqliteLog(path)
        assert user_version(path) == 1
    async with SqliteLog(path) as log:  # alone now: upgraded
        assert user_version(path) == SCHEMA_VERSION == 2
        async with SqliteLog(path) as other:  # already 2: nothing to upgrade, opens
            assert await other.append("s", [event(3)]) == [3]
        got = await log.reader("s", "c").next_batch(10)
        assert [(e.offset, e.event) for e in got] == [(1, event(1)), (2, event(2)), (3, event(3))]


async def test_a_damaged_version_1_file_is_not_upgraded(tmp_path: Path) -> None:
    # The file is checked (after an unclean shutdown) before it is marked version 2.
    path = tmp_path / "log.db"
    await version_1_file(path, [[event(i * 100 + k) for k in range(100)] for i in range(20)])
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute("UPDATE meta SET value = '0' WHERE key = 'clean_shutdown'")  # killed
    conn.commit()
    conn.close()
    assert pages > 10
    scribble(path, page_size * (pages // 2), page_size)
    with pytest.raises(LogCorrupted, match="damaged"):
        SqliteLog(path)
    assert user_version(path) == 1


async def test_open_from_async_code(tmp_path: Path) -> None:
    async with await SqliteLog.open(tmp_path / "log.db", durability="normal") as log:
        assert log.durability == "normal"
        await log.create_stream("s")
        assert await log.append("s", [event(1)]) == [1]


async def test_committed_events_survive_an_unclean_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = SqliteLog(path, durability="fsync")
    await log.create_stream("s")
    assert await log.append("s", [event(1), event(2)]) == [1, 2]
    # No close(): the file is left as a killed process leaves it (the
    # crash tests in tests/chaos/log do this with SIGKILL).
    reopened = SqliteLog(path)
    try:
        info = await reopened.info("s")
        assert info.last_offset == 2
        batch = await reopened.reader("s", "c").next_batch(10)
        assert [e for _, e in batch] == [event(1), event(2)]
    finally:
        await reopened.close()
        await log.close()


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_durability_settings(tmp_path: Path, durability: str) -> None:
    async with SqliteLog(tmp_path / "log.db", durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        assert await log.append("s", [event(1)]) == [1]


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        pytest.param({"durability": "sometimes"}, "durability", id="durability"),
        pytest.param({"commit_window": -1.0}, "commit_window", id="negative-window"),
        pytest.param({"poll_interval": 0.0}, "poll_interval", id="zero-poll"),
    ],
)
def test_bad_options_are_refused(
    tmp_path: Path, options: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        SqliteLog(tmp_path / "log.db", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "log.db").exists()  # refused before touching the disk


async def test_appends_by_another_writer_reach_a_waiting_reader(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, poll_interval=0.05) as mine, SqliteLog(path) as theirs:
        await mine.create_stream("s")
        reader = mine.reader("s", "c")
        await reader.next_batch(1, timeout=0)

        async def append_elsewhere() -> None:
            await asyncio.sleep(0.2)
            assert await theirs.append("s", [event(1)]) == [1]
            assert await mine.append("s", [event(2)]) == [2]  # offsets are shared

        # An hour's timeout: the read returns only because the appends woke it.
        async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
            tg.create_task(append_elsewhere())
            got = await reader.next_batch(10, timeout=3600)
        assert got[0].offset == 1


def stream_ids(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT name, id FROM streams ORDER BY id").fetchall())


async def test_a_reader_of_a_stream_deleted_elsewhere_never_reads_another_stream(
    tmp_path: Path,
) -> None:
    # Two logs on one file, as two processes: one still knows the deleted stream's id.
    path = tmp_path / "log.db"
    async with SqliteLog(path, durability="normal") as mine, SqliteLog(path) as theirs:
        await mine.create_stream("s")
        await mine.append("s", [event(1)])
        reader = mine.reader("s", "c")
        assert [e.offset for e in await reader.next_batch(10)] == [1]
        await theirs.delete_stream("s")
        await theirs.create_stream("t")
        assert await theirs.append("t", [event(2), event(3)]) == [1, 2]
        with pytest.raises(StreamNotFound):
            await reader.next_batch(10)
        assert stream_ids(path) == {"t": 2}
        got = await mine.reader("t", "c").next_batch(10)
        assert [(e.offset, e.event) for e in got] == [(1, event(2)), (2, event(3))]


async def test_stream_ids_are_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        for name in ("a", "b", "c"):
            await log.create_stream(name)
        assert stream_ids(path) == {"a": 1, "b": 2, "c": 3}
        await log.delete_stream("c")  # the highest id
        await log.create_stream("d")
        assert stream_ids(path) == {"a": 1, "b": 2, "d": 4}
        for name in ("a", "b", "d"):
            await log.delete_stream(name)
        await log.create_stream("e")  # no stream left to take the highest id from
        assert stream_ids(path) == {"e": 5}
        await log.create_stream("c")  # a name used before: a new id too
        assert stream_ids(path) == {"e": 5, "c": 6}
    async with SqliteLog(path) as log:  # kept in the file
        await log.delete_stream("c")
        await log.delete_stream("e")
        await log.create_stream("f")
        assert stream_ids(path) == {"f": 7}
        assert await log.append("f", [event(1)]) == [1]


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_concurrent_appends_share_transactions(tmp_path: Path, durability: str) -> None:
    async with SqliteLog(tmp_path / "log.db", durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        commits = 0
        conn = log._writer._conn

        def count(sql: str) -> None:
            nonlocal commits
            commits += sql == "COMMIT"

        conn.set_trace_callback(count)
        offsets = await asyncio.gather(*(log.append("s", [event(i)]) for i in range(500)))
        conn.set_trace_callback(None)
        assert sorted(o for [o] in offsets) == list(range(1, 501))
        assert commits < 250  # group commit: far fewer transactions than appends


async def test_normal_durability_writes_its_groups_on_the_event_loop(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", durability="normal") as log:
        await log.create_stream("s")
        threads: set[str] = set()
        conn = log._writer._conn

        def note(sql: str) -> None:
            if sql == "COMMIT":
                threads.add(threading.current_thread().name)

        conn.set_trace_callback(note)
        await asyncio.gather(*(log.append("s", [event(i)]) for i in range(50)))
        conn.set_trace_callback(None)
        assert threads == {threading.current_thread().name}
    async with SqliteLog(tmp_path / "log.db", durability="fsync") as log:
        assert type(log._writer) is Writer


async def test_appends_wait_for_a_writer_job_then_commit(tmp_path: Path) -> None:
    # The checkpoint catch-up and the age sweeps run on the writer's thread;
    # no group is written meanwhile, and what queued up is written after.
    async with SqliteLog(tmp_path / "log.db", durability="normal") as log:
        await log.create_stream("s")
        writer = log._writer
        assert isinstance(writer, LoopWriter)
        writer._run_job(lambda: time.sleep(0.3))
        started = time.monotonic()
        offsets = await asyncio.gather(*(log.append("s", [event(i)]) for i in range(20)))
        assert time.monotonic() - started >= 0.25
        assert sorted(o for [o] in offsets) == list(range(1, 21))


async def test_appends_from_another_event_loop_are_written(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", durability="normal") as log:
        await log.create_stream("s")
        await log.append("s", [event(0)])  # the writer is on this loop now

        def other_thread() -> list[list[int]]:
            async def appends() -> list[list[int]]:
                return list(await asyncio.gather(*(log.append("s", [event(i)]) for i in range(5))))

            return asyncio.run(appends())

        offsets = await asyncio.to_thread(other_thread)
        assert sorted(o for [o] in offsets) == [2, 3, 4, 5, 6]
        assert (await log.info("s")).events == 6


def test_appends_made_while_the_loop_writer_takes_a_group_are_taken_exactly_once() -> None:
    # Callers on other event loops append from their threads while the writer
    # takes a group, also on its jobs' thread: none may be lost, or taken twice.
    writer = LoopWriter.__new__(LoopWriter)  # only the deques that _take uses
    appends: collections.deque[Any] = collections.deque()
    writer._calls, writer._appends = collections.deque(), appends
    count = 300_000
    taken: list[object] = []

    def append() -> None:
        for i in range(count):
            appends.append(i)  # as LoopWriter.append does

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        thread = threading.Thread(target=append)
        thread.start()
        while thread.is_alive() or appends:
            taken += writer._take()[1]
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert len(taken) == count
    assert taken == list(range(count))


async def test_positions_acknowledged_just_before_close_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, durability="normal") as log:
        await log.create_stream("s")
        await log.append("s", [event(i) for i in range(5)])
        reader = log.reader("s", "c")
        for entry in await reader.next_batch(3):
            await reader.ack(entry.offset)
    async with SqliteLog(path, durability="normal") as log:
        [entry, *_] = await log.reader("s", "c").next_batch(5)
        assert entry.offset == 4


def test_a_log_outlives_the_event_loop_it_was_first_used_on(tmp_path: Path) -> None:
    # A writer job in flight, and a commit_window drain pending, when the first
    # loop ends: the next loop takes over and nothing waits forever.
    path = tmp_path / "log.db"
    log = SqliteLog(path, durability="normal", commit_window=0.05)

    async def first() -> None:
        await log.create_stream("s")
        await log.append("s", [event(0)])
        log._writer._run_job(lambda: time.sleep(0.3))  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(log.append("s", [event(1)]), 0.01)

    async def second() -> list[int]:
        try:
            async with asyncio.timeout(5):
                offsets = await log.append("s", [event(2)])
                await log.create_stream("t")
                return offsets
        finally:
            await log.close()

    asyncio.run(first())
    time.sleep(0.4)
    [offset] = asyncio.run(second())
    assert offset >= 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM events_1").fetchone()[0] in (2, 3)


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_a_failing_call_is_answered_and_the_group_goes_on(
    tmp_path: Path, durability: str
) -> None:
    async with SqliteLog(tmp_path / "log.db", durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        appended = log.append("s", [event(1)])
        failing = log._write(lambda conn: 1 // 0)
        results = await asyncio.gather(appended, failing, return_exceptions=True)
        assert results[0] == [1]
        assert isinstance(results[1], ZeroDivisionError)
        assert await log.append("s", [event(2)]) == [2]


class Hold:
    """A call that keeps the writer thread (``fsync``) busy until released."""

    def __init__(self, log: SqliteLog) -> None:
        self._holding, self._released = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            self._holding.set()
            self._released.wait(5)

        self.call = asyncio.ensure_future(log._write(hold))

    async def started(self) -> None:
        assert await asyncio.to_thread(self._holding.wait, 5)

    async def release(self) -> None:
        self._released.set()
        await self.call


async def fail_a_group_with_acks_and_a_flush(
    log: SqliteLog, reader: Reader, acks: list[int]
) -> tuple[object, object]:
    """Ack ``acks`` and flush in the same group commit as an append whose writing
    fails with a bug (not an SQLite error); the append's and the flush's outcomes."""
    if log.durability == "normal":
        for offset in acks:
            await reader.ack(offset)
        # The position is saved after this pass's acks; the group follows the pass.
        return await asyncio.gather(
            log.append("s", [event(99)]), reader.flush(), return_exceptions=True
        )
    # The writer thread: the append and the flush's barrier are queued while the
    # thread is busy, the acks made while it runs the group they are in.
    first = Hold(log)
    await first.started()
    second = Hold(log)
    appended = asyncio.ensure_future(log.append("s", [event(99)]))
    flushed = asyncio.ensure_future(reader.flush())
    await asyncio.sleep(0)  # both queued
    await first.release()
    await second.started()  # its group: the append and the flush's barrier
    for offset in acks:
        await reader.ack(offset)
    await asyncio.sleep(0)  # the position is saved: pending for that group's transaction
    await second.release()
    return await asyncio.gather(appended, flushed, return_exceptions=True)


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_positions_of_a_failed_group_are_kept_and_its_flush_fails(
    tmp_path: Path, durability: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        await log.append("s", [event(1), event(2), event(3)])
        reader = log.reader("s", "c")
        assert [e.offset for e in await reader.next_batch(10)] == [1, 2, 3]
        failures = [RuntimeError("injected")]
        real = Writer._append_stream

        def append_stream(self: Writer, *args: Any) -> int:
            if failures:
                raise failures.pop()
            return real(self, *args)

        monkeypatch.setattr(Writer, "_append_stream", append_stream)
        appended, flushed = await fail_a_group_with_acks_and_a_flush(log, reader, [1, 2, 3])
        assert not failures
        assert isinstance(appended, LogUnavailable)
        assert isinstance(flushed, LogUnavailable)  # the positions are not written
        info = await log.info("s")
        assert (info.last_offset, info.consumer("c").position) == (3, 0)
        # The next group writes them.
        assert await log.append("s", [event(4)]) == [4]
        await reader.flush()
        assert (await log.info("s")).consumer("c").position == 3
        await reader.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT name, position FROM consumers").fetchall() == [("c", 3)]


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_a_checkpoint_catch_up_that_cannot_finish_does_not_stop_appends(
    tmp_path: Path, durability: str
) -> None:
    async with SqliteLog(tmp_path / "log.db", durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        writer = log._writer
        attempts = 0

        def failing_catch_up() -> None:  # as when the checkpoint is busy or fails
            nonlocal attempts
            attempts += 1

        writer._finish_checkpoint = failing_catch_up  # type: ignore[method-assign]
        writer._checkpointer.restart_wanted = True
        try:
            async with asyncio.timeout(WAIT):
                assert await log.append("s", [event(1)]) == [1]
                assert await log.append("s", [event(2)]) == [2]
        finally:
            writer._checkpointer.restart_wanted = False
        assert 1 <= attempts <= 2  # tried once per group, not in a loop


HOLD_THE_LOCK = """\
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(1.0)
conn.execute("COMMIT")
"""


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_another_process_holding_the_write_lock_does_not_stop_the_loop(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path, durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_THE_LOCK, str(path), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"locked"
            ticks, ticking = 0, True

            async def ticker() -> None:
                nonlocal ticks
                while ticking:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            started = time.monotonic()
            assert await log.append("s", [event(1)]) == [1]  # once the lock is free
            waited = time.monotonic() - started
            ticking = False
            await task
        finally:
            await holder.wait()
        assert waited > 0.5
        # The loop ran other work all along the wait: a loop blocked by the lock
        # for half a second would have ticked once or twice, not dozens of times.
        assert ticks >= 10


@pytest.mark.parametrize("size", [1, 2, 3, 127, 128, 129, 255, 256, 300])
async def test_an_append_of_any_size_is_written_in_order(tmp_path: Path, size: int) -> None:
    # Rows go in through multi-row INSERTs of 128, 64, ... 1 rows.
    async with SqliteLog(tmp_path / "log.db", durability="normal") as log:
        await log.create_stream("s")
        await log.append("s", [event(0)])
        events = [event(i) for i in range(1, size + 1)]
        assert await log.append("s", events) == list(range(2, size + 2))
        got = await log.reader("s", "c").next_batch(1000)
        assert [entry.offset for entry in got] == list(range(1, size + 2))
        assert [entry.event for entry in got] == [event(0), *events]


async def test_a_group_mixing_streams_and_too_large_events(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db", durability="normal") as log:
        await log.create_stream("a")
        await log.create_stream("b", StreamConfig(max_event_size=200))
        big = CloudEvent(
            {"specversion": "1.0", "id": "big", "source": "/s", "type": "t"}, b"x" * 300
        )
        results = await asyncio.gather(
            log.append("a", [event(1)]),
            log.append("b", [event(2)]),
            log.append("b", [event(3), big]),
            log.append("missing", [event(4)]),
            log.append("a", [big, event(5)]),
            log.append("b", [event(6)]),
            return_exceptions=True,
        )
        assert results[0] == [1]
        assert results[1] == [1]
        assert isinstance(results[2], EventTooLarge) and results[2].index == 1
        assert isinstance(results[3], StreamNotFound)
        assert results[4] == [2, 3]
        assert results[5] == [2]


async def test_the_write_ahead_log_is_checkpointed_while_appending(tmp_path: Path) -> None:
    # The checkpointer thread copies the WAL into the database file, and the
    # WAL restarts instead of growing with everything ever appended.
    path = tmp_path / "log.db"
    payload = CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, b"x" * 4000
    )
    async with SqliteLog(path, durability="normal") as log:
        await log.create_stream("s")
        for _ in range(200):  # about 32 MB, at most 40 MB/s
            await log.append("s", [payload] * 40)
            await asyncio.sleep(0.004)
        wal = path.with_name("log.db-wal").stat().st_size
        assert wal < 20 * 1024 * 1024
        assert (await log.info("s")).events == 8000


async def test_cancelled_append_leaves_the_log_consistent(tmp_path: Path) -> None:
    async with SqliteLog(tmp_path / "log.db") as log:
        await log.create_stream("s")
        task = asyncio.create_task(log.append("s", [event(1)]))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        offsets = await log.append("s", [event(2)])
        info = await log.info("s")
        assert offsets[0] == info.last_offset
        assert info.events == info.last_offset


async def test_retention_limits_persist(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream("s", StreamConfig(max_events=3, max_bytes=10_000, max_age=60))
        await log.append("s", [event(i) for i in range(5)])
    async with SqliteLog(path) as log:
        info = await log.info("s")
        assert info.config == StreamConfig(max_events=3, max_bytes=10_000, max_age=60)
        assert (info.first_offset, info.dropped) == (3, 2)
        await log.append("s", [event(9)])
        assert (await log.info("s")).dropped == 3


async def test_using_a_closed_log_raises(tmp_path: Path) -> None:
    log = SqliteLog(tmp_path / "log.db")
    await log.close()
    await log.close()  # twice is fine
    with pytest.raises(LogClosed):
        await log.create_stream("s")
    with pytest.raises(LogClosed):
        log.reader("s", "c")


async def crash_image(tmp_path: Path, batches: list[list[CloudEvent]]) -> Path:
    """Append ``batches`` (fsync) and copy the files as a crash would leave them:
    database plus write-ahead log, no clean close, no shared-memory index."""
    live = tmp_path / "live"
    live.mkdir()
    log = SqliteLog(live / "log.db", durability="fsync")
    try:
        await log.create_stream("s")
        for batch in batches:
            await log.append("s", batch)
        image = tmp_path / "image"
        image.mkdir()
        for name in ("log.db", "log.db-wal"):
            (image / name).write_bytes((live / name).read_bytes())
    finally:
        await log.close()
    return image / "log.db"


async def read_back(path: Path) -> list[CloudEvent]:
    async with SqliteLog(path) as log:
        return [e for _, e in await log.reader("s", "check").next_batch(1000)]


async def test_garbage_after_the_last_commit_is_ignored(tmp_path: Path) -> None:
    batches = [[event(i * 10 + k) for k in range(3)] for i in range(4)]
    path = await crash_image(tmp_path, batches)
    wal = path.with_name("log.db-wal")
    wal.write_bytes(wal.read_bytes() + b"\x37\x7f\x06\x82" + bytes(range(256)) * 9)  # torn frame
    assert await read_back(path) == [e for batch in batches for e in batch]


async def test_a_torn_last_commit_vanishes_whole(tmp_path: Path) -> None:
    first = [event(i) for i in range(5)]
    last = [event(100 + i) for i in range(200)]  # spans several pages
    path = await crash_image(tmp_path, [first, last])
    wal = path.with_name("log.db-wal")
    wal.write_bytes(wal.read_bytes()[:-100])  # the commit frame was not fully written
    assert await read_back(path) == first  # the last append is gone entirely, not in part


DAMAGES = {
    "record": (1, "x'01ffff'"),  # a row of one record
    "batch-lengths": (2, "substr(record, 1, length(record) - 1)"),
    "record-in-batch": (2, "x'400200000003000000020000000001ffff7b7d'"),
}


@pytest.mark.parametrize("damage", DAMAGES)
async def test_a_damaged_record_is_reported_not_returned(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream("s")
        await log.append("s", [event(1)])
        await log.append("s", [event(2), event(3)])  # one row: a batch
    offset, value = DAMAGES[damage]
    conn = sqlite3.connect(path)
    (table,) = conn.execute("SELECT name FROM sqlite_schema WHERE name LIKE 'events_%'").fetchone()
    assert conn.execute(f"SELECT offset FROM {table}").fetchall() == [(1,), (2,)]
    conn.execute(f"UPDATE {table} SET record = {value} WHERE offset = ?", (offset,))
    conn.commit()
    conn.close()
    async with SqliteLog(path) as log:
        reader = log.reader("s", "c", Start.at_offset(offset))
        with pytest.raises(LogCorrupted, match="damaged"):
            await reader.next_batch(10)


@pytest.mark.parametrize("durability", ["fsync", "normal"])
async def test_a_full_disk_is_log_full_and_nothing_is_stored(
    tmp_path: Path, durability: str
) -> None:
    """SQLITE_FULL is LogFull (sources answer MQTT 0x97 Quota exceeded), not just unavailable."""
    async with SqliteLog(tmp_path / "log.db", durability=durability) as log:  # type: ignore[arg-type]
        await log.create_stream("s")
        await log.append("s", [event(1)])
        conn = log._writer._conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        # The file may not grow: what the next append needs cannot be written.
        conn.execute(f"PRAGMA max_page_count = {pages}")
        big = CloudEvent(
            {"specversion": "1.0", "id": "2", "source": "/s", "type": "t"}, b"x" * 200_000
        )
        with pytest.raises(LogFull, match="full"):
            await log.append("s", [big])
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert await log.append("s", [event(3)]) == [2]


@pytest.mark.parametrize("durability", ["normal", "fsync"])
async def test_a_new_file_has_large_pages_and_an_old_one_keeps_its_own(
    tmp_path: Path, durability: Any
) -> None:
    old = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(old)) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE t (x)")  # a file made with 4 KiB pages
        conn.execute("DROP TABLE t")
    for path, size in ((tmp_path / "new.db", PAGE_SIZE), (old, 4096)):
        async with SqliteLog(path, durability=durability) as log:
            await log.create_stream("s")
            assert await log.append("s", [event(1), event(2)]) == [1, 2]
            assert [e.event for e in await log.fetch_after("s", 0, 10)] == [event(1), event(2)]
            writer = log._writer._conn
            (autocheckpoint,) = writer.execute("PRAGMA wal_autocheckpoint").fetchone()
            assert autocheckpoint * size == BACKSTOP_BYTES  # the same WAL bytes either way
        with contextlib.closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA page_size").fetchone()[0] == size
