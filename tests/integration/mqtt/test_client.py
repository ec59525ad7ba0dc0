"""The project's MQTT client against the embedded broker and against Debian's mosquitto."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from headwater.mqtt.broker import BrokerConfig, ClientInfo, Listener, MqttBroker, Refusal
from headwater.mqtt.client import (
    Client,
    ClientConfig,
    ConnectionLost,
    ConnectRefused,
    PublishRefused,
)
from headwater.mqtt.packets import Properties, ProtocolVersion, ReasonCode
from headwater.mqtt.session import Message as BrokerMessage
from tests.helpers import wait_until
from tests.servers import LOOPBACK, ManagedServer, find_executable, free_port

pytestmark = pytest.mark.integration

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])


@pytest.fixture
async def broker() -> AsyncIterator[MqttBroker]:
    async with MqttBroker(BrokerConfig(listeners=(Listener(port=0),))) as b:
        yield b


class Mosquitto(ManagedServer):
    name = "mosquitto"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = find_executable("mosquitto", "/usr/sbin/mosquitto")
        self.port = free_port()

    def _command(self, port: int) -> list[str]:
        config = self.data_dir / "mosquitto.conf"
        config.write_text(
            f"listener {port} {LOOPBACK}\nallow_anonymous true\nuser {getpass.getuser()}\n"
        )
        return [self.binary, "-c", str(config)]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as server:
        yield server


async def _next(client: Client) -> object:
    async for message in client.messages:
        return message
    raise AssertionError("no message")


@VERSIONS
async def test_publish_subscribe_and_explicit_acks(broker: MqttBroker, version) -> None:  # type: ignore[no-untyped-def]
    port = broker.port()
    async with Client("127.0.0.1", port, client_id="sub", version=version) as sub:
        assert await sub.subscribe("t/#", 2) == (ReasonCode.GRANTED_QOS_2,)
        async with Client(ClientConfig("127.0.0.1", port, "pub", version)) as pub:
            assert await pub.publish("t/a", b"one", qos=1) == ReasonCode.SUCCESS
            assert await pub.publish("t/b", b"two", qos=2) == ReasonCode.SUCCESS
        first = await _next(sub)
        second = await _next(sub)
        assert (first.topic, first.payload, first.qos) == ("t/a", b"one", 1)  # type: ignore[attr-defined]
        assert (second.topic, second.qos) == ("t/b", 2)  # type: ignore[attr-defined]
        session = broker.sessions["sub"]
        assert len(session.inflight) == 2  # nothing acked until the application says so
        await first.ack()  # type: ignore[attr-defined]
        await second.ack()  # type: ignore[attr-defined]
        await wait_until(lambda: not session.inflight)


@VERSIONS
async def test_an_unacked_message_comes_back_on_the_next_connection(
    broker: MqttBroker, version
) -> None:  # type: ignore[no-untyped-def]
    port = broker.port()
    config = ClientConfig(
        "127.0.0.1", port, "durable", version, clean_start=False, session_expiry=600
    )
    async with Client(config) as sub:
        await sub.subscribe("d/#", 1)
        await broker.publish("d/x", b"keep me", qos=1)
        message = await _next(sub)
        assert message.payload == b"keep me"  # type: ignore[attr-defined]
        # Lost before the append that would have come next: no ack.
    async with Client(config) as again:
        assert again.session_present
        resent = await _next(again)
        assert resent.payload == b"keep me" and resent.dup  # type: ignore[attr-defined]
        await resent.ack()  # type: ignore[attr-defined]


async def test_a_refusal_carries_its_reason_code() -> None:
    async def refuse(info: ClientInfo, message: BrokerMessage, pid: int | None, dup: bool):  # type: ignore[no-untyped-def]
        return Refusal(ReasonCode.QUOTA_EXCEEDED) if message.topic == "full" else None

    config = BrokerConfig(listeners=(Listener(port=0),))
    async with MqttBroker(config, on_publish=refuse) as b, Client("127.0.0.1", b.port()) as c:
        with pytest.raises(PublishRefused) as info:
            await c.publish("full", b"x", qos=1)
        assert info.value.reason_code == ReasonCode.QUOTA_EXCEEDED
        assert await c.publish("fine", b"x", qos=1) == ReasonCode.SUCCESS


async def test_the_brokers_receive_maximum_is_respected() -> None:
    acked: list[int] = []
    gate = asyncio.Event()

    async def slow(info: ClientInfo, message: BrokerMessage, pid: int | None, dup: bool) -> None:
        await gate.wait()
        acked.append(pid or 0)

    config = BrokerConfig(listeners=(Listener(port=0),), receive_maximum=2)
    async with MqttBroker(config, on_publish=slow) as b, Client("127.0.0.1", b.port()) as c:
        sends = [asyncio.ensure_future(c.publish("t", b"x", qos=1)) for _ in range(5)]
        await wait_until(lambda: c.conn.window_full)
        assert len(c.conn.session.inflight) == 2  # type: ignore[union-attr]
        gate.set()
        assert await asyncio.gather(*sends) == [ReasonCode.SUCCESS] * 5
        assert b.stats.protocol_errors == 0  # never more than 2 in flight: no 0x93


async def test_refused_connect_and_lost_connection() -> None:
    from headwater.mqtt.auth import PasswordFile

    passwords = PasswordFile()
    passwords.add_user("u", "p")
    config = BrokerConfig(listeners=(Listener(port=0),), passwords=passwords)
    async with MqttBroker(config) as b:
        with pytest.raises(ConnectRefused) as info:
            async with Client("127.0.0.1", b.port()):
                pass
        assert info.value.reason_code == ReasonCode.NOT_AUTHORIZED
        client = Client("127.0.0.1", b.port(), username="u", password=b"p")
        await client.__aenter__()
    # The broker stopped under the client: calls fail, iteration ends with the error.
    await client.wait_closed()
    with pytest.raises(ConnectionLost):
        await client.publish("t", b"x", qos=1)
    with pytest.raises(ConnectionLost):
        await _next(client)
    await client.close()


@VERSIONS
async def test_against_mosquitto(mosquitto: Mosquitto, version) -> None:  # type: ignore[no-untyped-def]
    port = mosquitto.port
    async with (
        Client("127.0.0.1", port, client_id="m-sub", version=version, auto_ack=True) as sub,
        Client("127.0.0.1", port, client_id="m-pub", version=version, keep_alive=1) as pub,
    ):
        await sub.subscribe([("m/#", 2)])
        for qos in (0, 1, 2):
            await pub.publish("m/x", f"q{qos}".encode(), qos=qos)
        got = [await _next(sub) for _ in range(3)]
        assert [m.payload for m in got] == [b"q0", b"q1", b"q2"]  # type: ignore[attr-defined]
        # keep_alive=1: an idle client pings by itself (and so stays connected).
        before = pub.conn.last_sent
        await wait_until(lambda: pub.conn.last_sent > before)
        assert await pub.publish("m/y", b"alive", qos=1, properties=Properties()) == 0
