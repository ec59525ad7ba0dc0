"""Graceful stop: deliveries under way finish, nothing new starts, cursors commit."""

from __future__ import annotations

import asyncio

from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker, Trigger
from headwater.log import MemoryLog
from tests.helpers import wait_until


class SlowSink:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started: list[str] = []
        self.finished: list[str] = []

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        self.started.append(event.id)
        await asyncio.sleep(self.delay)
        self.finished.append(event.id)
        return None


def event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": f"e{i}", "source": "/t", "type": "t"})


async def test_drain_lets_deliveries_under_way_finish_and_reads_nothing_new() -> None:
    log = MemoryLog()
    sink = SlowSink(0.3)
    broker = Broker("default", "b", log)
    await broker.start()
    await broker.add_trigger(Trigger("t", sink))
    await broker.accept([event(1), event(2)])
    await wait_until(lambda: len(sink.started) == 2)

    assert await broker.drain(5.0)
    await broker.accept([event(3)])  # arrives while draining: not started now
    await asyncio.sleep(0.2)
    assert sink.finished == ["e1", "e2"] and sink.started == ["e1", "e2"]
    await broker.stop()

    # After a restart, the cursor is past e1 and e2: only e3 is delivered.
    sink2 = SlowSink(0.0)
    restarted = Broker("default", "b", log)
    await restarted.start()
    await restarted.add_trigger(Trigger("t", sink2))
    await wait_until(lambda: sink2.finished == ["e3"])
    await restarted.stop()


async def test_drain_gives_up_after_its_grace() -> None:
    log = MemoryLog()
    sink = SlowSink(10.0)
    broker = Broker("default", "b", log)
    await broker.start()
    await broker.add_trigger(Trigger("t", sink))
    await broker.accept([event(1)])
    await wait_until(lambda: sink.started == ["e1"])
    assert not await broker.drain(0.1)
    await broker.stop()
    assert sink.finished == []  # cancelled, so not acknowledged: redelivered later
    sink2 = SlowSink(0.0)
    restarted = Broker("default", "b", log)
    await restarted.start()
    await restarted.add_trigger(Trigger("t", sink2))
    await wait_until(lambda: sink2.finished == ["e1"])
    await restarted.stop()
