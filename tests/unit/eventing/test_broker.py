from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import (
    TTL_EXTENSION,
    Broker,
    Channel,
    DeliveryError,
    DeliverySpec,
    Dispatcher,
    RecordingSink,
    Saturated,
    Subscription,
    Trigger,
)
from headwater.log import EARLIEST, EncodedEvents, LogUnavailable, MemoryLog, SqliteLog, Start
from headwater.log._codec import encode
from tests.helpers import wait_until


def event(i: int, type: str = "t", **extra: object) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": str(i), "source": "/test", "type": type, **extra},
        {"n": i},
    )


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with MemoryLog() as log, Broker("default", "b", log) as b:
        yield b


async def lag_is_zero(dispatcher: Dispatcher) -> bool:
    """Whether the log says this cursor acknowledged everything."""
    return await dispatcher.refresh_lag() == 0


async def test_accept_stamps_ttl_and_never_changes_data(broker: Broker) -> None:
    sink = RecordingSink()
    await broker.add_trigger(Trigger("all", sink))
    original = event(1)
    offsets = await broker.accept([original])
    assert offsets == [1]
    (got,) = await sink.wait_for(1)
    assert got[TTL_EXTENSION] == 255
    assert got.data == original.data
    assert got.evolve({TTL_EXTENSION: None}) == original


@pytest.mark.parametrize("durable", [False, True], ids=["memory", "sqlite"])
async def test_pre_encoded_events_are_stored_as_encoded_and_stamped_only_when_not(
    durable: bool, tmp_path: Any
) -> None:
    log = await SqliteLog.open(tmp_path / "log.db") if durable else MemoryLog()
    # A broker of its own name: what it drops is logged once per stream and interval.
    async with log, Broker("default", f"encoded-{durable}", log) as broker:
        sink = RecordingSink()
        await broker.add_trigger(Trigger("all", sink, start=EARLIEST))
        stamped = [event(i, knativebrokerttl=7) for i in (1, 2)]
        # Every event carries the TTL the producer says: appended as they are.
        await broker.accept(
            EncodedEvents(stamped, [encode(e) for e in stamped], {TTL_EXTENSION: 7})
        )
        # No TTL promised (or none valid): stamped as any other events.
        bare = [event(3), event(4, knativebrokerttl=0)]
        await broker.accept(EncodedEvents(bare, [encode(e) for e in bare], {}))
        got = await sink.wait_for(3)
        assert [(e.id, e[TTL_EXTENSION]) for e in got] == [("1", 7), ("2", 7), ("3", 255)]
        assert got[:2] == stamped
        assert broker.stats.ttl_dropped == 1


def test_encoded_events_need_a_record_each() -> None:
    with pytest.raises(ValueError, match="2 events but 1 records"):
        EncodedEvents([event(1), event(2)], [encode(event(1))], {})


async def test_each_matching_trigger_gets_its_own_delivery(broker: Broker) -> None:
    a, b, c = RecordingSink(), RecordingSink(), RecordingSink()
    await broker.add_trigger(Trigger("a", a, attributes={"type": "x"}))
    await broker.add_trigger(Trigger("b", b, filters=[{"prefix": {"type": "x"}}]))
    await broker.add_trigger(Trigger("c", c, attributes={"type": "y"}))
    await broker.accept([event(1, "x"), event(2, "y"), event(3, "xx")])
    assert [e.id for e in await a.wait_for(1)] == ["1"]
    assert sorted(e.id for e in await b.wait_for(2)) == ["1", "3"]
    assert [e.id for e in await c.wait_for(1)] == ["2"]
    stats = broker.triggers()["a"].stats
    # Every Trigger has seen all three once each is done with them: nothing more comes.
    await wait_until(lambda: (stats.delivered, stats.filtered) == (1, 2))
    for name, delivered in (("b", 2), ("c", 1)):
        other = broker.triggers()[name].stats
        await wait_until(lambda o=other, d=delivered: (o.delivered, o.filtered) == (d, 3 - d))  # type: ignore[misc]
    assert (len(a.events), len(b.events), len(c.events)) == (1, 2, 1)


async def test_a_dead_subscriber_does_not_slow_other_triggers(broker: Broker) -> None:
    async def dead(e: CloudEvent) -> None:
        raise DeliveryError(503, True)

    stuck = Trigger(
        "stuck", RecordingSink(dead), delivery=DeliverySpec(retry=1000, backoff_delay=5)
    )
    await broker.add_trigger(stuck)
    healthy = RecordingSink()
    await broker.add_trigger(Trigger("healthy", healthy))
    await broker.accept([event(i) for i in range(200)])
    assert len(await healthy.wait_for(200)) == 200
    await wait_until(lambda: stuck.stats.in_flight == 100)  # max in-flight reached
    assert stuck.stats.delivered == 0


async def test_late_trigger_starts_at_latest_unless_it_replays(broker: Broker) -> None:
    await broker.accept([event(1), event(2)])
    late, replay, from_two = RecordingSink(), RecordingSink(), RecordingSink()
    await broker.add_trigger(Trigger("late", late))
    await broker.add_trigger(Trigger("replay", replay, start=EARLIEST))
    await broker.add_trigger(Trigger("from2", from_two, start=Start.at_offset(2)))
    await broker.accept([event(3)])
    assert [e.id for e in await late.wait_for(1)] == ["3"]
    assert sorted(e.id for e in await replay.wait_for(3)) == ["1", "2", "3"]
    assert sorted(e.id for e in await from_two.wait_for(2)) == ["2", "3"]


async def test_cursor_survives_a_trigger_restart() -> None:
    async with MemoryLog() as log:
        async with Broker("default", "b", log) as broker:
            first = RecordingSink()
            dispatcher = await broker.add_trigger(Trigger("t", first))
            await broker.accept([event(1), event(2)])
            await first.wait_for(2)
            await wait_until(lambda: lag_is_zero(dispatcher))  # the acks landed
        async with Broker("default", "b", log) as broker:
            second = RecordingSink()
            await broker.add_trigger(Trigger("t", second, start=EARLIEST))
            await broker.accept([event(3)])
            dispatcher = broker.dispatchers()["trigger/default/t"]
            assert [e.id for e in await second.wait_for(1)] == ["3"]
            await wait_until(lambda: lag_is_zero(dispatcher))  # all of it passed
            assert len(second.events) == 1


async def test_ordered_delivery_one_in_flight_per_partition_key(broker: Broker) -> None:
    active: dict[object, int] = {}
    peak: dict[object, int] = {}
    seen: list[tuple[object, int]] = []

    async def slow(e: CloudEvent) -> None:
        key = e.get("partitionkey")
        active[key] = active.get(key, 0) + 1
        peak[key] = max(peak.get(key, 0), active[key])
        await asyncio.sleep(0.001)
        seen.append((key, e.data["n"]))
        active[key] -= 1

    sink = RecordingSink(slow)
    await broker.add_trigger(Trigger("o", sink, ordering="ordered"))
    events = [event(i, partitionkey=f"k{i % 3}") if i % 4 else event(i) for i in range(60)]
    await broker.accept(events)
    await sink.wait_for(60)
    assert set(peak.values()) == {1}
    for key in {k for k, _ in seen}:
        ns = [n for k, n in seen if k == key]
        assert ns == sorted(ns)
    assert len({k for k, _ in seen}) == 4  # three keys and the keyless ones, in parallel


async def test_unordered_respects_max_inflight(broker: Broker) -> None:
    active = 0
    peak = 0

    async def slow(e: CloudEvent) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        active -= 1

    sink = RecordingSink(slow)
    await broker.add_trigger(Trigger("u", sink, max_inflight=7))
    await broker.accept([event(i) for i in range(50)])
    await sink.wait_for(50)
    assert peak == 7


async def test_reply_is_re_enqueued_with_decremented_ttl(broker: Broker) -> None:
    def reply(e: CloudEvent) -> CloudEvent | None:
        if e.type == "request":
            return CloudEvent({"specversion": "1.0", "id": "r", "source": "/r", "type": "reply"})
        return None

    replier = RecordingSink(reply)
    replies = RecordingSink()
    await broker.add_trigger(Trigger("req", replier, attributes={"type": "request"}))
    await broker.add_trigger(Trigger("rep", replies, attributes={"type": "reply"}))
    await broker.accept([event(1, "request", knativebrokerttl=10)])
    (got,) = await replies.wait_for(1)
    assert got[TTL_EXTENSION] == 9


async def test_reply_loop_ends_by_ttl(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    def echo(e: CloudEvent) -> CloudEvent:
        return e.evolve({"id": f"{e.id}+"})

    sink = RecordingSink(echo)
    trigger = Trigger("loop", sink)
    await broker.add_trigger(trigger)
    await broker.accept([event(1, knativebrokerttl=5)])
    await sink.wait_for(5)
    await wait_until(lambda: broker.stats.ttl_dropped == 1 and not trigger.stats.in_flight)
    assert [e[TTL_EXTENSION] for e in sink.events] == [5, 4, 3, 2, 1]
    assert broker.stats.ttl_dropped == 1
    assert trigger.stats.replies == 5  # the fifth was dropped by the TTL guard
    assert "reached 0" in caplog.text


async def test_event_arriving_with_exhausted_ttl_is_dropped(broker: Broker) -> None:
    assert await broker.accept([event(1, knativebrokerttl=0), event(2)]) == [1]
    assert broker.stats.ttl_dropped == 1


async def test_saturated_broker_refuses_instead_of_queueing() -> None:
    class SlowLog(MemoryLog):
        async def append(self, stream: str, events: object) -> list[int]:
            await asyncio.sleep(0.05)
            return await super().append(stream, events)  # type: ignore[arg-type]

    async with SlowLog() as log, Broker("default", "b", log, max_pending_events=10) as broker:
        first = asyncio.create_task(broker.accept([event(i) for i in range(8)]))
        await asyncio.sleep(0)
        with pytest.raises(Saturated):
            await broker.accept([event(i) for i in range(8, 12)])
        assert len(await first) == 8
        assert broker.stats.saturated == 1


async def test_a_waiting_append_waits_for_room_instead_of_refusing() -> None:
    """A source that can hold its producers back waits for a saturated log."""
    gate = asyncio.Event()

    class GatedLog(MemoryLog):
        async def append(self, stream: str, events: object) -> list[int]:
            await gate.wait()
            return await super().append(stream, events)  # type: ignore[arg-type]

    async with GatedLog() as log, Broker("default", "b", log, max_pending_events=10) as broker:
        first = asyncio.create_task(broker.accept([event(i) for i in range(8)]))
        await asyncio.sleep(0)
        second = asyncio.create_task(broker.accept([event(i) for i in range(8, 12)], wait=True))
        await asyncio.sleep(0)
        assert not second.done() and broker.stats.waited == 1
        gate.set()
        assert len(await first) == 8
        assert len(await second) == 4
        assert broker.stats.saturated == 0


async def test_invalid_trigger_filter_rejects_the_trigger() -> None:
    from headwater.eventing import FilterError

    with pytest.raises(FilterError):
        Trigger("bad", RecordingSink(), filters=[{"regex": {"type": "x"}}])


async def test_channel_fans_out_to_every_subscription_with_replies() -> None:
    def answer(e: CloudEvent) -> CloudEvent:
        return e.evolve({"type": "answer"})

    replies = RecordingSink()
    a, b = RecordingSink(answer), RecordingSink(answer)
    channel = Channel.in_memory("default", "c")
    async with channel:
        sub_a = Subscription("a", a, reply=replies)
        sub_b = Subscription("b", b)  # no reply destination: replies discarded
        await channel.subscribe(sub_a)
        await channel.subscribe(sub_b)
        await channel.accept([event(i) for i in range(5)])
        await a.wait_for(5)
        await b.wait_for(5)
        got = await replies.wait_for(5)
        assert {e.type for e in got} == {"answer"}
        await wait_until(lambda: sub_b.replies_discarded == 5)
        assert sub_a.stats.replies == 5


async def test_subscription_reply_failure_retries_the_delivery() -> None:
    calls = 0

    async def reply_down(e: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise DeliveryError(503, True)

    subscriber = RecordingSink(lambda e: e.evolve({"type": "r"}))
    channel = Channel.in_memory("default", "c")
    async with channel:
        sub = Subscription(
            "s",
            subscriber,
            reply=RecordingSink(reply_down),
            delivery=DeliverySpec(retry=2, backoff_delay=0.001),
        )
        await channel.subscribe(sub)
        await channel.accept([event(1)])
        await subscriber.wait_for(2)
        await wait_until(lambda: sub.stats.delivered == 1)
        assert sub.stats.retried == 1


async def test_status_and_lag(broker: Broker) -> None:
    sink = RecordingSink()
    dispatcher = await broker.add_trigger(Trigger("t", sink))
    await broker.accept([event(i) for i in range(3)])
    await sink.wait_for(3)
    await wait_until(lambda: lag_is_zero(dispatcher))
    status = broker.status()
    assert status["accepted"] == 3
    assert status["dispatchers"]["trigger/default/t"]["delivered"] == 3
    await broker.remove_trigger("t", forget_cursor=True)
    assert broker.triggers() == {}


async def test_filter_is_evaluated_exactly_once_per_event(broker: Broker) -> None:
    calls: list[str] = []

    def counting(e: CloudEvent) -> bool:
        calls.append(e.id)
        return e.data["n"] % 2 == 0

    sink = RecordingSink()
    trigger = Trigger("t", sink, filter=counting)
    await broker.add_trigger(trigger)
    await broker.accept([event(i) for i in range(50)])
    await sink.wait_for(25)
    await wait_until(lambda: trigger.stats.filtered == 25)
    assert sorted(calls, key=int) == [str(i) for i in range(50)]


async def test_dispatcher_waits_out_an_unavailable_log() -> None:
    class FlakyReads(MemoryLog):
        failures = 3

        def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> Any:
            inner = super().reader(stream, consumer, start)
            outer = self

            class Reader:
                def __getattr__(self, name: str) -> Any:
                    return getattr(inner, name)

                async def next_batch(self, max: int = 256, timeout: float | None = 0) -> Any:  # noqa: ASYNC109
                    if outer.failures:
                        outer.failures -= 1
                        raise LogUnavailable("not now")
                    return await inner.next_batch(max, timeout)

            return Reader()

    async with FlakyReads() as log, Broker("default", "b", log) as broker:
        sink = RecordingSink()
        trigger = Trigger("t", sink, start=EARLIEST)
        await broker.add_trigger(trigger)
        await broker.accept([event(1)])
        await sink.wait_for(1)
        assert trigger.stats.last_error is not None and "not now" in trigger.stats.last_error


async def test_a_failed_dispatcher_is_restarted(caplog: pytest.LogCaptureFixture) -> None:
    async with MemoryLog() as log, Broker("default", "b", log) as broker:
        sink = RecordingSink()
        trigger = Trigger("t", sink, start=EARLIEST)
        await broker.add_trigger(trigger)
        await broker.accept([event(1)])
        await sink.wait_for(1)
        # Pull the stream from under the dispatcher: it fails, then recovers once
        # the stream is back.
        await log.delete_stream(broker.stream)
        await asyncio.sleep(0.05)
        await log.create_stream(broker.stream)
        await broker.accept([event(2)])
        await sink.wait_for(2, within=10)
        assert "failed; restarting" in caplog.text


async def test_replay_from_a_time(broker: Broker) -> None:
    await broker.accept([event(1)])
    await asyncio.sleep(0.02)
    middle = time.time()
    await asyncio.sleep(0.02)
    await broker.accept([event(2), event(3)])
    sink = RecordingSink()
    await broker.add_trigger(Trigger("replay", sink, start=Start.at_time(middle)))
    assert sorted(e.id for e in await sink.wait_for(2)) == ["2", "3"]


async def test_updating_a_trigger_keeps_cursor_and_counters(broker: Broker) -> None:
    first = RecordingSink()
    await broker.add_trigger(Trigger("t", first, attributes={"type": "a"}))
    await broker.accept([event(1, "a"), event(2, "b")])
    await first.wait_for(1)
    await asyncio.sleep(0.02)
    second = RecordingSink()
    updated = Trigger("t", second, attributes={"type": "b"}, start=EARLIEST)
    await broker.add_trigger(updated)
    await broker.accept([event(3, "b")])
    assert [e.id for e in await second.wait_for(1)] == ["3"]  # resumed, not replayed
    assert updated.stats.delivered == 2


async def test_cesql_trigger_routes_on_extensions(broker: Broker) -> None:
    hot = RecordingSink()
    await broker.add_trigger(
        Trigger("hot", hot, filters=[{"cesql": "type = 't' AND INT(temperature) > 30"}])
    )
    await broker.accept(
        [event(1, temperature="25"), event(2, temperature="31"), event(3), event(4, temperature=40)]
    )
    assert sorted(e.id for e in await hot.wait_for(2)) == ["2", "4"]
    await asyncio.sleep(0.02)
    assert len(hot.events) == 2


async def test_stopping_mid_delivery_redelivers_after_restart() -> None:
    started = asyncio.Event()

    async def hang(e: CloudEvent) -> None:
        started.set()
        await asyncio.sleep(60)

    async with MemoryLog() as log:
        async with Broker("default", "b", log) as broker:
            await broker.add_trigger(Trigger("t", RecordingSink(hang)))
            await broker.accept([event(1)])
            await started.wait()
        # Stopped while the delivery was in flight: it was not acknowledged.
        async with Broker("default", "b", log) as broker:
            sink = RecordingSink()
            await broker.add_trigger(Trigger("t", sink))
            assert [e.id for e in await sink.wait_for(1)] == ["1"]


async def test_events_dropped_for_their_ttl_make_one_line_with_their_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reply loop drops an event per turn: one line a minute, not one per event."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01"
    # A Broker of its own: lines are throttled per Broker for a minute.
    async with MemoryLog() as log, Broker("default", "looping", log) as broker:
        await _drop_expired(broker, traceparent, caplog)
    lines = [r for r in caplog.records if "reached 0" in r.getMessage()]
    assert len(lines) == 1
    assert (lines[0].event_id, lines[0].trace_id) == ("0", trace_id)  # type: ignore[attr-defined]


async def _drop_expired(broker: Broker, traceparent: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "headwater.eventing.broker"):
        await broker.accept(
            [event(i, **{TTL_EXTENSION: 0, "traceparent": traceparent}) for i in range(50)]
        )
    assert broker.stats.ttl_dropped == 50


async def test_a_sink_that_raises_writes_one_traceback_a_minute(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(e: CloudEvent) -> None:
        raise RuntimeError("a bug")

    sink = RecordingSink(broken)
    await broker.add_trigger(Trigger("buggy", sink, delivery=DeliverySpec(retry=0)))
    stats = broker.triggers()["buggy"].stats
    with caplog.at_level(logging.ERROR, "headwater.eventing.delivery"):
        await broker.accept([event(i) for i in range(20)])
        await wait_until(lambda: stats.dropped + stats.dead_lettered >= 20, what="all given up")
    raised = [r for r in caplog.records if "raised while delivering" in r.getMessage()]
    assert len(raised) == 1 and raised[0].exc_info is not None
    assert sink.attempts == 20
