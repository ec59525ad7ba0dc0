"""A PublishHook sees the selected PUBLISHes of one read as one batch.

What a client writes in one go reaches the hook in one call (one durable
append in Headwater); outcomes take effect per message and in order; a topic
the hook does not select never reaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from headwater.mqtt.broker import BrokerConfig, ClientInfo, Listener, Refusal
from headwater.mqtt.config import Hooked, Outcome
from headwater.mqtt.packets import (
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    encode,
)
from tests.integration.mqtt._clients import V5, V311, Raw
from tests.integration.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.integration


class Hook:
    def __init__(self, answers: dict[bytes, Outcome] | None = None) -> None:
        self.calls: list[list[bytes]] = []
        self.answers = answers or {}

    def selects(self, topic: str) -> bool:
        return topic.startswith("hooked/")

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> list[Outcome]:
        self.calls.append([h.message.payload for h in batch])
        await asyncio.sleep(0)
        return [self.answers.get(h.message.payload) for h in batch]


def _burst(raw: Raw, version, topic: str, count: int, first_pid: int = 1) -> None:  # type: ignore[no-untyped-def]
    raw.send_bytes(
        b"".join(
            encode(Publish(topic, str(n).encode(), 1, packet_id=first_pid + n), version)
            for n in range(count)
        )
    )


@pytest.mark.parametrize("version", [V311, V5])
def test_one_read_is_one_call_and_acks_keep_their_order(make_broker: MakeBroker, version) -> None:  # type: ignore[no-untyped-def]
    hook = Hook({b"3": Refusal(ReasonCode.PAYLOAD_FORMAT_INVALID)})
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),)), hook=hook)
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    sub.send(Subscribe(1, (("#", SubscriptionOptions(qos=0)),)))
    assert isinstance(sub.recv(), Suback)
    client = Raw(broker.port(), version)
    client.connect("dev")
    _burst(client, version, "hooked/t", 8)
    acks = [client.recv() for _ in range(8)]
    refused = ReasonCode.PAYLOAD_FORMAT_INVALID if version == V5 else ReasonCode.SUCCESS
    assert acks == [Puback(n + 1, refused if n == 3 else ReasonCode.SUCCESS) for n in range(8)]
    # Eight messages, in few calls (one per read), in order.
    assert [p for call in hook.calls for p in call] == [str(n).encode() for n in range(8)]
    assert len(hook.calls) < 8
    routed = [p.payload for p in sub.recv_all() if isinstance(p, Publish)]
    assert routed == [b"0", b"1", b"2", b"4", b"5", b"6", b"7"]


def test_unselected_topics_never_reach_the_hook(make_broker: MakeBroker) -> None:
    hook = Hook()
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),)), hook=hook)
    client = Raw(broker.port(), V5)
    client.connect("dev")
    _burst(client, V5, "plain/t", 5)
    assert [client.recv() for _ in range(5)] == [Puback(n + 1) for n in range(5)]
    assert hook.calls == []


def test_a_311_refusal_for_now_leaves_the_rest_of_the_batch_unacknowledged(
    make_broker: MakeBroker,
) -> None:
    hook = Hook({b"2": ReasonCode.QUOTA_EXCEEDED})
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),)), hook=hook)
    client = Raw(broker.port(), V311)
    client.connect("dev", clean_start=False)
    _burst(client, V311, "hooked/t", 5)
    assert client.recv() == Puback(1)
    assert client.recv() == Puback(2)
    # The third is refused for now: the connection closes, the rest is resent later.
    assert client.is_closed()
