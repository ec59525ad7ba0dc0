"""The cloud's per-edge queue: pulls, acknowledgements, resends, supersession, expiry."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.log import MemoryLog, StreamConfig
from headwater.tiers.edgequeue import EdgeQueue


def command(i: int, expires_in: float | None = None) -> CloudEvent:
    attributes: dict[str, object] = {
        "specversion": "1.0",
        "id": f"c{i}",
        "source": "/cloud",
        "type": "dev.headwater.command",
    }
    if expires_in is not None:
        attributes["expiresat"] = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat()
    return CloudEvent(attributes, {"n": i})


@pytest.fixture
async def queue() -> AsyncIterator[EdgeQueue]:
    async with MemoryLog() as log:
        queue = EdgeQueue(log, "edge/default/site-7", StreamConfig(max_event_size=1024))
        await queue.start()
        yield queue
        await queue.stop()


def ids(events: list[CloudEvent]) -> list[str]:
    return [e.id for e in events]


async def test_pull_answers_what_is_queued_and_acks_move_the_durable_position(
    queue: EdgeQueue,
) -> None:
    for i in range(5):
        await queue.deliver(command(i))
    first = await queue.pull(None, 3, 0)
    assert ids(first.events) == ["c0", "c1", "c2"] and first.last_offset == 3
    second = await queue.pull(first.last_offset, 3, 0)
    assert ids(second.events) == ["c3", "c4"] and second.last_offset == 5
    info = await queue.log.info(queue.stream)
    assert info.consumer("edge").position == 3
    await queue.pull(second.last_offset, 3, 0)
    assert (await queue.log.info(queue.stream)).consumer("edge").position == 5
    assert queue.stats.delivered == 5


async def test_what_was_not_acknowledged_is_sent_again(queue: EdgeQueue) -> None:
    await queue.deliver(command(1))
    await queue.deliver(command(2))
    lost = await queue.pull(None, 10, 0)
    again = await queue.pull(None, 10, 0)  # a restarted edge knows no offset
    assert ids(again.events) == ids(lost.events) == ["c1", "c2"]
    partly = await queue.pull(1, 10, 0)  # stored the first only
    assert ids(partly.events) == ["c2"]
    assert queue.stats.resent == 3


async def test_a_waiting_pull_answers_when_a_command_comes(queue: EdgeQueue) -> None:
    waiting = asyncio.ensure_future(queue.pull(None, 10, 30))
    await asyncio.sleep(0)
    await queue.deliver(command(7))
    answer = await asyncio.wait_for(waiting, 5)
    assert ids(answer.events) == ["c7"]


async def test_a_newer_pull_supersedes_a_waiting_one(queue: EdgeQueue) -> None:
    old = asyncio.ensure_future(queue.pull(None, 10, 30))
    await asyncio.sleep(0)  # it runs up to its wait
    assert queue.stats.waiting == 1
    # Whether the old pull is waiting already or not yet: it answers empty.
    new = asyncio.ensure_future(queue.pull(None, 10, 30))
    assert (await asyncio.wait_for(old, 5)).last_offset is None
    await queue.deliver(command(1))
    assert ids((await asyncio.wait_for(new, 5)).events) == ["c1"]


async def test_expired_commands_are_neither_queued_nor_sent(queue: EdgeQueue) -> None:
    await queue.deliver(command(0, expires_in=-1))
    assert queue.stats.queued == 0
    await queue.deliver(command(1, expires_in=0.05))
    await queue.deliver(command(2, expires_in=3600))
    await asyncio.sleep(0.1)
    answer = await queue.pull(None, 10, 0)
    assert ids(answer.events) == ["c2"]
    assert queue.stats.expired == 2
    await queue.pull(answer.last_offset, 10, 0)
    assert (await queue.log.info(queue.stream)).consumer("edge").lag == 0


async def test_an_outstanding_command_that_expires_is_not_sent_again(queue: EdgeQueue) -> None:
    await queue.deliver(command(1, expires_in=0.05))
    assert ids((await queue.pull(None, 10, 0)).events) == ["c1"]
    await asyncio.sleep(0.1)
    assert (await queue.pull(None, 10, 0)).events == []
    assert queue.stats.expired == 1


async def test_too_large_is_refused_for_good_and_a_stopped_queue_answers_at_once(
    queue: EdgeQueue,
) -> None:
    with pytest.raises(DeliveryError) as info:
        await queue.deliver(command(1).evolve({"pad": "x" * 2000}))
    assert info.value.status == 413 and not info.value.retryable
    waiting = asyncio.ensure_future(queue.pull(None, 10, 30))
    await asyncio.sleep(0)  # it runs up to its wait
    assert queue.stats.waiting == 1
    await queue.stop()
    assert (await asyncio.wait_for(waiting, 5)).last_offset is None
    assert (await queue.pull(None, 10, 30)).last_offset is None  # at once, not in 30 s
