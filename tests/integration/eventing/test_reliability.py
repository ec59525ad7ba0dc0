"""Delivery holds up against subscribers that fail, stall or loop, with real HTTP on loopback."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from headwater.cloudevents import CloudEvent, to_http
from headwater.eventing import (
    AiohttpTransport,
    Broker,
    DeliverySpec,
    HttpSink,
    Ingress,
    IngressServer,
    Trigger,
    new_session,
)
from headwater.log import MemoryLog
from tests.helpers import Answer, Receiver, wait_until

from .conftest import StartReceiver, reply_with

pytestmark = pytest.mark.integration


def event(i: int, **attrs: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "/load",
            "type": "reading",
            "datacontenttype": "application/json",
            **attrs,
        },
        {"n": i},
    )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_session() as s:
        yield s


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with MemoryLog() as log, Broker("default", "b", log) as b:
        yield b


def unavailable_for(seconds: float) -> tuple[list[float], object]:
    started: list[float] = []

    def behaviour(e: CloudEvent, r: Receiver) -> Answer:
        if not started:
            started.append(time.monotonic())
        if time.monotonic() - started[0] < seconds:
            return 503, {}, b"warming up"
        return 202, {}, b""

    return started, behaviour


async def outage_then_recovery(
    broker: Broker,
    session: aiohttp.ClientSession,
    receiver: StartReceiver,
    outage: float,
    count: int,
) -> Receiver:
    _, behaviour = unavailable_for(outage)
    r = await receiver(behaviour)
    trigger = Trigger(
        "ordered",
        HttpSink(r.url, transport=AiohttpTransport(session)),
        ordering="ordered",
        # Enough linear retries to outlast the outage.
        delivery=DeliverySpec(
            retry=int(outage / 0.1) + 20, backoff_policy="linear", backoff_delay=0.05
        ),
    )
    await broker.add_trigger(trigger)
    for i in range(count):
        await broker.accept([event(i, partitionkey=f"device-{i % 4}")])
    got = await r.wait_for(count, within=outage + 30)
    await wait_until(lambda: trigger.stats.delivered == count)
    assert trigger.stats.dropped == trigger.stats.dead_lettered == 0
    assert trigger.stats.retried > 0
    # Every event, none lost, and in order within each partition key.
    assert sorted(int(e.id) for e in got) == list(range(count))
    for key in range(4):
        ids = [int(e.id) for e in got if e["partitionkey"] == f"device-{key}"]
        assert ids == sorted(ids)
    return r


async def test_subscriber_down_then_up_everything_delivered_in_order(
    broker: Broker, session: aiohttp.ClientSession, receiver: StartReceiver
) -> None:
    await outage_then_recovery(broker, session, receiver, outage=2.0, count=200)


@pytest.mark.slow
async def test_subscriber_503_for_20_seconds(
    broker: Broker, session: aiohttp.ClientSession, receiver: StartReceiver
) -> None:
    # The shape: 20 s of 503, with Knative-like exponential backoff capped
    # by the retry budget (retries keep coming at most every 2 s here).
    _, behaviour = unavailable_for(20.0)
    r = await receiver(behaviour)
    trigger = Trigger(
        "ordered",
        HttpSink(r.url, transport=AiohttpTransport(session)),
        ordering="ordered",
        delivery=DeliverySpec(retry=40, backoff_policy="linear", backoff_delay=0.5),
    )
    await broker.add_trigger(trigger)
    await broker.accept([event(i) for i in range(300)])
    got = await r.wait_for(300, within=90)
    assert [int(e.id) for e in got] == list(range(300))  # globally ordered (no partitionkey)
    assert trigger.stats.dropped == 0


async def test_poison_event_is_dead_lettered_while_others_flow(
    broker: Broker, session: aiohttp.ClientSession, receiver: StartReceiver
) -> None:
    def poison(e: CloudEvent, r: Receiver) -> Answer:
        if e.id == "13":
            return 400, {}, b'{"error": "cannot parse reading 13"}'
        return 202, {}, b""

    subscriber = await receiver(poison)
    dls = await receiver()
    trigger = Trigger(
        "t",
        HttpSink(subscriber.url, transport=AiohttpTransport(session)),
        delivery=DeliverySpec(
            retry=3,
            backoff_delay=0.01,
            dead_letter_sink=HttpSink(dls.url, transport=AiohttpTransport(session)),
            dead_letter_uri=dls.url,
        ),
    )
    await broker.add_trigger(trigger)
    await broker.accept([event(i) for i in range(100)])
    (dead,) = await dls.wait_for(1)
    got = await subscriber.wait_for(99)
    assert sorted(int(e.id) for e in got) == [i for i in range(100) if i != 13]
    assert dead.id == "13"
    assert dead["knativeerrordest"] == subscriber.url
    assert dead["knativeerrorcode"] == "400"
    assert base64.b64decode(dead["knativeerrordata"]) == b'{"error": "cannot parse reading 13"}'
    assert orjson.loads(dead.data_bytes()) == {"n": 13}
    assert len(subscriber.requests) == 100  # a 400 is not retried
    await wait_until(lambda: (trigger.stats.dead_lettered, trigger.stats.delivered) == (1, 99))


async def test_retryable_poison_is_dead_lettered_after_its_attempts(
    broker: Broker, session: aiohttp.ClientSession, receiver: StartReceiver
) -> None:
    def always_500_for_7(e: CloudEvent, r: Receiver) -> Answer:
        return (500, {}, b"boom") if e.id == "7" else (202, {}, b"")

    subscriber = await receiver(always_500_for_7)
    dls = await receiver()
    trigger = Trigger(
        "t",
        HttpSink(subscriber.url, transport=AiohttpTransport(session)),
        delivery=DeliverySpec(
            retry=2,
            backoff_delay=0.01,
            dead_letter_sink=HttpSink(dls.url, transport=AiohttpTransport(session)),
        ),
    )
    await broker.add_trigger(trigger)
    await broker.accept([event(i) for i in range(20)])
    (dead,) = await dls.wait_for(1)
    await subscriber.wait_for(19)
    assert dead["knativeerrorcode"] == "500"
    assert len(subscriber.requests) == 19 + 3
    await wait_until(lambda: trigger.stats.failed_attempts == 3 and trigger.stats.retried == 2)


async def test_reply_loop_over_http_terminates_by_ttl(
    broker: Broker, session: aiohttp.ClientSession, receiver: StartReceiver
) -> None:
    def echo(e: CloudEvent, r: Receiver) -> Answer:
        # A reply that matches the subscriber's own Trigger: a loop.
        return reply_with(e.evolve({"id": f"{e.id}'"}))

    subscriber = await receiver(echo)
    trigger = Trigger(
        "loop",
        HttpSink(subscriber.url, transport=AiohttpTransport(session)),
        attributes={"type": "reading"},
    )
    await broker.add_trigger(trigger)
    async with IngressServer(Ingress(lambda ns, n: broker).app()) as ingress:
        headers, body = to_http(event(1))
        async with session.post(ingress.url + "/default/b", headers=headers, data=body) as resp:
            assert resp.status == 202
        await subscriber.wait_for(255, within=60)
        await wait_until(lambda: broker.stats.ttl_dropped == 1)
        # Nothing more under way: the 255th delivery's reply was the one dropped.
        await wait_until(lambda: trigger.stats.delivered == 255 and not trigger.stats.in_flight)
    assert len(subscriber.accepted) == 255  # the default TTL, then the loop is cut
    ttls = [int(e["knativebrokerttl"]) for e in subscriber.accepted]
    assert ttls == list(range(255, 0, -1))
