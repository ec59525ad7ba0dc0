"""SQLite log batches: a group commit's events of a stream are stored as one row.

Checked through the public API (appends, readers, retention, start positions,
redeliveries) and by looking at the file with ``sqlite3``: which rows exist,
what they hold, and that ``StreamInfo.bytes`` is always the stored size,
``sum(length(record))`` of the stream's table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent
from headwater.log import (
    EARLIEST,
    Entry,
    LogCorrupted,
    SqliteLog,
    Start,
    StreamConfig,
    StreamInfo,
)
from headwater.log import _sqlite_writer as writer_module
from headwater.log._codec import (
    HEADER_SIZE,
    encode,
    encode_batch,
    is_batch,
    split_batch,
    stored_size,
)
from headwater.log._sqlite_store import SCHEMA_VERSION
from headwater.log.sqlite import Durability
from tests.helpers import wait_until

STREAM = "s"
DURABILITIES = pytest.mark.parametrize("durability", ["fsync", "normal"])


def event(n: int, size: int = 64) -> CloudEvent:
    """Event ``n`` (ids of one length: records of one size for one ``size``)."""
    return CloudEvent(
        {"specversion": "1.0", "id": f"{n:05d}", "source": "/s", "type": "t"}, b"x" * size
    )


SIZE = len(encode(event(1)))  # the record of every event(n) with the default size


def stored_batch(count: int) -> int:
    """The stored size of a batch of ``count`` default-size events."""
    return stored_size([SIZE] * count)


class Clock:
    """An injected clock: the time the writer stamps on each group, and its reads."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


# -- looking at the file -------------------------------------------------------------------


def stored_rows(path: Path, stream: str = STREAM) -> list[tuple[int, float, bytes]]:
    """(offset, time, record) of each row of the stream's table, by offset."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (sid,) = conn.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()
        rows: list[tuple[int, float, bytes]] = conn.execute(
            f"SELECT offset, time, record FROM events_{sid} ORDER BY offset"
        ).fetchall()
    return rows


def sql_bytes(path: Path, stream: str = STREAM) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (sid,) = conn.execute("SELECT id FROM streams WHERE name = ?", (stream,)).fetchone()
        (size,) = conn.execute(
            f"SELECT coalesce(sum(length(record)), 0) FROM events_{sid}"
        ).fetchone()
    assert type(size) is int
    return size


def held(value: bytes) -> list[bytes]:
    """The records a row holds: a batch, or one record stored as itself."""
    if is_batch(value):
        records = split_batch(value)
        assert len(records) >= 2, "a single record is stored unframed"
        return records
    return [value]


def layout(path: Path, stream: str = STREAM) -> list[tuple[int, int]]:
    """(first offset, events) of each row."""
    return [(offset, len(held(value))) for offset, _, value in stored_rows(path, stream)]


def stored(records: Sequence[bytes]) -> bytes:
    """The value of a row holding ``records``."""
    return records[0] if len(records) == 1 else encode_batch(records)


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


# -- reading and appending -----------------------------------------------------------------

_consumers = itertools.count()


async def walk(log: SqliteLog, start: Start, limit: int) -> list[list[Entry]]:
    """Every batch a new consumer starting at ``start`` gets from ``next_batch(limit)``."""
    batches: list[list[Entry]] = []
    async with log.reader(STREAM, f"walk-{next(_consumers)}", start) as reader:
        while batch := await reader.next_batch(limit):
            batches.append(batch)
    return batches


def numbered(events: Sequence[CloudEvent], first: int = 1) -> list[tuple[int, CloudEvent]]:
    """``events[first - 1:]`` with their offsets (offset n is ``events[n - 1]``)."""
    return [(n, events[n - 1]) for n in range(first, len(events) + 1)]


def chunks(items: list[tuple[int, CloudEvent]], size: int) -> list[list[tuple[int, CloudEvent]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def check_reads(
    log: SqliteLog, events: Sequence[CloudEvent], starts: Sequence[int], limit: int = 1000
) -> None:
    """A new consumer at each start reads exactly the retained events from there, in
    ``next_batch(limit)`` batches of exactly ``limit`` but the last."""
    first = (await log.info(STREAM)).first_offset
    for start in starts:
        expected = numbered(events, max(start, first))
        assert await walk(log, Start.at_offset(start), limit) == chunks(expected, limit), start


async def check_stream(
    log: SqliteLog, path: Path, events: Sequence[CloudEvent], first: int
) -> StreamInfo:
    """The counters, the stored rows and the reads of a stream whose offset n was
    ``events[n - 1]`` and whose retained events start at ``first``."""
    info = await log.info(STREAM)
    last = len(events)
    assert (info.first_offset, info.last_offset) == (first, last)
    assert (info.events, info.dropped) == (last - first + 1, first - 1)
    assert info.bytes == sql_bytes(path)
    rows = stored_rows(path)
    # The rows hold exactly the offsets first..last, each its own event's record.
    offset = first
    for start, _, value in rows:
        assert start == offset
        records = held(value)
        assert records == [encode(events[n - 1]) for n in range(start, start + len(records))]
        offset += len(records)
    assert offset == last + 1
    assert await walk(log, Start.at_offset(1), 1000) == chunks(numbered(events, first), 1000)
    return info


async def together(
    log: SqliteLog, calls: Sequence[list[CloudEvent]], stream: str | Sequence[str] = STREAM
) -> list[list[int]]:
    """``append`` calls awaited together, written as one group commit (to ``stream``,
    or to ``stream[i]`` for ``calls[i]``).

    On the event loop (``normal``) they are by construction: the writer drains
    after the loop's pass. The writer thread (``fsync``) may wake before the loop
    has queued them all, so a call holds it busy until every append is queued.
    """
    streams = [stream] * len(calls) if isinstance(stream, str) else stream
    pairs = list(zip(streams, calls, strict=True))
    if log.durability == "normal":
        return list(await asyncio.gather(*(log.append(s, c) for s, c in pairs)))
    holding, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        holding.set()
        release.wait(5)

    held_call = asyncio.ensure_future(log._write(hold))
    try:
        assert await asyncio.to_thread(holding.wait, 5)
        appends = [asyncio.ensure_future(log.append(s, c)) for s, c in pairs]
        await asyncio.sleep(0)  # every append has run up to its wait: queued for the writer
    finally:
        release.set()
    await held_call
    return list(await asyncio.gather(*appends))


async def sweeps(clock: Clock, count: int = 3) -> None:
    """Wait until the writer read the clock ``count`` more times: the writer reads it
    at the start of each age sweep (one at a time), so a sweep that began after the
    clock was set has then finished."""
    reads = clock.reads + count
    await wait_until(lambda: clock.reads >= reads, what="age sweeps")


async def until_dropped(log: SqliteLog, dropped: int) -> StreamInfo:
    async def enough() -> bool:
        return (await log.info(STREAM)).dropped >= dropped

    await wait_until(enough, what=f"{dropped} dropped")
    info = await log.info(STREAM)
    assert info.dropped == dropped
    return info


# -- one row per group ---------------------------------------------------------------------


@DURABILITIES
async def test_concurrent_appends_are_one_batch_row(tmp_path: Path, durability: Durability) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 19)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        assert await log.append(STREAM, [events[0]]) == [1]
        assert await log.append(STREAM, [events[1]]) == [2]
        assert await together(log, [[e] for e in events[2:12]]) == [[n] for n in range(3, 13)]
        assert await together(log, [events[12:14], [events[14]], events[15:18]]) == [
            [13, 14],
            [15],
            [16, 17, 18],
        ]
        rows = stored_rows(path)
        assert (
            [(offset, value) for offset, _, value in rows]
            == [
                (1, encode(events[0])),  # one event: the record itself, as before batches
                (2, encode(events[1])),
                (3, encode_batch([encode(e) for e in events[2:12]])),
                (13, encode_batch([encode(e) for e in events[12:18]])),
            ]
        )
        info = await check_stream(log, path, events, first=1)
        assert info.bytes == 2 * SIZE + (HEADER_SIZE + 10 * 4 + 10 * SIZE) + stored_batch(6)
        # From any offset, inside a batch too, and past the end.
        await check_reads(log, events, range(1, 20))
        # Limits that stop inside a batch, and batches that cross rows.
        await check_reads(log, events, [3, 5, 12], limit=1)
        await check_reads(log, events, [1, 2, 4, 11, 12, 13, 17], limit=3)
        await check_reads(log, events, [6], limit=7)


@DURABILITIES
async def test_a_reader_walks_a_batch_one_entry_at_a_time(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 9)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, events[:5])
        async with log.reader(STREAM, "c", Start.at_offset(2)) as reader:
            assert await reader.next_batch(1) == [(2, events[1])]
            assert await reader.next_batch(1) == [(3, events[2])]
            await reader.ack(2)
            await log.append(STREAM, events[5:])  # a second batch, read across the boundary
            assert await reader.next_batch(3) == [(4, events[3]), (5, events[4]), (6, events[5])]
            assert await reader.next_batch(1) == [(7, events[6])]
            assert await reader.next_batch(5) == [(8, events[7])]
            assert await reader.next_batch(5) == []
        assert layout(path) == [(1, 5), (6, 3)]


@DURABILITIES
async def test_appends_within_the_commit_window_share_a_row(
    tmp_path: Path, durability: Durability
) -> None:
    # Plain asyncio.gather, no help: the commit window gathers the group.
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 21)]
    async with SqliteLog(path, durability=durability, commit_window=0.05) as log:
        await log.create_stream(STREAM)
        offsets = await asyncio.gather(*(log.append(STREAM, [e]) for e in events))
        assert offsets == [[n] for n in range(1, 21)]
        assert layout(path) == [(1, 20)]
        await check_stream(log, path, events, first=1)


@DURABILITIES
async def test_a_group_is_split_into_rows_by_batch_bytes(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n, 10_000) for n in range(1, 21)]
    size = len(encode(events[0]))
    assert 6 * size <= writer_module.BATCH_BYTES < 7 * size  # six to a row
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        assert await log.append(STREAM, events) == list(range(1, 21))
        assert layout(path) == [(1, 6), (7, 6), (13, 6), (19, 2)]
        info = await check_stream(log, path, events, first=1)
        assert info.bytes == 3 * stored_size([size] * 6) + stored_size([size] * 2)
        await check_reads(log, events, [5, 6, 7, 18, 19, 20], limit=4)


@DURABILITIES
async def test_a_row_holds_exactly_batch_bytes_of_records(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    fit = writer_module.BATCH_BYTES // 8
    overhead = len(encode(event(1, 0)))
    exact = [event(n, fit - overhead) for n in range(1, 9)]
    assert [len(encode(e)) for e in exact] == [fit] * 8  # 8 records, BATCH_BYTES in all
    over = [*exact[:7], event(8, fit - overhead + 1)]  # one byte more
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, exact)
        await log.append(STREAM, over)
        assert layout(path) == [(1, 8), (9, 7), (16, 1)]
        await check_stream(log, path, [*exact, *over], first=1)


@DURABILITIES
async def test_a_group_is_split_into_rows_by_batch_events(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n, 0) for n in range(1, 2501)]
    assert writer_module.BATCH_EVENTS == 1024
    assert len(encode(events[0])) * 1024 <= writer_module.BATCH_BYTES  # the count decides
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        assert await log.append(STREAM, events) == list(range(1, 2501))
        assert layout(path) == [(1, 1024), (1025, 1024), (2049, 452)]
        await check_stream(log, path, events, first=1)
        await check_reads(log, events, [1020, 2048, 2500], limit=3)


@DURABILITIES
async def test_an_event_larger_than_batch_bytes_is_a_row_of_its_own(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    big = [event(n, writer_module.BATCH_BYTES + 100) for n in range(1, 8)]
    small = [event(n) for n in range(1, 8)]
    events = [
        small[0], small[1], big[0], small[2],  # 1..4
        big[1],  # 5: alone in its group
        big[2], big[3], small[3], small[4], small[5], big[4],  # 6..11
        small[6],  # 12
    ]  # fmt: skip
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        assert await log.append(STREAM, events[:4]) == [1, 2, 3, 4]
        assert await log.append(STREAM, [events[4]]) == [5]
        assert await together(log, [[e] for e in events[5:11]]) == [[n] for n in range(6, 12)]
        assert await log.append(STREAM, events[11:]) == [12]
        assert layout(path) == [
            (1, 2), (3, 1), (4, 1), (5, 1), (6, 1), (7, 1), (8, 3), (11, 1), (12, 1),
        ]  # fmt: skip
        values = {offset: value for offset, _, value in stored_rows(path)}
        for offset in (3, 5, 6, 7, 11):
            assert values[offset] == encode(events[offset - 1])  # unframed
        await check_stream(log, path, events, first=1)
        await check_reads(log, events, range(1, 13), limit=2)


@DURABILITIES
async def test_the_batch_limits_are_read_at_each_write(
    tmp_path: Path, durability: Durability, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 21)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, events[:5])
        monkeypatch.setattr(writer_module, "BATCH_EVENTS", 3)
        await log.append(STREAM, events[5:12])
        monkeypatch.setattr(writer_module, "BATCH_EVENTS", 1024)
        monkeypatch.setattr(writer_module, "BATCH_BYTES", 2 * SIZE)
        await together(log, [[e] for e in events[12:17]])
        monkeypatch.setattr(writer_module, "BATCH_BYTES", 2 * SIZE - 1)
        await log.append(STREAM, events[17:])
        assert layout(path) == [
            (1, 5), (6, 3), (9, 3), (12, 1), (13, 2), (15, 2), (17, 1), (18, 1), (19, 1), (20, 1),
        ]  # fmt: skip
        await check_stream(log, path, events, first=1)


# -- retention -----------------------------------------------------------------------------


@DURABILITIES
async def test_max_events_cuts_through_batches(tmp_path: Path, durability: Durability) -> None:
    path = tmp_path / "log.db"
    clock = Clock(1000.0)
    events = [event(n) for n in range(1, 18)]
    records = [encode(e) for e in events]
    async with SqliteLog(path, durability=durability, clock=clock) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=7))
        # One row 1..10 is written, and cut at 4 in the same transaction.
        assert await log.append(STREAM, events[:10]) == list(range(1, 11))
        assert stored_rows(path) == [(4, 1000.0, encode_batch(records[3:10]))]
        info = await check_stream(log, path, events[:10], first=4)
        assert info.bytes == stored_size([SIZE] * 7)
        await check_reads(log, events[:10], [1, 3, 4, 5, 10, 11], limit=2)

        clock.now = 1001.0
        assert await together(log, [[events[10]], [events[11]]]) == [[11], [12]]
        assert (
            stored_rows(path)
            == [
                (6, 1000.0, encode_batch(records[5:10])),  # rewritten at the cut, time kept
                (11, 1001.0, encode_batch(records[10:12])),
            ]
        )
        await check_stream(log, path, events[:12], first=6)

        clock.now = 1002.0
        assert await log.append(STREAM, [events[12]]) == [13]
        await check_stream(log, path, events[:13], first=7)

        clock.now = 1003.0
        assert await log.append(STREAM, events[13:16]) == [14, 15, 16]
        assert (
            stored_rows(path)
            == [
                (10, 1000.0, records[9]),  # one event left of the batch: stored unframed
                (11, 1001.0, encode_batch(records[10:12])),
                (13, 1002.0, records[12]),
                (14, 1003.0, encode_batch(records[13:16])),
            ]
        )
        info = await check_stream(log, path, events[:16], first=10)
        assert info.bytes == SIZE + stored_size([SIZE] * 2) + SIZE + stored_size([SIZE] * 3)
        await check_reads(log, events[:16], range(9, 18), limit=3)

        # A cut at a row's first offset deletes the rows below it whole.
        clock.now = 1004.0
        assert await log.append(STREAM, [events[16]]) == [17]
        assert layout(path) == [(11, 2), (13, 1), (14, 3), (17, 1)]
        await check_stream(log, path, events, first=11)

        # Lowering the limit cuts at once, and a cut inside the last batch too.
        await log.create_stream(STREAM, StreamConfig(max_events=3))
        assert [(o, t) for o, t, _ in stored_rows(path)] == [(15, 1003.0), (17, 1004.0)]
        await check_stream(log, path, events, first=15)


@DURABILITIES
@pytest.mark.parametrize(
    ("max_bytes", "kept"),
    [
        pytest.param(stored_batch(10), 10, id="all-fit"),
        pytest.param(stored_batch(6), 6, id="six-exactly"),
        pytest.param(stored_batch(6) - 1, 5, id="six-less-a-byte"),
        pytest.param(stored_batch(2), 2, id="two-exactly"),
        pytest.param(stored_batch(2) - 1, 1, id="one-unframed"),
        pytest.param(SIZE, 1, id="one-exactly"),
        pytest.param(SIZE - 1, 0, id="not-even-the-newest"),
    ],
)
async def test_max_bytes_keeps_as_many_newest_events_as_fit(
    tmp_path: Path, durability: Durability, max_bytes: int, kept: int
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 11)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM, StreamConfig(max_bytes=max_bytes))
        await log.append(STREAM, events)
        info = await check_stream(log, path, events, first=11 - kept)
        assert info.bytes == (stored_batch(kept) if kept > 1 else kept * SIZE)
        assert info.bytes <= max_bytes
        records = [encode(e) for e in events[10 - kept :]]
        rows = [(offset, value) for offset, _, value in stored_rows(path)]
        assert rows == ([(11 - kept, stored(records))] if kept else [])


@DURABILITIES
async def test_max_bytes_cuts_across_rows(tmp_path: Path, durability: Durability) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 18)]
    room = stored_batch(4) + SIZE + stored_batch(4)
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM, StreamConfig(max_bytes=room))
        await log.append(STREAM, events[:4])
        await log.append(STREAM, [events[4]])
        await together(log, [[e] for e in events[5:9]])
        assert layout(path) == [(1, 4), (5, 1), (6, 4)]
        assert (await check_stream(log, path, events[:9], first=1)).bytes == room
        # A batch as large as the oldest: that row goes, whole.
        await log.append(STREAM, events[9:13])
        assert layout(path) == [(5, 1), (6, 4), (10, 4)]
        assert (await check_stream(log, path, events[:13], first=5)).bytes == room
        # One record: the single row goes.
        await log.append(STREAM, [events[13]])
        assert layout(path) == [(6, 4), (10, 4), (14, 1)]
        assert (await check_stream(log, path, events[:14], first=6)).bytes == room
        # One record more: the oldest batch loses one event (4 + SIZE bytes freed).
        await log.append(STREAM, [events[14]])
        assert layout(path) == [(7, 3), (10, 4), (14, 1), (15, 1)]
        info = await check_stream(log, path, events[:15], first=7)
        assert info.bytes == stored_batch(3) + stored_batch(4) + 2 * SIZE == room - 4
        # A batch of two: losing two events, the batch is one unframed record.
        assert await together(log, [[events[15]], [events[16]]]) == [[16], [17]]
        assert layout(path) == [(9, 1), (10, 4), (14, 1), (15, 1), (16, 2)]
        info = await check_stream(log, path, events, first=9)
        assert info.bytes == SIZE + stored_batch(4) + 2 * SIZE + stored_batch(2)
        assert info.bytes <= room
        await check_reads(log, events, range(8, 19), limit=3)


# -- a model of the rows, driven at random -------------------------------------------------


@dataclass
class Model:
    """What the stream's table must hold: rows of records, oldest first."""

    max_events: int | None
    max_bytes: int | None
    batch_events: int
    batch_bytes: int
    events: list[CloudEvent] = field(default_factory=list)
    rows: list[tuple[int, list[bytes]]] = field(default_factory=list)
    first: int = 1

    def write_group(self, events: list[CloudEvent]) -> None:
        """One group commit: rows of at most ``batch_events`` records and ``batch_bytes``
        record bytes (a larger record alone), then the size limits."""
        start = len(self.events) + 1
        self.events += events
        row: list[bytes] = []
        for record in map(encode, events):
            full = len(row) == self.batch_events
            if row and (full or sum(map(len, row)) + len(record) > self.batch_bytes):
                self.rows.append((start, row))
                start, row = start + len(row), []
            row.append(record)
        self.rows.append((start, row))
        self.retain()

    def size_from(self, cut: int) -> int:
        """The stored bytes left if every event below ``cut`` is dropped."""
        return sum(
            stored_size([len(r) for r in records[max(0, cut - start) :]])
            for start, records in self.rows
            if start + len(records) > cut
        )

    def retain(self) -> None:
        """Keep the newest events that fit: max_events, then max_bytes (the lowest cut
        leaving at most max_bytes stored; a batch cut in two keeps its newer records)."""
        last = len(self.events)
        cut = self.first
        if self.max_events is not None:
            cut = max(cut, last - self.max_events + 1)
        if self.max_bytes is not None:
            while self.size_from(cut) > self.max_bytes:
                cut += 1
        self.rows = [
            (max(start, cut), records[max(0, cut - start) :])
            for start, records in self.rows
            if start + len(records) > cut
        ]
        self.first = cut

    def stored(self) -> list[tuple[int, bytes]]:
        return [(start, stored(records)) for start, records in self.rows]


_sizes = st.one_of(st.integers(0, 150), st.integers(400, 600))  # some over batch_bytes
_calls = st.lists(st.lists(_sizes, min_size=1, max_size=5), min_size=1, max_size=4)
_limits = st.tuples(st.none() | st.integers(1, 25), st.none() | st.integers(60, 2500))
_operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), _calls),  # one call after the other: a group each
        st.tuples(st.just("together"), _calls),  # awaited together: one group
        st.tuples(st.just("limits"), _limits),  # create_stream again with new limits
    ),
    min_size=1,
    max_size=10,
)


async def run_model(
    path: Path,
    durability: Durability,
    limits: tuple[int | None, int | None],
    operations: list[tuple[str, object]],
    data: st.DataObject,
) -> None:
    """Run ``operations`` on a log (batch limits patched to 4 events, 512 bytes) and
    after each one compare the stream's table with the model, exactly."""
    model = Model(*limits, batch_events=4, batch_bytes=512)
    async with SqliteLog(path, durability=durability, poll_interval=None) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=limits[0], max_bytes=limits[1]))
        for op, argument in operations:
            if op == "limits":
                assert isinstance(argument, tuple)
                model.max_events, model.max_bytes = argument
                await log.create_stream(
                    STREAM, StreamConfig(max_events=argument[0], max_bytes=argument[1])
                )
                model.retain()
            else:
                assert isinstance(argument, list)
                calls, expected, n = [], [], len(model.events) + 1
                for sizes in argument:
                    calls.append([event(n + i, size) for i, size in enumerate(sizes)])
                    expected.append(list(range(n, n + len(sizes))))
                    n += len(sizes)
                if op == "together":
                    assert await together(log, calls) == expected
                    model.write_group([e for call in calls for e in call])
                else:
                    for call, offsets in zip(calls, expected, strict=True):
                        assert await log.append(STREAM, call) == offsets
                        model.write_group(call)
            # Offsets first..last in rows holding each its own event's record, read back.
            info = await check_stream(log, path, model.events, model.first)
            assert info.bytes == model.size_from(model.first)
            assert [(o, v) for o, _, v in stored_rows(path)] == model.stored()
            if model.max_events is not None:
                assert info.events <= model.max_events
            if model.max_bytes is not None:
                assert info.bytes <= model.max_bytes
            last = len(model.events)
            start = data.draw(st.integers(1, last + 1), label="read from")
            limit = data.draw(st.integers(1, 6), label="read at most")
            expected_entries = numbered(model.events, max(start, model.first))
            got = await walk(log, Start.at_offset(start), limit)
            assert got == chunks(expected_entries, limit)


@DURABILITIES
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(limits=_limits, operations=_operations, data=st.data())
def test_retention_keeps_a_contiguous_suffix_and_counts_stored_bytes(
    durability: Durability,
    limits: tuple[int | None, int | None],
    operations: list[tuple[str, object]],
    data: st.DataObject,
) -> None:
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer_module, "BATCH_EVENTS", 4)
        patch.setattr(writer_module, "BATCH_BYTES", 512)
        asyncio.run(run_model(Path(directory) / "log.db", durability, limits, operations, data))


# -- age retention, start times ------------------------------------------------------------


@DURABILITIES
async def test_max_age_drops_batches_whole_by_the_time_of_their_group(
    tmp_path: Path, durability: Durability, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer_module, "RETENTION_INTERVAL", 0.01)
    path = tmp_path / "log.db"
    clock = Clock(1000.0)
    events = [event(n) for n in range(1, 14)]
    async with SqliteLog(path, durability=durability, clock=clock) as log:
        await log.create_stream(STREAM, StreamConfig(max_age=15.0, max_events=8))
        await log.append(STREAM, events[:6])  # 1..6 at 1000
        clock.now = 1010.0
        await together(log, [[e] for e in events[6:10]])  # 7..10 at 1010; cut at 3
        assert [(o, t) for o, t, _ in stored_rows(path)] == [(3, 1000.0), (7, 1010.0)]
        clock.now = 1014.9  # the older group is not 15 s old yet
        await sweeps(clock)
        await check_stream(log, path, events[:10], first=3)
        clock.now = 1015.5  # now it is: the row rewritten at the cut goes whole
        await until_dropped(log, 6)
        assert layout(path) == [(7, 4)]
        await check_stream(log, path, events[:10], first=7)
        clock.now = 1020.0
        await log.append(STREAM, events[10:])  # 11..13 at 1020
        clock.now = 1030.0  # 1010 is 20 s old, 1020 10 s
        await until_dropped(log, 10)
        assert stored_rows(path) == [(11, 1020.0, encode_batch([encode(e) for e in events[10:]]))]
        await check_stream(log, path, events, first=11)
        clock.now = 1100.0  # everything
        info = await until_dropped(log, 13)
        assert (info.first_offset, info.events, info.bytes) == (14, 0, 0)
        assert stored_rows(path) == []
        assert sql_bytes(path) == 0


@DURABILITIES
async def test_time_starts_find_the_first_event_of_a_group(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    clock = Clock(100.0)
    events = [event(n) for n in range(1, 30)]
    async with SqliteLog(path, durability=durability, clock=clock) as log:
        await log.create_stream(STREAM)
        # Groups of 7, 3, 12, 1 and 5 events at 100, 200, 300, 400, 500.
        await together(log, [[e] for e in events[:7]])
        clock.now = 200.0
        await log.append(STREAM, events[7:10])
        clock.now = 300.0
        await together(log, [events[10:14], [events[14]], events[15:22]])
        clock.now = 400.0
        await log.append(STREAM, [events[22]])
        clock.now = 500.0
        await log.append(STREAM, events[23:28])
        assert layout(path) == [(1, 7), (8, 3), (11, 12), (23, 1), (24, 5)]
        starts = {
            0.0: 1, 100.0: 1, 100.5: 8, 199.9: 8, 200.0: 8, 250.0: 11, 300.0: 11,
            300.001: 23, 400.0: 23, 450.0: 24, 500.0: 24,
        }  # fmt: skip
        for moment, first in starts.items():
            assert await walk(log, Start.at_time(moment), 100) == [numbered(events[:28], first)]
        async with log.reader(STREAM, "later", Start.at_time(500.5)) as reader:
            assert await reader.next_batch(10) == []
            clock.now = 600.0
            await log.append(STREAM, [events[28]])
            assert await reader.next_batch(10) == [(29, events[28])]
        # A cut through the first batch: its rewritten row keeps the group's time.
        await log.create_stream(STREAM, StreamConfig(max_events=25))
        assert stored_rows(path)[0][:2] == (5, 100.0)
        for moment, first in {0.0: 5, 100.0: 5, 150.0: 8, 550.0: 29, 600.0: 29}.items():
            assert await walk(log, Start.at_time(moment), 100) == [numbered(events, first)]
        assert await walk(log, Start.at_time(600.5), 100) == []


# -- redeliveries --------------------------------------------------------------------------


@DURABILITIES
async def test_entries_given_back_from_inside_a_batch_are_redelivered(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 16)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await together(log, [[e] for e in events[:10]])
        await log.append(STREAM, events[10:15])
        assert layout(path) == [(1, 10), (11, 5)]
        first = log.reader(STREAM, "c", Start.at_offset(4))
        assert await first.next_batch(5) == numbered(events[:8], 4)
        for offset in (4, 6, 8):
            await first.ack(offset)
        await first.close()  # 5 and 7 are given back
        assert (await log.info(STREAM)).consumer("c").position == 4
        async with log.reader(STREAM, "c") as second:
            assert await second.next_batch(1) == [(5, events[4])]
            assert await second.next_batch(2) == [(7, events[6]), (9, events[8])]
            assert await second.next_batch(10) == numbered(events, 10)  # across the rows
            assert await second.next_batch(10) == []
            for offset in (5, 7, *range(9, 16)):
                await second.ack(offset)
            await second.flush()
        assert (await log.info(STREAM)).consumer("c").position == 15


@DURABILITIES
async def test_redeliveries_across_rows_skip_what_retention_dropped(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 16)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, events[:10])
        await together(log, [[e] for e in events[10:15]])
        assert layout(path) == [(1, 10), (11, 5)]
        first = log.reader(STREAM, "d", Start.at_offset(8))
        assert await first.next_batch(6) == numbered(events[:13], 8)
        for offset in (9, 12):
            await first.ack(offset)
        await first.close()  # 8, 10, 11 and 13 are given back
        await log.create_stream(STREAM, StreamConfig(max_events=6))  # drops 1..9
        assert layout(path) == [(10, 1), (11, 5)]
        async with log.reader(STREAM, "d") as second:
            # 8 was dropped; 10, 11 and 13 come back, then what follows 13, as much as fits.
            got = await second.next_batch(4)
            assert got == [(10, events[9]), (11, events[10]), (13, events[12]), (14, events[13])]
            assert await second.next_batch(4) == [(15, events[14])]
            for offset in (10, 11, 13, 14, 15):
                await second.ack(offset)
            await second.flush()
        assert (await log.info(STREAM)).consumer("d").position == 15


async def fetched(log: SqliteLog, offsets: Sequence[int], stream: str = STREAM) -> list[Entry]:
    """``fetch_offsets`` (what a reader's redeliveries use), checking which way it went:
    one range scan for offsets close together, else an ``IN`` query for the rows
    that begin at them and lookups of the batches holding the others."""
    statements: list[str] = []
    log._read_conn.set_trace_callback(statements.append)
    try:
        entries = await log.fetch_offsets(stream, offsets)
    finally:
        log._read_conn.set_trace_callback(None)
    wanted = set(offsets)
    spread = bool(wanted) and max(wanted) - min(wanted) >= 4 * len(wanted)
    assert any(" IN (" in sql for sql in statements) == spread, (offsets, statements)
    return entries


def at(events: Sequence[CloudEvent], offsets: Sequence[int]) -> list[tuple[int, CloudEvent]]:
    return [(n, events[n - 1]) for n in offsets]


_CLOSE_TOGETHER = [
    ([6, 5, 5, 7, 4, 3, 8, 9, 10], [5, 6, 7, 8, 9, 10]),  # from below the first, across rows
    ([5], [5]),  # the row rewritten at the cut
    ([6], [6]),  # inside it
    ([7], [7]),
    ([8, 7], [7, 8]),  # single-record rows
    ([14], [14]),  # inside a batch
    ([21, 20, 20], [20, 21]),  # the end of one batch, the start of the next
    ([42, 41, 40, 39, 40], [39, 40]),  # past the end
    ([1, 2, 3, 4], []),  # dropped by retention
    ([41, 44], []),
    ([], []),
]
_SPREAD_OUT = [
    ([40, 1, 9, 9, 15, 7, 100, 4, 6], [6, 7, 9, 15, 40]),
    ([60, 24, 5, 23, 8, 22], [5, 8, 22, 23, 24]),  # three from one batch
    ([9, 21, 40], [9, 21, 40]),
    ([10, 30], [10, 30]),  # both inside batches
    ([6, 20, 39], [6, 20, 39]),
    ([2, 25], [25]),
    ([1, 30], [30]),
    ([0, 41, 100], []),
]


async def test_fetch_offsets_over_rows_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 41)]
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=36))
        await log.append(STREAM, [events[0]])
        await log.append(STREAM, events[1:6])
        await log.append(STREAM, [events[6]])
        await log.append(STREAM, [events[7]])
        await log.append(STREAM, events[8:20])
        await log.append(STREAM, events[20:40])  # and a cut at 5, inside the batch at 2
        assert layout(path) == [(5, 2), (7, 1), (8, 1), (9, 12), (21, 20)]
        for offsets, expected in _CLOSE_TOGETHER + _SPREAD_OUT:
            assert await fetched(log, offsets) == at(events, expected), offsets


async def test_fetch_offsets_of_many_offsets(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    events = [event(n, 0) for n in range(1, 3001)]
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=2990))
        await log.append(STREAM, [events[0]])
        await log.append(STREAM, events[1:2999])
        await log.append(STREAM, [events[2999]])  # and a cut at 11
        assert layout(path) == [(11, 1015), (1026, 1024), (2050, 950), (3000, 1)]
        # Spread out, more than one IN query's worth (offsets 3005, 3000, ... 5).
        offsets = list(range(3005, 0, -5))
        assert len(offsets) > 500
        got = await fetched(log, offsets)
        assert got == at(events, range(15, 3001, 5))
        # Close together.
        got = await fetched(log, [*range(1, 3003, 3), 2998])
        assert got == at(events, range(13, 3001, 3))


# -- older files, damaged batches ----------------------------------------------------------


@DURABILITIES
async def test_a_version_1_file_is_read_and_takes_batches(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 13)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=10))
        for e in events[:5]:
            await log.append(STREAM, [e])  # one call at a time: one record per row
    assert [is_batch(value) for _, _, value in stored_rows(path)] == [False] * 5
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 1")  # as version 1 wrote it
    assert user_version(path) == 1
    async with SqliteLog(path, durability=durability) as log:
        assert user_version(path) == SCHEMA_VERSION == 2  # marked when opened
        await check_stream(log, path, events[:5], first=1)
        await check_reads(log, events[:5], range(1, 7), limit=2)
        assert await together(log, [[e] for e in events[5:9]]) == [[6], [7], [8], [9]]
        assert await log.append(STREAM, events[9:]) == [10, 11, 12]  # and a cut at 3
        assert layout(path) == [(3, 1), (4, 1), (5, 1), (6, 4), (10, 3)]
        await check_stream(log, path, events, first=3)
        await check_reads(log, events, range(1, 14), limit=3)
    assert user_version(path) == 2
    async with SqliteLog(path, durability=durability) as log:
        await check_stream(log, path, events, first=3)


def damage_count(path: Path, offset: int) -> None:
    """Make the batch at ``offset`` claim one record more (its length unchanged)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (sid,) = conn.execute("SELECT id FROM streams WHERE name = ?", (STREAM,)).fetchone()
        table = f"events_{sid}"
        query = f"SELECT record FROM {table} WHERE offset = ?"
        (value,) = conn.execute(query, (offset,)).fetchone()
        count = int.from_bytes(value[1:5], "little")
        damaged = value[:1] + (count + 1).to_bytes(4, "little") + value[5:]
        conn.execute(f"UPDATE {table} SET record = ? WHERE offset = ?", (damaged, offset))
        conn.commit()


@DURABILITIES
async def test_a_damaged_batch_straddling_a_cut_is_left_whole(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 11)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, events[:4])
        await log.append(STREAM, events[4:6])
    damage_count(path, 1)
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=4))  # cut at 3: inside it
        assert layout_offsets(path) == [1, 5]
        info = await log.info(STREAM)
        assert (info.first_offset, info.dropped, info.bytes) == (3, 2, sql_bytes(path))
        with pytest.raises(LogCorrupted, match="damaged"):
            await walk(log, Start.at_offset(3), 10)
        await log.append(STREAM, events[6:8])  # cut at 5, where the next row begins: it goes
        assert layout_offsets(path) == [5, 7]
        info = await log.info(STREAM)
        assert (info.first_offset, info.dropped, info.bytes) == (5, 4, sql_bytes(path))
        assert await walk(log, EARLIEST, 10) == [numbered(events[:8], 5)]
        await log.append(STREAM, events[8:])  # cut at 7
        assert layout(path) == [(7, 2), (9, 2)]
        await check_stream(log, path, events, first=7)


def layout_offsets(path: Path) -> list[int]:
    return [offset for offset, _, _ in stored_rows(path)]


def damage_type(path: Path, offset: int) -> None:
    """Make the value stored at ``offset`` an integer, not a BLOB (page damage can
    change a value's type; ``quick_check`` does not look at types)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (sid,) = conn.execute("SELECT id FROM streams WHERE name = ?", (STREAM,)).fetchone()
        conn.execute(f"UPDATE events_{sid} SET record = 12345 WHERE offset = ?", (offset,))
        conn.commit()
        query = f"SELECT typeof(record) FROM events_{sid} WHERE offset = ?"
        assert conn.execute(query, (offset,)).fetchone() == ("integer",)


@DURABILITIES
async def test_a_stored_value_that_is_not_a_blob_is_reported_as_damaged(
    tmp_path: Path, durability: Durability
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 4)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [events[0]])  # a row of one record
        await log.append(STREAM, events[1:])  # a batch
        first = log.reader(STREAM, "c")
        assert await first.next_batch(10) == numbered(events)
        await first.ack(2)
        await first.ack(3)
        await first.close()  # 1 is given back
        damage_type(path, 1)
        async with log.reader(STREAM, "c") as second:
            with pytest.raises(LogCorrupted, match="damaged"):
                await second.next_batch(10)  # redelivers 1
        with pytest.raises(LogCorrupted, match="damaged"):
            await walk(log, EARLIEST, 10)
        for offsets in ([1], [1, 2, 3], [3, 1, 50]):  # close together, spread out
            with pytest.raises(LogCorrupted, match="damaged"):
                await log.fetch_offsets(STREAM, offsets)
        assert await log.fetch_offsets(STREAM, [2, 3]) == numbered(events, 2)
        assert await walk(log, Start.at_offset(2), 10) == [numbered(events, 2)]


@DURABILITIES
@pytest.mark.parametrize("how", ["append", "create_stream"])
@pytest.mark.parametrize(
    ("limits", "lower"),
    [
        pytest.param(StreamConfig(max_events=3), StreamConfig(max_events=2), id="max_events"),
        pytest.param(
            StreamConfig(max_bytes=SIZE + stored_batch(2)),
            StreamConfig(max_bytes=stored_batch(2)),
            id="max_bytes",
        ),
    ],
)
async def test_retention_and_appends_go_on_past_a_stored_value_that_is_not_a_blob(
    tmp_path: Path, durability: Durability, how: str, limits: StreamConfig, lower: StreamConfig
) -> None:
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 10)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM, limits)
        await log.create_stream("other")
        await log.append(STREAM, [events[0]])
        await log.append(STREAM, events[1:3])
        assert (await log.info(STREAM)).first_offset == 1  # all within the limits
    damage_type(path, 1)
    async with SqliteLog(path, durability=durability) as log:
        if how == "create_stream":
            await log.create_stream(STREAM, lower)  # a cut past the damaged row
        # Each group: an append cutting (past the damaged row at first), and another
        # stream's append in the same transaction.
        for n in range(4, 10):
            calls = [[events[n - 1]], [event(100 + n)]]
            assert await together(log, calls, [STREAM, "other"]) == [[n], [n - 3]]
        info = await log.info(STREAM)
        assert info.last_offset == 9
        assert layout_offsets(path)[0] == info.first_offset > 1  # the damaged row is gone
        assert await walk(log, EARLIEST, 10) == [numbered(events, info.first_offset)]
        assert (await log.info("other")).events == 6


@DURABILITIES
async def test_a_reader_at_the_end_does_not_read_the_last_row_again(
    tmp_path: Path, durability: Durability
) -> None:
    # A reader waiting at the end asks again and again: that must not read the
    # last row each time, nor fail because that row, read whole, was damaged since.
    path = tmp_path / "log.db"
    events = [event(n) for n in range(1, 7)]
    async with SqliteLog(path, durability=durability) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, events[:4])  # one row
        async with log.reader(STREAM, "c") as reader:
            assert await reader.next_batch(10) == numbered(events[:4])
            damage_count(path, 1)
            assert await reader.next_batch(10, timeout=0) == []
            assert await reader.next_batch(10, timeout=0.05) == []  # asks twice
            assert await walk(log, Start.at_offset(5), 10) == []  # a new consumer at the end
            await log.append(STREAM, events[4:])
            assert await reader.next_batch(10) == numbered(events, 5)
            assert await reader.next_batch(10, timeout=0) == []
        with pytest.raises(LogCorrupted, match="damaged"):
            await walk(log, Start.at_offset(4), 10)  # it is damaged


async def test_an_empty_stored_value_is_reported_as_damaged(tmp_path: Path) -> None:
    # Not a batch (is_batch must not index an empty value): a damaged record.
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(1)])
        await log.append(STREAM, [event(2), event(3)])
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE events_1 SET record = x'' WHERE offset = 1")
        conn.commit()
    async with SqliteLog(path) as log:
        with pytest.raises(LogCorrupted, match="damaged"):
            await walk(log, Start.at_offset(1), 10)


async def test_max_bytes_past_a_damaged_batch_keeps_the_rows_that_fit(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(1), event(2)])
        for n in (3, 4, 5):
            await log.append(STREAM, [event(n)])
    damage_count(path, 1)
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM, StreamConfig(max_bytes=3 * SIZE))  # rows 3, 4, 5 fit
        info = await log.info(STREAM)
        assert (info.first_offset, info.bytes) == (3, 3 * SIZE)


async def test_a_damaged_batch_wholly_below_a_cut_is_deleted(tmp_path: Path) -> None:
    # Its count is unreadable, but the next row begins at the cut: it holds nothing kept.
    path = tmp_path / "log.db"
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM)
        await log.append(STREAM, [event(n) for n in range(1, 5)])  # a batch row at 1
        await log.append(STREAM, [event(5)])
        await log.append(STREAM, [event(6)])
    damage_count(path, 1)
    async with SqliteLog(path) as log:
        await log.create_stream(STREAM, StreamConfig(max_events=2))
        info = await log.info(STREAM)
        assert (info.first_offset, info.events) == (5, 2)
        assert [[e.offset for e in batch] for batch in await walk(log, EARLIEST, 10)] == [[5, 6]]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT offset FROM events_1").fetchall() == [(5,), (6,)]
