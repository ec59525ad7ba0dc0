from __future__ import annotations

import aiohttp
import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import (
    AiohttpTransport,
    Channel,
    DeliverySpec,
    HttpSink,
    Subscription,
    new_session,
)
from tests.helpers import Answer, Receiver, wait_until

from .conftest import StartReceiver, reply_with

pytestmark = pytest.mark.integration


def event(i: int) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "/c",
            "type": "order.created",
            "datacontenttype": "application/json",
        },
        {"n": i},
    )


def answer(e: CloudEvent, r: Receiver) -> Answer:
    return reply_with(e.evolve({"type": "order.checked", "id": f"checked-{e.id}"}))


async def test_every_subscription_gets_every_event_and_replies_go_to_reply(
    receiver: StartReceiver,
) -> None:
    checker, auditor, replies = await receiver(answer), await receiver(), await receiver()
    flaky_calls = 0

    def flaky_reply(e: CloudEvent, r: Receiver) -> Answer:
        nonlocal flaky_calls
        flaky_calls += 1
        return (503, {}, b"busy") if flaky_calls == 1 else (202, {}, b"")

    flaky = await receiver(flaky_reply)
    async with new_session() as session, Channel.in_memory("default", "orders") as channel:

        def http(r: Receiver) -> HttpSink:
            return HttpSink(r.url, transport=AiohttpTransport(session))

        fast = DeliverySpec(retry=3, backoff_delay=0.01)
        await channel.subscribe(Subscription("check", http(checker), reply=http(replies)))
        await channel.subscribe(Subscription("audit", http(auditor)))
        retried = Subscription("retry", http(checker), reply=http(flaky), delivery=fast)
        await channel.subscribe(retried)
        await channel.accept([event(i) for i in range(10)])

        assert sorted(int(e.id) for e in await auditor.wait_for(10)) == list(range(10))
        got = await replies.wait_for(10)
        assert {e.type for e in got} == {"order.checked"}
        await flaky.wait_for(10)
        # The reply destination refused once: the whole delivery was retried, so
        # the subscriber saw one event twice (at least once).
        await checker.wait_for(21)
        await wait_until(lambda: retried.stats.delivered == 10)
        assert retried.stats.retried == 1


async def test_subscription_to_a_dead_subscriber_dead_letters(receiver: StartReceiver) -> None:
    dls = await receiver()
    async with aiohttp.ClientSession() as session, Channel.in_memory("default", "c") as channel:
        sub = Subscription(
            "s",
            HttpSink("http://127.0.0.1:9/", transport=AiohttpTransport(session)),
            delivery=DeliverySpec(
                retry=1,
                backoff_delay=0.01,
                dead_letter_sink=HttpSink(dls.url, transport=AiohttpTransport(session)),
            ),
        )
        await channel.subscribe(sub)
        await channel.accept([event(1)])
        (dead,) = await dls.wait_for(1)
    assert dead["knativeerrordest"] == "http://127.0.0.1:9/"
    assert "knativeerrorcode" not in dead  # no response at all
