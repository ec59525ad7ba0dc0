"""headwater.natsclient against a real nats-server: direct subscriptions, their order,
headers, errors, unsubscribing, acks, and the nats-py internal they rely on."""

from __future__ import annotations

import asyncio
import inspect

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from headwater import natsclient
from tests.helpers import wait_until
from tests.servers import NatsServer

pytestmark = pytest.mark.integration


def test_the_nats_py_method_it_overrides_has_the_signature_it_expects() -> None:
    parameters = list(inspect.signature(NatsClient._process_msg).parameters)
    assert parameters == ["self", "sid", "subject", "reply", "data", "headers"]
    assert inspect.iscoroutinefunction(NatsClient._process_headers)
    assert "_direct" not in vars(NatsClient)


async def test_messages_and_headers_reach_the_function_in_order(nats_server: NatsServer) -> None:
    nc = await natsclient.connect(nats_server.url)
    got: list[tuple[str, bytes, dict[str, str] | None]] = []
    try:
        await natsclient.subscribe(nc, "in.*", lambda m: got.append((m.subject, m.data, m.headers)))
        await nc.publish("in.a", b"1")
        await nc.publish("in.b", b"2", headers={"Kind": "second"})
        await nc.publish("in.a", b"3", reply="back")
        await wait_until(lambda: len(got) == 3, what="three messages")
    finally:
        await nc.close()
    assert got == [("in.a", b"1", None), ("in.b", b"2", {"Kind": "second"}), ("in.a", b"3", None)]


async def test_a_function_that_raises_is_reported_and_the_subscription_goes_on(
    nats_server: NatsServer,
) -> None:
    errors: list[Exception] = []

    async def error_cb(exc: Exception) -> None:
        errors.append(exc)

    nc = await natsclient.connect(nats_server.url, error_cb=error_cb)
    got: list[bytes] = []

    def handler(message: Msg) -> None:
        if message.data == b"bad":
            raise ValueError("refused")
        got.append(message.data)

    try:
        await natsclient.subscribe(nc, "in", handler)
        for data in (b"1", b"bad", b"2"):
            await nc.publish("in", data)
        await wait_until(lambda: got == [b"1", b"2"], what="the good messages")
    finally:
        await nc.close()
    assert [str(e) for e in errors] == ["refused"]


async def test_nothing_comes_after_unsubscribing(nats_server: NatsServer) -> None:
    nc = await natsclient.connect(nats_server.url)
    got: list[bytes] = []
    try:
        sub = await natsclient.subscribe(nc, "in", lambda m: got.append(m.data))
        await nc.publish("in", b"1")
        await wait_until(lambda: got == [b"1"], what="the first message")
        await sub.unsubscribe()
        seen: list[bytes] = []
        await natsclient.subscribe(nc, "in", lambda m: seen.append(m.data))
        await nc.publish("in", b"2")
        await wait_until(lambda: seen == [b"2"], what="the second subscription's message")
    finally:
        await nc.close()
    assert got == [b"1"]


async def test_a_plain_nats_py_client_gets_an_ordinary_callback(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    got: list[bytes] = []
    try:
        await natsclient.subscribe(nc, "in", lambda m: got.append(m.data))
        await nc.publish("in", b"1")
        await wait_until(lambda: got == [b"1"], what="the message")
    finally:
        await nc.close()


async def test_a_jetstream_message_handed_over_directly_can_be_acked(
    nats_server: NatsServer,
) -> None:
    nc = await natsclient.connect(nats_server.url)
    arrived: asyncio.Queue[Msg] = asyncio.Queue()
    try:
        js = nc.jetstream()
        await js.add_stream(name="S", subjects=["s"])
        await js.add_consumer("S", durable_name="c", ack_policy="explicit")
        await js.publish("s", b"event")
        await natsclient.subscribe(nc, "pulled", arrived.put_nowait)
        await nc.publish("$JS.API.CONSUMER.MSG.NEXT.S.c", b'{"batch": 1}', reply="pulled")
        message = await arrived.get()
        assert message.data == b"event"
        await message.ack()
        await nc.flush()

        async def acked() -> bool:
            info = await js.consumer_info("S", "c")
            return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1

        await wait_until(acked, what="the ack recorded")
    finally:
        await nc.close()
