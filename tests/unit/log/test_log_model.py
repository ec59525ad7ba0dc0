"""Random interleavings of appends, reads, acks and restarts against a model of the contract.

Hypothesis drives the memory and SQLite backends through the same operations
and checks after each one what every backend must guarantee: offsets are
consecutive from 1, an entry is the event appended at its offset, one reader
session never hands out an offset twice, nothing at or below the durable
position is handed out again after a restart, the durable position is the
low-water mark of the acks (an entry handed out again after a restart needs
its ack again), and whatever was never acked is delivered again.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent
from headwater.log import EventLog, MemoryLog, Reader, SqliteLog

STREAM = "model"
CONSUMER = "c"

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("read"), st.integers(1, 6)),
        st.tuples(st.just("ack"), st.integers(0, 1000)),
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=40,
)


def event(n: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(n), "source": "/m", "type": "t"}, {"n": n})


def low_water(acked: set[int]) -> int:
    position = 0
    while position + 1 in acked:
        position += 1
    return position


async def run(
    operations: list[tuple[str, int]], open_log: Callable[[], Awaitable[EventLog]]
) -> None:
    log = await open_log()
    await log.create_stream(STREAM)
    appended: list[CloudEvent] = []
    acked: set[int] = set()
    session_acked: set[int] = set()
    held: list[int] = []  # handed out in this session, not acked
    session: set[int] = set()  # handed out in this session
    durable = 0  # the position as of the last restart
    reader: Reader = log.reader(STREAM, CONSUMER)
    try:
        for op, n in operations:
            if op == "append":
                events = [event(len(appended) + k) for k in range(n)]
                offsets = await log.append(STREAM, events)
                assert offsets == list(range(len(appended) + 1, len(appended) + n + 1))
                appended += events
            elif op == "read":
                batch = await reader.next_batch(n, timeout=0)
                for offset, got in batch:
                    assert got == appended[offset - 1]
                    assert offset not in session, f"{offset} handed out twice in one session"
                    assert offset > durable, f"{offset} is at or below the position {durable}"
                    session.add(offset)
                    # At least once: an entry acked above the position before a
                    # restart may come again, and then it needs its ack again.
                    acked.discard(offset)
                    session_acked.discard(offset)
                    held.append(offset)
                offsets = [o for o, _ in batch]
                assert offsets == sorted(offsets)
            elif op == "ack" and held:
                offset = held.pop(n % len(held))
                await reader.ack(offset)
                acked.add(offset)
                session_acked.add(offset)
            elif op == "restart":
                await reader.close()
                if isinstance(log, SqliteLog):
                    await log.close()
                    log = await open_log()
                consumers = {c.name: c.position for c in (await log.info(STREAM)).consumers}
                # A backend may remember acks above the position across a restart
                # (memory, JetStream) or not (SQLite stores the position only).
                remembered = low_water(acked)
                forgotten = low_water(set(range(1, durable + 1)) | session_acked)
                durable = consumers.get(CONSUMER, 0)  # created by its first read or ack
                assert forgotten <= durable <= remembered
                reader, held, session = log.reader(STREAM, CONSUMER), [], set()
                session_acked = set()
            await reader.flush()
        # Everything never acked comes (again) to a reader.
        rest: set[int] = set(held)
        while batch := await reader.next_batch(100, timeout=0):
            rest.update(o for o, _ in batch)
        assert set(range(1, len(appended) + 1)) - acked <= rest
    finally:
        await reader.close()
        await log.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=_operations)
def test_memory_backend_follows_the_model(operations: list[tuple[str, int]]) -> None:
    log = MemoryLog()

    async def open_log() -> EventLog:
        return log

    asyncio.run(run(operations, open_log))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=_operations)
def test_sqlite_backend_follows_the_model(operations: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "log.db"

        async def open_log() -> EventLog:
            return SqliteLog(path, durability="normal", poll_interval=None)

        asyncio.run(run(operations, open_log))
