"""Many clients, clients killed mid-flow, slow consumers: the broker stays correct and bounded."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import pytest

from headwater.mqtt.broker import BrokerConfig, Listener, MqttBroker
from headwater.mqtt.packets import (
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Packet,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Will,
    encode,
)
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

V5 = ProtocolVersion.MQTT5
V311 = ProtocolVersion.MQTT311


class Client:
    """A minimal asyncio MQTT client on raw streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, version: ProtocolVersion
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.version = version
        self.decoder = Decoder(server=False, version=version)

    @classmethod
    async def connect(
        cls, port: int, client_id: str, version: ProtocolVersion = V5, **fields: object
    ) -> tuple[Client, Connack]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer, version)
        client.send(Connect(client_id=client_id, **fields))  # type: ignore[arg-type]
        connack = await client.recv()
        assert isinstance(connack, Connack) and connack.reason_code == 0, connack
        return client, connack

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet, self.version))

    async def recv(self, wait: float = 10) -> Packet:
        async with asyncio.timeout(wait):
            while True:
                packet = self.decoder.next_packet()
                if packet is not NEED_DATA:
                    return packet  # type: ignore[return-value]
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed")
                self.decoder.receive_data(data)

    def kill(self) -> None:
        """Drop the TCP connection at once (RST), like a device losing power."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.writer.transport.abort()
        self.writer.close()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _config(**limits: object) -> BrokerConfig:
    return BrokerConfig(listeners=(Listener(port=0),), **limits)  # type: ignore[arg-type]


async def test_thousand_concurrent_clients(tmp_path) -> None:  # type: ignore[no-untyped-def]
    n = 1000
    async with MqttBroker(_config()) as broker:
        port = broker.port()

        async def one(i: int) -> bytes:
            client, _ = await Client.connect(port, f"c{i}", V5 if i % 2 else V311)
            client.send(Subscribe(1, ((f"load/{i}", SubscriptionOptions(qos=1)),)))
            assert isinstance(await client.recv(), Suback)
            client.send(Publish(f"load/{(i + 1) % n}", f"from {i}".encode(), 1, packet_id=2))
            got: bytes | None = None
            acked = False
            while got is None or not acked:
                packet = await client.recv(30)
                if isinstance(packet, Puback):
                    acked = True
                elif isinstance(packet, Publish):
                    got = packet.payload
                    client.send(Puback(packet.packet_id))  # type: ignore[arg-type]
            # Hold the connection until everybody got theirs.
            await barrier.wait()
            await client.close()
            return got

        barrier = asyncio.Barrier(n)
        results = await asyncio.gather(*(one(i) for i in range(n)))
        assert results == [f"from {(i - 1) % n}".encode() for i in range(n)]
        assert broker.stats.connections_total == n
        assert broker.stats.messages_received == n


async def test_clients_killed_mid_qos2_flow() -> None:
    n = 100
    session = Properties(session_expiry_interval=600)
    async with MqttBroker(_config()) as broker:
        port = broker.port()
        subs = []
        for i in range(n):
            sub, _ = await Client.connect(port, f"sub{i}", clean_start=False, properties=session)
            sub.send(Subscribe(1, ((f"q2/{i}", SubscriptionOptions(qos=2)),)))
            await sub.recv()
            subs.append(sub)
        pubs = []
        for i in range(n):
            pub, _ = await Client.connect(port, f"pub{i}", clean_start=False, properties=session)
            pub.send(Publish(f"q2/{i}", f"m{i}".encode(), 2, packet_id=9))
            assert await pub.recv() == Pubrec(9)
            pubs.append(pub)
        # Every subscriber receives its PUBLISH; half die before PUBREC, half after
        # PUBREC (so the broker is waiting for their PUBCOMP). Every publisher dies
        # before sending PUBREL.
        first_ids = []
        for i, sub in enumerate(subs):
            packet = await sub.recv()
            assert isinstance(packet, Publish) and packet.payload == f"m{i}".encode()
            first_ids.append(packet.packet_id)
            if i % 2:
                sub.send(Pubrec(packet.packet_id))  # type: ignore[arg-type]
                assert await sub.recv() == Pubrel(packet.packet_id)  # type: ignore[arg-type]
            sub.kill()
        for pub in pubs:
            pub.kill()
        await wait_until(lambda: not broker.connected_clients)
        # Publishers come back and finish with PUBREL: PUBCOMP, and no second delivery.
        for i in range(n):
            pub, connack = await Client.connect(
                port, f"pub{i}", clean_start=False, properties=session
            )
            assert connack.session_present
            pub.send(Publish(f"q2/{i}", f"m{i}".encode(), 2, dup=True, packet_id=9))
            assert await pub.recv() == Pubrec(9)
            pub.send(Pubrel(9))
            assert await pub.recv() == Pubcomp(9)
            await pub.close()
        # Subscribers come back: the interrupted flows resume where they stopped.
        for i in range(n):
            sub, connack = await Client.connect(
                port, f"sub{i}", clean_start=False, properties=session
            )
            assert connack.session_present
            packet = await sub.recv()
            if i % 2:
                assert packet == Pubrel(first_ids[i])  # type: ignore[arg-type]
                sub.send(Pubcomp(first_ids[i]))  # type: ignore[arg-type]
            else:
                assert isinstance(packet, Publish)
                assert (packet.dup, packet.packet_id, packet.payload) == (
                    True,
                    first_ids[i],
                    f"m{i}".encode(),
                )
                sub.send(Pubrec(packet.packet_id))  # type: ignore[arg-type]
                assert await sub.recv() == Pubrel(packet.packet_id)  # type: ignore[arg-type]
                sub.send(Pubcomp(packet.packet_id))  # type: ignore[arg-type]
            with pytest.raises(TimeoutError):
                await sub.recv(0.05)  # exactly once: nothing else
            await sub.close()
        await asyncio.sleep(0.1)
        for i in range(n):
            assert not broker.sessions[f"sub{i}"].inflight
            assert not broker.sessions[f"pub{i}"].incoming_qos2


async def test_slow_subscriber_does_not_stall_others() -> None:
    total = 20_000
    config = _config(max_write_buffer=256 * 1024, max_queued_messages=100, max_inflight=10)
    async with MqttBroker(config) as broker:
        port = broker.port()
        # The slow ones never read: one at QoS 0, one at QoS 1 with a persistent session.
        stuck0, _ = await Client.connect(port, "stuck0")
        stuck0.send(Subscribe(1, (("fire/#", SubscriptionOptions(qos=0)),)))
        await stuck0.recv()
        stuck1, _ = await Client.connect(
            port, "stuck1", properties=Properties(session_expiry_interval=60)
        )
        stuck1.send(Subscribe(1, (("fire/#", SubscriptionOptions(qos=1)),)))
        await stuck1.recv()
        fast, _ = await Client.connect(port, "fast")
        fast.send(Subscribe(1, (("fire/#", SubscriptionOptions(qos=0)),)))
        await fast.recv()
        pub, _ = await Client.connect(port, "pub")
        payload = b"x" * 1000  # 20 MB per subscriber: far beyond the kernel's socket buffers

        async def produce() -> None:
            for i in range(total):
                pub.send(
                    Publish("fire/hose", payload + str(i).encode(), 1, packet_id=i % 60000 + 1)
                )
                if i % 500 == 0:
                    await pub.writer.drain()
            await pub.writer.drain()

        async def drain_acks() -> None:
            acks = 0
            while acks < total:
                assert isinstance(await pub.recv(20), Puback)
                acks += 1

        async def consume() -> int:
            count = 0
            while count < total:
                packet = await fast.recv(20)
                assert isinstance(packet, Publish)
                count += 1
            return count

        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce())
            tg.create_task(drain_acks())
            consumed = tg.create_task(asyncio.wait_for(consume(), 60))
        assert consumed.result() == total
        # The stalled subscribers cost bounded memory; every drop is counted.
        assert broker.stats.dropped_slow_consumer > 0
        session = broker.sessions["stuck1"]
        assert len(session.inflight) <= 10
        assert len(session.queue) <= 100
        assert session.dropped == total - len(session.inflight) - len(session.queue)
        # Bytes queued towards any client stay near the limit (plus one burst).
        for conn in broker._connections:
            assert conn.link.buffered() <= 256 * 1024 + 2 * 1024 * 1024
        for client in (stuck0, stuck1, fast, pub):
            client.writer.transport.abort()
            await client.close()


class StuckClient:
    """A client that connects (over TCP or WebSocket), subscribes, then never reads.

    Its receive buffer is made small, so the broker's writes to it soon stall.
    """

    def __init__(self, writer: asyncio.StreamWriter, websocket: bool) -> None:
        self.writer = writer
        self.websocket = websocket

    @classmethod
    async def connect(cls, port: int, websocket: bool) -> StuckClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        if websocket:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n".encode()
            )
            answer = await reader.readuntil(b"\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 101"), answer
        return cls(writer, websocket)

    def send(self, packet: Packet) -> None:
        data = encode(packet, V311)
        if self.websocket:
            # [RFC 6455 5.3] a client masks every frame; one binary frame per packet.
            mask = os.urandom(4)
            size = len(data)
            header = b"\x82" + (
                bytes([0x80 | size])
                if size < 126
                else bytes([0x80 | 126]) + struct.pack(">H", size)
            )
            data = header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(data)

    def close(self) -> None:
        self.writer.transport.abort()


@pytest.mark.parametrize("websocket", [False, True], ids=["tcp", "websocket"])
@pytest.mark.parametrize("closed_by", ["keepalive", "disconnect"])
async def test_a_client_that_stops_reading_is_closed(websocket: bool, closed_by: str) -> None:
    # A client whose socket never drains is closed like any other (keepalive
    # timeout, broker.disconnect): its will is published and it is gone, instead
    # of a connection and its task stuck behind a write forever.
    config = BrokerConfig(
        listeners=(Listener(port=0), Listener(port=0, websocket=True, path="/mqtt"))
    )
    async with MqttBroker(config) as broker:
        watch, _ = await Client.connect(broker.port(0), "watch", V311)
        watch.send(Subscribe(1, (("will/#", SubscriptionOptions(qos=0)),)))
        assert isinstance(await watch.recv(), Suback)
        stuck = await StuckClient.connect(broker.port(1 if websocket else 0), websocket)
        keep_alive = 1 if closed_by == "keepalive" else 0
        stuck.send(Connect(client_id="stuck", keep_alive=keep_alive, will=Will("will/stuck", b"x")))
        stuck.send(Subscribe(1, (("big", SubscriptionOptions(qos=0)),)))
        await wait_until(lambda: broker.online("stuck") is not None, what="stuck connected")
        pub, _ = await Client.connect(broker.port(0), "pub", V311)
        # Publish until the broker drops messages for it: its writes have stalled.
        while not broker.stats.dropped_slow_consumer:
            for _ in range(20):
                pub.send(Publish("big", b"x" * 60_000, 0))
            await pub.writer.drain()
            await asyncio.sleep(0)
        if closed_by == "disconnect":
            assert broker.disconnect(client_id="stuck") == 1
        will = await watch.recv(20)
        assert isinstance(will, Publish) and will.topic == "will/stuck"
        await wait_until(
            lambda: not any(c.client_id == "stuck" for c in broker._connections),
            what="the stuck connection gone",
        )
        assert "stuck" not in broker.connected_clients
        stuck.close()
        for client in (watch, pub):
            await client.close()
