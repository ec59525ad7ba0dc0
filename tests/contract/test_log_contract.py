"""The event-log contract: every backend (memory, sqlite, jetstream) passes all of it."""

from __future__ import annotations

import asyncio
import time

import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import (
    DEFAULT_MAX_EVENT_SIZE,
    EARLIEST,
    LATEST,
    Entry,
    EventLog,
    EventTooLarge,
    InvalidAck,
    LogClosed,
    Reader,
    Start,
    StreamConfig,
    StreamNotFound,
)
from headwater.log._codec import encode
from tests.contract.log_harness import Harness
from tests.helpers import WAIT, wait_until

STREAM = "broker.default"


def reading(i: int, data: object = None, **extensions: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": f"r-{i}",
            "source": "/sensors/kitchen",
            "type": "dev.headwater.telemetry",
            "datacontenttype": "application/json",
            **extensions,
        },
        {"seq": i, "celsius": 21.5} if data is None else data,
    )


async def read_all(reader: Reader, count: int, wait: float = WAIT) -> list[Entry]:
    """Read exactly ``count`` entries (fails if they do not arrive in time)."""
    got: list[Entry] = []
    deadline = time.monotonic() + wait
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(got)} of {count} entries arrived"
        got += await reader.next_batch(count - len(got), timeout=remaining)
    return got


async def dropped_at_least(log: EventLog, count: int) -> bool:
    return (await log.info(STREAM)).dropped >= count


async def drain(reader: Reader, wait: float = 0.3) -> list[Entry]:
    """Everything currently readable."""
    got: list[Entry] = []
    while batch := await reader.next_batch(100, timeout=wait):
        got += batch
    return got


async def ack_all(reader: Reader, offsets: list[int]) -> None:
    for offset in offsets:
        await reader.ack(offset)
    await reader.flush()


# -- appending and reading ---------------------------------------------------------


async def test_offsets_are_one_based_increasing_and_read_back_in_order(log: EventLog) -> None:
    await log.create_stream(STREAM)
    assert await log.append(STREAM, [reading(1), reading(2)]) == [1, 2]
    assert await log.append(STREAM, [reading(3)]) == [3]
    assert await log.append(STREAM, []) == []
    reader = log.reader(STREAM, "c")
    entries = await read_all(reader, 3)
    assert [offset for offset, _ in entries] == [1, 2, 3]
    assert [event for _, event in entries] == [reading(1), reading(2), reading(3)]
    assert await reader.next_batch(10, timeout=0) == []


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(reading(1, b"\x00\xffraw"), id="bytes"),
        pytest.param(
            CloudEvent(
                {
                    "specversion": "1.0",
                    "id": "t",
                    "source": "/s",
                    "type": "t",
                    "datacontenttype": "text/plain",
                },
                "héllo",
            ),
            id="text",
        ),
        pytest.param(reading(1, [1, "two", None, {"3": 4.5}]), id="json-array"),
        pytest.param(
            CloudEvent({"specversion": "1.0", "id": "n", "source": "/s", "type": "t"}),
            id="no-data",
        ),
        pytest.param(reading(1, b"", count=7, flag=True, sig=b"\x01\x02"), id="typed-extensions"),
        pytest.param(
            CloudEvent(
                {
                    "specversion": "0.3",
                    "id": "o",
                    "source": "/s",
                    "type": "t",
                    "schemaurl": "https://example.com/s",
                },
                {"old": True},
            ),
            id="specversion-0.3",
        ),
    ],
)
async def test_events_read_back_exactly(log: EventLog, event: CloudEvent) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [event])
    [(offset, back)] = await read_all(log.reader(STREAM, "c"), 1)
    assert offset == 1
    assert back == event
    assert dict(back.attributes) == dict(event.attributes)
    assert {k: type(v) for k, v in back.attributes.items()} == {
        k: type(v) for k, v in event.attributes.items()
    }
    assert type(back.data) is type(event.data)
    assert back.has_data == event.has_data


async def test_unknown_stream_is_reported(log: EventLog) -> None:
    with pytest.raises(StreamNotFound):
        await log.append("nope", [reading(1)])
    with pytest.raises(StreamNotFound):
        await log.info("nope")
    with pytest.raises(StreamNotFound):
        await log.reader("nope", "c").next_batch(1)
    with pytest.raises(StreamNotFound):
        await log.delete_stream("nope")


async def test_a_single_event_is_not_a_sequence(log: EventLog) -> None:
    await log.create_stream(STREAM)
    with pytest.raises(TypeError):
        await log.append(STREAM, reading(1))  # type: ignore[arg-type]


async def test_any_iterable_of_events_can_be_appended(log: EventLog) -> None:
    await log.create_stream(STREAM)
    assert await log.append(STREAM, (reading(i) for i in range(3))) == [1, 2, 3]  # type: ignore[arg-type]
    back = await read_all(log.reader(STREAM, "c"), 3)
    assert [e for _, e in back] == [reading(0), reading(1), reading(2)]


async def test_create_stream_is_idempotent_and_updates_limits(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(5)])
    await log.create_stream(STREAM)
    assert (await log.info(STREAM)).last_offset == 5
    await log.create_stream(STREAM, StreamConfig(max_events=2))
    info = await log.info(STREAM)
    assert (info.first_offset, info.last_offset, info.events, info.dropped) == (4, 5, 2, 3)
    assert info.config.max_events == 2


async def test_delete_stream(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(1)])
    await log.delete_stream(STREAM)
    with pytest.raises(StreamNotFound):
        await log.append(STREAM, [reading(2)])
    await log.create_stream(STREAM)
    assert await log.append(STREAM, [reading(3)]) == [1]


# -- waiting -----------------------------------------------------------------------------


async def test_next_batch_respects_max_and_does_not_wait_with_zero_timeout(log: EventLog) -> None:
    await log.create_stream(STREAM)
    reader = log.reader(STREAM, "c")
    # Nothing is ever appended meanwhile: a read that waited for data would not
    # return at all (the bound is only there to fail instead of hanging).
    async with asyncio.timeout(WAIT):
        assert await reader.next_batch(10, timeout=0) == []
    await log.append(STREAM, [reading(i) for i in range(7)])
    first = await reader.next_batch(3, timeout=2)
    assert [o for o, _ in first] == [1, 2, 3]
    rest = await read_all(reader, 4)
    assert [o for o, _ in rest] == [4, 5, 6, 7]


async def test_a_waiting_reader_wakes_on_append(log: EventLog) -> None:
    await log.create_stream(STREAM)
    reader = log.reader(STREAM, "c")
    await reader.next_batch(1, timeout=0)  # the consumer exists before the append

    async def append_later() -> None:
        await asyncio.sleep(0.2)
        await log.append(STREAM, [reading(1)])

    # An hour's timeout: the read returns with the event only if the append woke it.
    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        tg.create_task(append_later())
        batch = await reader.next_batch(10, timeout=3600)
    assert [o for o, _ in batch] == [1]


async def test_next_batch_times_out_empty(log: EventLog) -> None:
    await log.create_stream(STREAM)
    reader = log.reader(STREAM, "c")
    started = time.monotonic()
    async with asyncio.timeout(WAIT):  # returns, empty, once its timeout passed
        assert await reader.next_batch(5, timeout=0.3) == []
    assert time.monotonic() - started >= 0.25


async def test_async_iteration(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(3)])
    seen = []
    async with log.reader(STREAM, "c") as reader:
        async for offset, event in reader:
            seen.append((offset, event["id"]))
            if len(seen) == 3:
                break
    assert seen == [(1, "r-0"), (2, "r-1"), (3, "r-2")]


# -- acks and positions ------------------------------------------------------------------


async def test_ack_commits_the_low_water_mark(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(10)])
    reader = log.reader(STREAM, "c")
    await read_all(reader, 10)
    await ack_all(reader, [1, 2, 5, 6])
    consumer = (await log.info(STREAM)).consumer("c")
    assert (consumer.position, consumer.lag) == (2, 8)
    await ack_all(reader, [4, 3])
    consumer = (await log.info(STREAM)).consumer("c")
    assert (consumer.position, consumer.lag) == (6, 4)
    await ack_all(reader, [3, 6])  # again: nothing changes
    assert (await log.info(STREAM)).consumer("c").position == 6
    with pytest.raises(InvalidAck):
        await reader.ack(11)


async def test_restart_resumes_after_the_position(harness: Harness, log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(10)])
    reader = log.reader(STREAM, "c")
    await read_all(reader, 10)
    await ack_all(reader, [1, 2, 3, 4, 6])
    await reader.close()
    log = await harness.reopen(log)
    assert (await log.info(STREAM)).consumer("c").position == 4
    again = await drain(log.reader(STREAM, "c"))
    offsets = [o for o, _ in again]
    # Everything unacked comes again, in order; an acked entry above the
    # position may come again too (at least once), nothing at or below it.
    assert {5, 7, 8, 9, 10} <= set(offsets) <= {5, 6, 7, 8, 9, 10}
    assert offsets == sorted(offsets)
    assert [e["id"] for o, e in again if o == 5] == ["r-4"]


async def test_unacked_entries_of_a_closed_reader_go_to_the_next(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(4)])
    first = log.reader(STREAM, "c")
    await read_all(first, 4)
    await ack_all(first, [1, 3])
    await first.close()
    offsets = [o for o, _ in await drain(log.reader(STREAM, "c"))]
    assert {2, 4} <= set(offsets) <= {2, 3, 4}
    assert offsets == sorted(offsets)


async def test_two_readers_of_one_consumer_share_the_work(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(20)])
    one, two = log.reader(STREAM, "shared"), log.reader(STREAM, "shared")
    seen: list[int] = []
    for _ in range(20):
        for reader in (one, two):
            batch = await reader.next_batch(3, timeout=0.5)
            seen += [o for o, _ in batch]
            for offset, _ in batch:
                await reader.ack(offset)
        if len(seen) >= 20:
            break
    assert sorted(seen) == list(range(1, 21))
    await one.flush()
    await two.flush()
    assert (await log.info(STREAM)).consumer("shared").position == 20


async def test_consumers_are_independent_and_replay_is_a_new_consumer(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(5)])
    live = log.reader(STREAM, "live")
    await ack_all(live, [o for o, _ in await read_all(live, 5)])
    replay = log.reader(STREAM, "replay", Start.at_offset(2))
    assert [o for o, _ in await read_all(replay, 4)] == [2, 3, 4, 5]
    info = await log.info(STREAM)
    assert info.consumer("live").position == 5
    assert info.consumer("replay").lag == 4


async def test_delete_consumer_forgets_its_position(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(3)])
    reader = log.reader(STREAM, "c")
    await ack_all(reader, [o for o, _ in await read_all(reader, 3)])
    await reader.close()
    await log.delete_consumer(STREAM, "c")
    assert [c.name for c in (await log.info(STREAM)).consumers] == []
    assert [o for o, _ in await read_all(log.reader(STREAM, "c"), 3)] == [1, 2, 3]


# -- start positions -----------------------------------------------------------------------


async def test_start_earliest_latest_and_offset(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(5)])
    earliest = log.reader(STREAM, "earliest", EARLIEST)
    latest = log.reader(STREAM, "latest", LATEST)
    at_3 = log.reader(STREAM, "at-3", Start.at_offset(3))
    future = log.reader(STREAM, "future", Start.at_offset(8))
    for reader in (earliest, latest, at_3, future):
        await reader.next_batch(1, timeout=0)  # create the consumers now
        await reader.close()
    await log.append(STREAM, [reading(i) for i in range(5, 10)])

    async def offsets(consumer: str) -> list[int]:
        return [o for o, _ in await drain(log.reader(STREAM, consumer))]

    assert await offsets("earliest") == list(range(1, 11))
    assert await offsets("latest") == [6, 7, 8, 9, 10]
    assert await offsets("at-3") == list(range(3, 11))
    assert await offsets("future") == [8, 9, 10]


async def test_start_at_time(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(3)])
    await asyncio.sleep(0.1)
    moment = time.time()
    await asyncio.sleep(0.1)
    await log.append(STREAM, [reading(i) for i in range(3, 5)])
    reader = log.reader(STREAM, "then", Start.at_time(moment))
    assert [o for o, _ in await drain(reader)] == [4, 5]
    nothing_yet = log.reader(STREAM, "later", Start.at_time(time.time() + 60))
    assert await drain(nothing_yet) == []


async def test_an_existing_consumer_ignores_start(log: EventLog) -> None:
    await log.create_stream(STREAM)
    await log.append(STREAM, [reading(i) for i in range(4)])
    reader = log.reader(STREAM, "c")
    await ack_all(reader, [o for o, _ in await read_all(reader, 2)])
    await reader.close()
    resumed = log.reader(STREAM, "c", Start.at_offset(1))
    assert [o for o, _ in await drain(resumed)] == [3, 4]


# -- retention -----------------------------------------------------------------------------


async def test_max_events_drops_the_oldest_and_counts_them(log: EventLog) -> None:
    await log.create_stream(STREAM, StreamConfig(max_events=5))
    for i in range(12):
        await log.append(STREAM, [reading(i)])
    info = await log.info(STREAM)
    assert (info.first_offset, info.last_offset, info.events, info.dropped) == (8, 12, 5, 7)
    assert [o for o, _ in await drain(log.reader(STREAM, "c"))] == [8, 9, 10, 11, 12]


async def test_max_bytes_drops_the_oldest(log: EventLog) -> None:
    size = len(encode(reading(0)))
    await log.create_stream(STREAM, StreamConfig(max_bytes=size * 3 + size // 2))
    for i in range(10):
        await log.append(STREAM, [reading(i)])
    info = await log.info(STREAM)
    assert info.last_offset == 10
    # 3 records fit; a backend that counts its own framing too (JetStream
    # stores subject and headers with each message) keeps at least 2.
    assert info.events in (2, 3)
    assert (info.first_offset, info.dropped) == (11 - info.events, 10 - info.events)
    assert info.bytes <= size * 3 + size // 2


async def test_max_age_drops_old_events(log: EventLog) -> None:
    await log.create_stream(STREAM, StreamConfig(max_age=0.5))
    await log.append(STREAM, [reading(i) for i in range(3)])
    await asyncio.sleep(0.3)
    await log.append(STREAM, [reading(3)])
    await wait_until(lambda: dropped_at_least(log, 3), what="three events aged out")
    info = await log.info(STREAM)
    # The newest may be gone too by now (backends sweep ages periodically).
    assert info.dropped in (3, 4)
    assert info.first_offset == info.dropped + 1


async def test_readers_skip_what_retention_dropped(log: EventLog) -> None:
    await log.create_stream(STREAM, StreamConfig(max_events=3))
    reader = log.reader(STREAM, "c")
    await log.append(STREAM, [reading(i) for i in range(2)])
    first = await read_all(reader, 2)
    await ack_all(reader, [first[0].offset])
    await log.append(STREAM, [reading(i) for i in range(2, 8)])
    assert [o for o, _ in await drain(reader)] == [6, 7, 8]
    await ack_all(reader, [2, 6, 7, 8])
    consumer = (await log.info(STREAM)).consumer("c")
    assert (consumer.position, consumer.lag) == (8, 0)


# -- sizes and concurrency ---------------------------------------------------------------


async def test_events_up_to_the_max_size_fit(log: EventLog) -> None:
    await log.create_stream(STREAM)
    empty = reading(0, b"")
    overhead = len(encode(empty))
    biggest = reading(0, b"\xab" * (DEFAULT_MAX_EVENT_SIZE - overhead))
    assert len(encode(biggest)) == DEFAULT_MAX_EVENT_SIZE
    assert await log.append(STREAM, [empty, biggest]) == [1, 2]
    back = await read_all(log.reader(STREAM, "c"), 2)
    assert back[1].event == biggest
    too_big = reading(0, b"\xab" * (DEFAULT_MAX_EVENT_SIZE - overhead + 1))
    with pytest.raises(EventTooLarge) as raised:
        await log.append(STREAM, [reading(1), too_big])
    assert (raised.value.index, raised.value.limit) == (1, DEFAULT_MAX_EVENT_SIZE)
    assert (await log.info(STREAM)).last_offset == 2  # nothing of that append was stored


async def test_a_smaller_max_event_size(log: EventLog) -> None:
    await log.create_stream(STREAM, StreamConfig(max_event_size=200))
    await log.append(STREAM, [reading(1)])
    with pytest.raises(EventTooLarge):
        await log.append(STREAM, [reading(2, b"x" * 200)])


async def test_concurrent_appenders(log: EventLog) -> None:
    await log.create_stream(STREAM)
    producers, appends = 20, 15
    results: dict[int, list[tuple[list[int], list[str]]]] = {}

    async def produce(p: int) -> None:
        for a in range(appends):
            events = [reading(p * 1000 + a * 10 + k) for k in range(1 + (a % 3))]
            offsets = await log.append(STREAM, events)
            results.setdefault(p, []).append((offsets, [e.id for e in events]))

    async with asyncio.TaskGroup() as tg:
        for p in range(producers):
            tg.create_task(produce(p))
    by_offset: dict[int, str] = {}
    for runs in results.values():
        last = 0
        for offsets, ids in runs:
            assert offsets == sorted(offsets) and offsets[0] > last
            last = offsets[-1]
            by_offset.update(zip(offsets, ids, strict=True))
    total = sum(len(ids) for runs in results.values() for _, ids in runs)
    assert len(by_offset) == total
    back = await read_all(log.reader(STREAM, "c"), total)
    assert {o: e.id for o, e in back} == by_offset
    assert [o for o, _ in back] == sorted(by_offset)


# -- closing -------------------------------------------------------------------------------


async def test_closed_log_and_reader_refuse_work(harness: Harness) -> None:
    log = await harness.open()
    await log.create_stream(STREAM)
    reader = log.reader(STREAM, "c")
    await reader.close()
    with pytest.raises(LogClosed):
        await reader.next_batch(1)
    other = log.reader(STREAM, "d")
    await other.next_batch(1, timeout=0)
    await log.close()
    with pytest.raises(LogClosed):
        await other.next_batch(1)
    with pytest.raises(LogClosed):
        await log.append(STREAM, [reading(1)])
    with pytest.raises(LogClosed):
        await log.info(STREAM)
