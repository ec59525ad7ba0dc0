"""Event log: appends/s and reads/s per backend, against raw sqlite3 inserting the same rows.

What is measured, per backend (memory, sqlite ``normal``, sqlite ``fsync``,
jetstream when ``nats-server`` is installed):

* **append**: ``--producers`` (100) asyncio tasks each append ``--events`` /
  producers telemetry events (64 bytes of data, 6 attributes) through
  ``EventLog.append``, ``--batch`` events per call (1 by default: one call per
  event, as an MQTT PUBLISH or HTTP POST makes it), all concurrently. An
  append counts when it returned, i.e. when the backend made it durable.
  Events are built before the clock starts; encoding them is part of the
  backend's work.
* **read**: one consumer reads everything back with ``next_batch(1000)`` and
  acks every entry (as a dispatcher does), then flushes its position.

The peer is raw ``sqlite3`` on the same kind of file inserting the same
rows, single-threaded with no asyncio in the way: the floor our SQLite backend
is compared with, and the ratio printed is Headwater/raw (1.0 = as fast as raw
sqlite3). What each side does, so that like is compared with like:

====================  =====================================  ==============================
                      Headwater ``SqliteLog``                raw ``sqlite3`` (the peer)
====================  =====================================  ==============================
journal, sync         WAL; ``synchronous=NORMAL`` for        the same: WAL and the same
                      ``normal``, ``FULL`` for ``fsync``     ``synchronous`` per backend
encoding              each ``append`` encodes its events     none: rows are pre-encoded
                      (in the timed part)                    records (the same bytes)
transaction           one per group commit: as many rows     one per 1000 rows (the issue's
                      as appends are waiting (here at most   baseline); a second figure,
                      ``--producers`` x ``--batch``), plus   "per group", uses the size of
                      the stream's counters row              Headwater's groups
insert                multi-row ``INSERT`` statements        ``executemany``
checkpoints           on a background thread                 SQLite's automatic ones, in
                                                             the committing call
durable when          ``append`` returns                     ``COMMIT`` returns
====================  =====================================  ==============================

Raw reads are the same rows ``SELECT``-ed back in pages of 1000 and decoded.

Reading the one-event-per-append figure (measured on the 2-core machine,
November 2026): with 100 producers each awaiting its append, the log runs in
lock step, one group of 100 per round: the event loop wakes the 100 callers
and takes their next appends (about 2.7 us each: the suspension alone costs
about 1.2 us in CPython's asyncio, encoding 0.5-1), then the group is
inserted and committed (about 2.3 us per event with ``normal``, on the event
loop since 29 November: inserts about 1.1, ``COMMIT`` 0.55, the stream's
counters and the callers' results the rest).

29 November 2026, uvloop (``headwater up``'s loop), best of 3 each side:
``normal`` 212k appends/s against raw's 522k, 0.41x (0.41-0.45x over five
runs; 0.38-0.39x on asyncio); against raw at Headwater's own group size of
100, 0.47x. ``fsync`` 111k against 476k, 0.23x (0.43x at raw's group of
100). Reads 390k-430k/s, 0.67-0.73x of raw's. Batches of 10 events per
append: 0.78x (``normal``) and 0.73x (``fsync``). The issue's target of 0.5x
for one event per append is not reached.

What moved it: with ``normal`` the groups were written by the writer
thread, and each round cost two thread hand-overs (about 65 us of 500)
and GIL waits: 0.27-0.34x. Written on the event loop
(:class:`headwater.log._sqlite_writer.LoopWriter`), 0.41-0.45x. With
``fsync`` the writer stays a thread: its ``COMMIT`` waits 0.2-0.3 ms for
the disk, which must not stop the loop. Tried before, measured, not kept:
one shared future per group, callers reading their offsets from a slot (no
measurable gain, since each caller's wake-up costs the same; and any one
caller's cancellation would cancel the shared future for all); larger pages
(8 and 16 KiB: no difference); groups split in two with the next group's
inserts prepared before the previous one is settled, through a thread of
its own that wakes the loop: 0.85x the throughput with ``normal`` and 0.75x
with ``fsync``, the threads contending for the GIL and the two cores.
Turning the garbage collector off changed nothing measurable.
With ``fsync``, 100 single-event producers commit at most 100 events per
fsync (0.2-0.3 ms on this disk), against 1000 for the raw baseline; raw
``sqlite3`` itself, at 100 rows per transaction, reaches only about half
its 1000-row figure.

The inputs are built before any clock starts and then frozen (``gc.freeze``)
so that garbage collection does not rescan them during the runs.

Run: ``.venv/bin/python benchmarks/log_append.py [--events N] [--producers P]
[--batch B] [--repeat R] [--backends memory,sqlite-normal,sqlite-fsync,jetstream]
[--loop uvloop|asyncio]``.
Each backend runs R times on a fresh store, alternating with the raw peer, and
the best run of each side is reported (the machine is shared; the best run is
the one least disturbed).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

from headwater.cloudevents import CloudEvent
from headwater.log import EventLog, MemoryLog, Start
from headwater.log._codec import decode, encode
from headwater.log.sqlite import SqliteLog

REPO = Path(__file__).resolve().parents[1]

DEFAULT_EVENTS = 200_000
DEFAULT_PRODUCERS = 100
RAW_BATCH = 1000
READ_BATCH = 1000
STREAM = "bench"


def telemetry(producer: int, n: int) -> list[CloudEvent]:
    """``n`` events of one producer, each with 64 bytes of JSON data."""
    events = []
    for i in range(n):
        data = b'{"device":"sensor-%03d","seq":%08d,"celsius":21.50,"ok":true}' % (producer, i)
        data = data.ljust(64, b" ")
        events.append(
            CloudEvent(
                {
                    "specversion": "1.0",
                    "id": f"p{producer}-{i}",
                    "source": f"mqtt://gateway-1/sensors/{producer}",
                    "type": "dev.headwater.telemetry",
                    "time": "2026-11-28T12:00:00.000Z",
                    "datacontenttype": "application/json",
                },
                data,
            )
        )
    return events


async def run_backend(
    log: EventLog, per_producer: list[list[CloudEvent]], batch: int
) -> tuple[float, float]:
    total = sum(map(len, per_producer))
    await log.create_stream(STREAM)

    async def produce(events: list[CloudEvent]) -> None:
        for i in range(0, len(events), batch):
            await log.append(STREAM, events[i : i + batch])

    gc.collect()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for events in per_producer:
            tg.create_task(produce(events))
    append_rate = total / (time.perf_counter() - started)

    reader = log.reader(STREAM, "bench", Start.at_offset(1))
    gc.collect()
    started = time.perf_counter()
    seen = 0
    while seen < total:
        entries = await reader.next_batch(READ_BATCH, timeout=5)
        if not entries:
            raise RuntimeError(f"read stalled at {seen} of {total}")
        for offset, _ in entries:
            await reader.ack(offset)
        seen += len(entries)
    await reader.flush()
    read_rate = total / (time.perf_counter() - started)
    await reader.close()
    return append_rate, read_rate


def raw_sqlite(
    path: Path, records: list[bytes], synchronous: str, per_transaction: int = RAW_BATCH
) -> tuple[float, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("CREATE TABLE events (offset INTEGER PRIMARY KEY, time REAL, record BLOB)")
    now = time.time()
    rows = [(i + 1, now, record) for i, record in enumerate(records)]
    gc.collect()
    started = time.perf_counter()
    for i in range(0, len(rows), per_transaction):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", rows[i : i + per_transaction])
        conn.execute("COMMIT")
    append_rate = len(rows) / (time.perf_counter() - started)
    started = time.perf_counter()
    after, seen = 0, 0
    while True:
        page = conn.execute(
            "SELECT offset, record FROM events WHERE offset > ? ORDER BY offset LIMIT ?",
            (after, READ_BATCH),
        ).fetchall()
        if not page:
            break
        decoded = [(offset, decode(record)) for offset, record in page]
        after = decoded[-1][0]
        seen += len(decoded)
    read_rate = seen / (time.perf_counter() - started)
    conn.close()
    return append_rate, read_rate


def jetstream_factory(tmp: Path) -> tuple[Callable[[], EventLog], Callable[[], None]] | None:
    sys.path.insert(0, str(REPO))
    from headwater.log.jetstream import JetStreamLog
    from tests.servers import NatsServer

    try:
        server = NatsServer(tmp / "nats")
        server.start()
    except RuntimeError as exc:
        print(f"  (jetstream skipped: {exc})")
        return None
    return (lambda: JetStreamLog(server.url)), server.stop


async def measure(
    name: str, tmp: Path, run: int, per_producer: list[list[CloudEvent]], batch: int
) -> tuple[float, float] | None:
    """One run of one backend on a fresh store; ``None`` if it cannot run here."""
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if name == "memory":
        log: EventLog = MemoryLog()
    elif name in ("sqlite-normal", "sqlite-fsync"):
        durability = name.split("-")[1]
        log = SqliteLog(tmp / f"{name}-{run}.db", durability=durability)  # type: ignore[arg-type]
    elif name == "jetstream":
        made = jetstream_factory(tmp / f"nats-{run}")
        if made is None:
            return None
        factory, cleanup = made
        log = factory()
    else:
        raise SystemExit(f"unknown backend {name!r}")
    try:
        return await run_backend(log, per_producer, batch)
    finally:
        await log.close()
        cleanup()


async def main_async(args: argparse.Namespace) -> None:
    per = args.events // args.producers
    per_producer = [telemetry(p, per) for p in range(args.producers)]
    total = per * args.producers
    records = [encode(e) for events in per_producer for e in events]
    # The inputs live through every run: freeze them, so that the collector's
    # full passes do not rescan them (a cost of this script, not of a log).
    gc.collect()
    gc.freeze()
    print(
        f"{total} events ({len(records[0])} bytes encoded each), {args.producers} producers, "
        f"{args.batch} event(s) per append; one reader acking every entry; "
        f"best of {args.repeat} runs, each side"
    )
    group = args.producers * args.batch
    print(
        f"{'backend':<16}{'appends/s':>12}{'reads/s':>12}   raw sqlite3 append/read, ratio"
        f"   [raw, one transaction per group of {group}: append, ratio]"
    )
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for name in args.backends.split(","):
            ours: list[tuple[float, float]] = []
            raw: list[tuple[float, float]] = []
            raw_group: list[float] = []
            for run in range(args.repeat):  # alternate the sides: both see the same noise
                result = await measure(name, tmp, run, per_producer, args.batch)
                if result is None:
                    break
                ours.append(result)
                if name.startswith("sqlite"):
                    sync = "FULL" if name.endswith("fsync") else "NORMAL"
                    raw.append(raw_sqlite(tmp / f"raw-{name}-{run}.db", records, sync))
                    path = tmp / f"raw-group-{name}-{run}.db"
                    raw_group.append(raw_sqlite(path, records, sync, group)[0])
            if not ours:
                continue
            append_rate, read_rate = max(a for a, _ in ours), max(r for _, r in ours)
            line = f"{name:<16}{append_rate:>12,.0f}{read_rate:>12,.0f}"
            if raw:
                raw_append, raw_read = max(a for a, _ in raw), max(r for _, r in raw)
                line += (
                    f"   {raw_append:>10,.0f} {raw_read:>10,.0f}"
                    f"   append x{append_rate / raw_append:.2f}, read x{read_rate / raw_read:.2f}"
                    f"   [{max(raw_group):>9,.0f} x{append_rate / max(raw_group):.2f}]"
                )
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    parser.add_argument("--producers", type=int, default=DEFAULT_PRODUCERS)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="memory,sqlite-normal,sqlite-fsync,jetstream")
    parser.add_argument(
        "--loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="the event loop (headwater up's default: uvloop)",
    )
    args = parser.parse_args()
    if args.loop == "uvloop":
        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
