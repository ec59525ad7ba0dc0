"""The uplink against an in-process receiver: what a restart of run() counts.

The receiver is a :class:`Remote` whose ``send`` answers in process (binary
mode, one event per request), so a test decides exactly which requests wait.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.eventing._http1 import Http1Client
from headwater.log import EARLIEST, MemoryLog, StreamConfig
from headwater.tiers._remote import Answer, Remote
from headwater.tiers.uplink import Uplink
from tests.helpers import wait_until

STREAM = "broker"
CONSUMER = "uplink"


def event(i: int) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": str(i), "source": "/s", "subject": "d1", "type": "t"},
        {"n": i},
    )


class HeldRemote(Remote):
    """Takes every event at once, except those whose id is in ``held``: their
    requests wait until ``release`` is set (a receiver slow on one request)."""

    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:9/", Http1Client(), format="binary", compression="none")
        self.held: set[str] = set()
        self.release = asyncio.Event()
        self.accepted: list[str] = []

    async def send(self, events: Sequence[CloudEvent], encoded: Sequence[bytes | None]) -> Answer:
        form = self.form
        started = asyncio.get_running_loop().time()
        (one,) = events
        if one.id in self.held:
            await self.release.wait()
        self.accepted.append(one.id)
        return Answer(202, form=form, started=started)


async def nothing_refused(event: CloudEvent, error: DeliveryError) -> None:
    raise AssertionError(f"event {event.id} refused: {error}")


def new_uplink(log: MemoryLog, remote: Remote) -> Uplink:
    # Unordered: events go over the two lanes in turn (1 and 3 on one, 2 on the other).
    return Uplink(
        log=log,
        stream=STREAM,
        consumer=CONSUMER,
        remote=remote,
        on_refused=nothing_refused,
        start=EARLIEST,
        ordering="unordered",
        lanes=2,
        linger=0,
        backoff=(0.01, 0.02),
    )


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_restart_after_acks_out_of_order_counts_no_retention_drop() -> None:
    """run() restarted in the same process (what the runtime's supervisor does after a
    failure) is handed back the unacknowledged events 1 and 3 first; 2, acknowledged
    out of order, is not among them, and that gap is not a retention drop."""
    log = MemoryLog()
    await log.create_stream(STREAM)
    remote = HeldRemote()
    remote.held = {"1"}
    uplink = new_uplink(log, remote)
    await log.append(STREAM, [event(1), event(2), event(3)])
    task = asyncio.create_task(uplink.run())
    await wait_until(lambda: remote.accepted == ["2"], what="2 accepted while 1 waits")
    await stop(task)
    info = await log.info(STREAM)
    assert info.consumer(CONSUMER).position == 0  # 2 acknowledged, 1 and 3 not

    remote.held.clear()
    remote.release.set()
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: sorted(remote.accepted) == ["1", "2", "3"], what="1 and 3 sent")
        await uplink.refresh()
        assert uplink.stats.dropped_unsent == 0
        await wait_until(lambda: uplink.stats.backlog_events == 0, what="backlog drained")
    finally:
        await stop(task)
    await log.close()


async def test_retention_drops_above_what_was_read_are_still_counted_after_a_restart() -> None:
    log = MemoryLog()
    await log.create_stream(STREAM, StreamConfig(max_events=3))
    remote = HeldRemote()
    uplink = new_uplink(log, remote)
    await log.append(STREAM, [event(1), event(2), event(3)])
    task = asyncio.create_task(uplink.run())
    await wait_until(lambda: len(remote.accepted) == 3, what="1 to 3 sent")
    await stop(task)
    # Stopped, the link cut: the stream keeps the newest 3 of 4..10.
    await log.append(STREAM, [event(i) for i in range(4, 11)])

    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: len(remote.accepted) == 6, what="8 to 10 sent")
        await uplink.refresh()
        assert sorted(remote.accepted[3:], key=int) == ["8", "9", "10"]
        assert uplink.stats.dropped_unsent == 4  # 4 to 7, never read
    finally:
        await stop(task)
    await log.close()
