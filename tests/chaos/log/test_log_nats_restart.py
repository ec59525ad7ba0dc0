"""Kill nats-server with SIGKILL and restart it while producers append: every append that
was acknowledged is in the stream afterwards, at its offset."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import JetStreamLog, LogUnavailable
from tests.servers import NatsServer

pytestmark = [pytest.mark.slow, pytest.mark.integration]

STREAM = "telemetry"
OUTAGES = 3
PRODUCERS = 5


def event(producer: int, n: int) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": f"{producer}-{n}", "source": "/chaos", "type": "t"},
        {"producer": producer, "n": n},
    )


async def test_killing_nats_loses_nothing_acked(nats_server: NatsServer) -> None:
    rnd = random.Random(7)
    acked: dict[int, str] = {}
    failures = 0
    stop = asyncio.Event()
    async with JetStreamLog(nats_server.url, request_timeout=2) as log:
        await log.create_stream(STREAM)

        async def produce(producer: int) -> None:
            nonlocal failures
            n = 0
            while not stop.is_set():
                batch = [event(producer, n + k) for k in range(rnd.randint(1, 3))]
                try:
                    offsets = await log.append(STREAM, batch)
                except LogUnavailable:
                    failures += 1
                    await asyncio.sleep(0.05)
                    continue
                assert not acked.keys() & set(offsets), "an offset was acknowledged twice"
                acked.update((o, e.id) for o, e in zip(offsets, batch, strict=True))
                n += len(batch)

        async def outages() -> None:
            for _ in range(OUTAGES):
                await asyncio.sleep(rnd.uniform(0.3, 0.8))
                await asyncio.to_thread(nats_server.kill)
                await asyncio.sleep(rnd.uniform(0.1, 0.6))
                await asyncio.to_thread(nats_server.start)
            before = len(acked)
            deadline = time.monotonic() + 20
            while len(acked) < before + 50:  # appends flow again after the last restart
                assert time.monotonic() < deadline, "appends did not resume after NATS came back"
                await asyncio.sleep(0.05)
            stop.set()

        async with asyncio.TaskGroup() as tg:
            for producer in range(PRODUCERS):
                tg.create_task(produce(producer))
            tg.create_task(outages())

        assert failures > 0, "no append ever saw an outage"
        stored: dict[int, str] = {}
        reader = log.reader(STREAM, "check")
        while batch := await reader.next_batch(1000, timeout=1):
            for offset, e in batch:
                stored[offset] = e.id
                await reader.ack(offset)  # else max_ack_pending stops delivery
    lost = {o: i for o, i in acked.items() if stored.get(o) != i}
    assert not lost, (
        f"{len(lost)} acknowledged events lost or changed, e.g. {list(lost.items())[:5]}"
    )
    assert len(acked) > 200
