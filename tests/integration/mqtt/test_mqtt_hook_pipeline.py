"""Hooked PUBLISHes are pipelined, and still take effect in arrival order.

The ``on_publish`` hook (a durable append in Headwater) runs for several
PUBLISHes of one connection at once; PUBACKs and routing follow the order the
PUBLISHes arrived in even when later hooks finish first, and any other packet
(here PINGREQ, SUBSCRIBE) is handled only after earlier PUBLISHes settled.
"""

from __future__ import annotations

import asyncio

import pytest

from headwater.mqtt.broker import ClientInfo
from headwater.mqtt.packets import (
    Pingreq,
    Pingresp,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
)
from headwater.mqtt.session import Message
from tests.integration.mqtt._clients import V5, V311, Raw
from tests.integration.mqtt.conftest import MakeBroker

DELAYS = {b"0": 0.4, b"1": 0.1, b"2": 0.3, b"3": 0.0}
"""Hook time per payload: later PUBLISHes finish before earlier ones."""


@pytest.mark.parametrize("version", [V311, V5])
def test_pipelined_hooks_ack_and_route_in_arrival_order(make_broker: MakeBroker, version) -> None:  # type: ignore[no-untyped-def]
    running: list[bytes] = []
    peak = 0

    async def on_publish(
        info: ClientInfo, message: Message, packet_id: int | None, dup: bool
    ) -> ReasonCode | None:
        nonlocal peak
        running.append(message.payload)
        peak = max(peak, len(running))
        await asyncio.sleep(DELAYS[message.payload])
        running.remove(message.payload)
        return ReasonCode.QUOTA_EXCEEDED if message.payload == b"2" else None

    broker = make_broker(on_publish=on_publish)
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    sub.send(Subscribe(1, (("p", SubscriptionOptions(qos=0)),)))
    assert isinstance(sub.recv(), Suback)
    client = Raw(broker.port(), version)
    client.connect("dev", clean_start=False)
    for n in range(3):
        client.send(Publish("p", str(n).encode(), 1, packet_id=n + 1))
    client.send(Pingreq())  # waits for the three PUBLISHes before it
    client.send(Publish("p", b"3", 1, packet_id=4))
    if version == V5:
        got = [client.recv() for _ in range(5)]
        assert got == [
            Puback(1),
            Puback(2),
            Puback(3, ReasonCode.QUOTA_EXCEEDED),
            Pingresp(),
            Puback(4),
        ]
    else:
        # 3.1.1 cannot refuse: the connection closes after the acks before the refusal.
        assert [client.recv(), client.recv()] == [Puback(1), Puback(2)]
        assert client.is_closed()
    assert peak == 3  # the hooks ran at once, not one after the other
    routed = [p.payload for p in sub.recv_all()]  # type: ignore[union-attr]
    assert routed == ([b"0", b"1", b"3"] if version == V5 else [b"0", b"1"])
