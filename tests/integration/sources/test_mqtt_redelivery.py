"""A QoS 1 PUBLISH resent with DUP=1 after its first copy was appended is one event.

A raw MQTT client (our codec over an asyncio socket) publishes, drops the
connection before the PUBACK can reach it, reconnects to its session and
resends the same PUBLISH with DUP=1, as every MQTT client does
[MQTT-4.4.0-1]. The log must hold the message once. The opposite cases are
checked too: a resend whose first append failed is appended, and a new
message reusing the packet id with the same payload is a new event. The last
test does the same for MqttSource, with the embedded broker as the external
broker resending its unacknowledged messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headwater import tracing
from headwater.cloudevents import CloudEvent
from headwater.log import EncodedEvents, encode_record
from headwater.mqtt.broker import BrokerConfig, ClientInfo, Listener, MqttBroker
from headwater.mqtt.client import ClientConfig
from headwater.mqtt.config import Hooked
from headwater.mqtt.packets import (
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Packet,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    ReasonCode,
    encode,
)
from headwater.mqtt.session import Message
from headwater.sources.mapping import Mapping
from headwater.sources.mqtt import MqttSourceRunner
from headwater.sources.mqttbroker import MqttBrokerSource
from headwater.tracing import Tracer, TracingConfig
from tests.helpers import wait_until

TIMEOUT = 10.0
V5 = ProtocolVersion.MQTT5
SESSION = 3600  # the source keeps a persistent session at the broker


class Client:
    """One MQTT connection on an asyncio socket, packet by packet."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = Decoder(server=False, version=V5)

    @classmethod
    @asynccontextmanager
    async def connect(cls, port: int, client_id: str) -> AsyncIterator[Client]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        try:
            # A persistent session, so that the broker keeps it across reconnects.
            props = Properties(session_expiry_interval=300)
            client.send(Connect(client_id, False, 60, None, None, None, props))
            connack = await client.recv()
            assert isinstance(connack, Connack) and connack.reason_code == 0, connack
            yield client
        finally:
            writer.close()
            await writer.wait_closed()

    def send(self, packet: Packet) -> None:
        self.writer.write(encode(packet, V5))

    async def recv(self) -> Packet:
        async with asyncio.timeout(TIMEOUT):
            while (packet := self.decoder.next_packet()) is NEED_DATA:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the broker")
                self.decoder.receive_data(data)
        return packet  # type: ignore[return-value]


class Log:
    """The sink: appends after ``delay`` seconds; ``fail`` makes the next append fail."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.delay = 0.0
        self.fail = False
        self.started = asyncio.Event()

    async def append(self, event: CloudEvent) -> None:
        self.started.set()
        await asyncio.sleep(self.delay)
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        self.events.append(event)


@asynccontextmanager
async def source(log: Log) -> AsyncIterator[MqttBrokerSource]:
    config = BrokerConfig(listeners=(Listener(port=0),))
    async with MqttBrokerSource(
        config, Mapping.compile(), log.append, device_events=False, append_timeout=5.0
    ) as src:
        yield src


def publish(pid: int, payload: bytes, *, dup: bool = False) -> Publish:
    return Publish("sensors/s1/climate", payload, 1, False, dup, pid)


async def test_dup_resend_after_a_lost_puback_is_one_event() -> None:
    log = Log()
    async with source(log) as src:
        port = src.broker.port()
        log.delay = 0.3
        async with Client.connect(port, "s1") as first:
            first.send(publish(7, b'{"t": 21}'))
            await log.started.wait()
        # The connection is gone before the append finished: no PUBACK reached the device.
        await wait_until(lambda: len(log.events) == 1)
        log.delay = 0.0
        async with Client.connect(port, "s1") as again:
            again.send(publish(7, b'{"t": 21}', dup=True))
            assert await again.recv() == Puback(7)
            # The packet id is free again: the same reading as a new message is a new event.
            again.send(publish(7, b'{"t": 21}'))
            assert await again.recv() == Puback(7)
    assert len(log.events) == 2
    assert log.events[0].id != log.events[1].id
    assert src.stats.duplicates_suppressed == 1
    assert src.stats.events == 2


async def test_dup_resend_while_the_first_append_runs_waits_for_it() -> None:
    log = Log()
    async with source(log) as src:
        port = src.broker.port()
        log.delay = 0.5
        async with Client.connect(port, "s2") as first:
            first.send(publish(3, b"reading"))
            await log.started.wait()
        # Reconnect at once (taking the session over) and resend while the append runs.
        async with Client.connect(port, "s2") as again:
            again.send(publish(3, b"reading", dup=True))
            assert await again.recv() == Puback(3)
            assert len(log.events) == 1  # acked only once the first copy was durable
    assert len(log.events) == 1
    assert src.stats.duplicates_suppressed == 1


async def test_dup_resend_of_a_refused_publish_is_appended() -> None:
    log = Log()
    async with source(log) as src:
        port = src.broker.port()
        log.fail = True
        async with Client.connect(port, "s3") as client:
            client.send(publish(9, b"x"))
            assert await client.recv() == Puback(9, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)
            client.send(publish(9, b"x", dup=True))
            assert await client.recv() == Puback(9)
            # A DUP with a different payload under the same id is not the same message.
            client.send(publish(10, b"a"))
            assert await client.recv() == Puback(10)
            client.send(publish(10, b"b", dup=True))
            assert await client.recv() == Puback(10)
    assert [e.data_bytes() for e in log.events] == [b"x", b"a", b"b"]
    assert src.stats.duplicates_suppressed == 0
    assert src.stats.append_failures == 1


async def test_a_batch_whose_append_never_finished_is_not_taken_as_appended() -> None:
    # The hook's task is cancelled (the broker stops) while the append runs: whether
    # the message reached the log is unknown, so its resend must be appended.
    log = Log()
    async with source(log) as src:
        log.delay = 30.0
        info = ClientInfo("s1", None, V5, "mqtt://127.0.0.1:1", "127.0.0.1:2")
        message = Message("sensors/s1/climate", b'{"t": 21}', 1)
        hook = asyncio.ensure_future(src(info, [Hooked(message, 7, False)]))
        await log.started.wait()
        hook.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hook
        log.delay = 0.0
        assert await src(info, [Hooked(message, 7, True)]) == [None]
    assert len(log.events) == 1  # the resend, appended
    assert src.stats.duplicates_suppressed == 0


async def test_mqtt_source_acks_a_dup_resend_without_appending_again() -> None:
    """MqttSource: a batch with one failed append is resent whole (DUP); one event each."""
    log = Log()
    failed: list[bytes] = []

    async def append(event: CloudEvent) -> None:
        data = event.data_bytes()
        if data == b"3" and not failed:
            failed.append(data)
            raise OSError("disk full")
        await log.append(event)

    async with MqttBroker(BrokerConfig(listeners=(Listener(port=0),))) as broker:
        config = ClientConfig(
            "127.0.0.1",
            broker.port(),
            client_id="headwater-dup",
            clean_start=False,
            session_expiry=SESSION,
        )
        runner = MqttSourceRunner(
            config, [("sensors/#", 1)], Mapping.compile(), append, max_backoff=0.2
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            await asyncio.wait_for(runner.connected.wait(), TIMEOUT)
            log.delay = 0.2  # the first append is slow, so the rest arrive as one batch
            for n in range(1, 6):
                await broker.publish("sensors/s1/climate", str(n).encode(), qos=1)
            await wait_until(lambda: len(log.events) == 5 and runner.stats.events == 5)
            task.cancel()
    assert sorted(e.data_bytes() for e in log.events) == [b"1", b"2", b"3", b"4", b"5"]
    assert runner.stats.append_failures == 1
    assert runner.stats.duplicates_suppressed >= 1  # 3's batch mates, resent with DUP=1
    assert runner.stats.events == 5


@pytest.mark.parametrize("version", [ProtocolVersion.MQTT5, ProtocolVersion.MQTT311])
async def test_mqtt_source_acks_bad_input_with_a_defined_outcome(version: ProtocolVersion) -> None:
    """Nothing stays unacked at the external broker (which would resend it forever)."""
    log = Log()
    mapping = Mapping.compile(topic_pattern="sensors/{device}/{metric}")
    async with MqttBroker(BrokerConfig(listeners=(Listener(port=0),))) as broker:
        config = ClientConfig(
            "127.0.0.1",
            broker.port(),
            "headwater-bad",
            version,
            clean_start=False,
            session_expiry=SESSION,
        )
        runner = MqttSourceRunner(
            config, [("sensors/#", 1)], mapping, log.append, max_event_size=100
        )
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            await asyncio.wait_for(runner.connected.wait(), TIMEOUT)
            await broker.publish("sensors/a/b", b"x" * 101, qos=1)  # too large
            await broker.publish("sensors/a/raw", b"\xff\xfe\x00\x80", qos=1)  # not UTF-8
            await broker.publish("sensors/a/b/c", b"{}", qos=1)  # outside the pattern
            await broker.publish(
                "sensors/a/ce", b"{}", qos=1, content_type="application/cloudevents+json"
            )
            await broker.publish("sensors/a/ok", b'{"t": 1}', qos=1)
            session = broker.sessions["headwater-bad"]
            # MQTT 3.1.1 carries no content type: there the "CloudEvent" is plain JSON.
            v5 = version == ProtocolVersion.MQTT5
            await wait_until(lambda: runner.stats.events == 3 - v5 and not session.inflight)
            task.cancel()
    stats = runner.stats
    assert (stats.too_large, stats.unmatched, stats.invalid) == (1, 1, int(v5))
    assert stats.append_failures == 0
    raw, ok = (e for e in log.events if e["metric"] in ("raw", "ok"))
    assert raw.datacontenttype == "application/octet-stream"
    assert raw.data_bytes() == b"\xff\xfe\x00\x80"
    assert ok["device"] == "a" and ok["metric"] == "ok"


async def test_mqtt_source_resumes_a_session_with_more_queued_than_its_inbox() -> None:
    """More messages than MqttClient's inbox arrive before the SUBACK of the resubscribe.

    A 3.1.1 session has no Receive Maximum, so the broker sends everything it
    queued at once; the source must consume while it resubscribes, or its
    reader blocks on the full inbox and never reads the SUBACK it waits for.
    """
    log = Log()
    queued = 1500
    config = BrokerConfig(
        listeners=(Listener(port=0),), max_inflight=2 * queued, max_queued_messages=2 * queued
    )
    async with MqttBroker(config) as broker:
        client = ClientConfig(
            "127.0.0.1",
            broker.port(),
            "headwater-inbox",
            ProtocolVersion.MQTT311,
            clean_start=False,
            session_expiry=SESSION,
        )
        runner = MqttSourceRunner(client, [("sensors/#", 1)], Mapping.compile(), log.append)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            await asyncio.wait_for(runner.connected.wait(), TIMEOUT)
            task.cancel()
        # Headwater is away: the broker queues for its session.
        for n in range(queued):
            await broker.publish("sensors/s1/climate", str(n).encode(), qos=1)
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(runner.run())
            await wait_until(lambda: len(log.events) >= queued)
            task.cancel()
    assert sorted(int(e.data_bytes()) for e in log.events) == list(range(queued))


async def test_the_publishes_of_one_write_are_appended_together() -> None:
    batches: list[list[CloudEvent]] = []

    async def emit_many(events: Sequence[CloudEvent]) -> None:
        batches.append(list(events))

    async def emit(event: CloudEvent) -> None:
        batches.append([event])

    config = BrokerConfig(listeners=(Listener(port=0),))
    async with (
        MqttBrokerSource(
            config, Mapping.compile(), emit, emit_many=emit_many, device_events=False
        ) as src,
        Client.connect(src.broker.port(), "s1") as device,
    ):
        device.writer.write(b"".join(encode(publish(n, b'{"n": %d}' % n), V5) for n in range(1, 9)))
        assert [await device.recv() for _ in range(8)] == [Puback(n) for n in range(1, 9)]
    # Every message once and in order, in fewer appends than messages (one per read).
    assert [e.data for batch in batches for e in batch] == [b'{"n": %d}' % n for n in range(1, 9)]
    assert len(batches) < 8
    assert src.stats.events == 8
    assert src.stats.appends == len(batches)
    assert src.stats.snapshot()["appends"] == len(batches)


async def test_a_batch_with_sampled_events_keeps_the_records_of_the_others() -> None:
    """At 1% sampling most batches of a busy client hold a sampled event: the
    batch still goes to the log encoded (only the sampled ones encoded again,
    with the context the head gave them), not re-encoded whole."""
    batches: list[Sequence[CloudEvent]] = []

    async def emit_many(events: Sequence[CloudEvent]) -> None:
        batches.append(events)

    async def emit(event: CloudEvent) -> None:
        batches.append([event])

    # Parent-based at ratio 0: exactly the messages with a sampled traceparent are.
    config = TracingConfig(endpoint="http://127.0.0.1:9/v1/traces", sampling=0.0)
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = Properties(user_properties=(("traceparent", parent),))
    sampled = {3, 6}

    def message(n: int) -> Publish:
        props = traced if n in sampled else Properties()
        return Publish("sensors/s1/climate", b'{"n": %d}' % n, 1, False, False, n, props)

    with tracing.installed(Tracer(config, exporter=InMemorySpanExporter())):
        async with (
            MqttBrokerSource(
                BrokerConfig(listeners=(Listener(port=0),)),
                Mapping.compile(),
                emit,
                emit_many=emit_many,
                device_events=False,
            ) as src,
            Client.connect(src.broker.port(), "s1") as device,
        ):
            device.writer.write(b"".join(encode(message(n), V5) for n in range(1, 9)))
            assert [await device.recv() for _ in range(8)] == [Puback(n) for n in range(1, 9)]
    events = [event for batch in batches for event in batch]
    assert [e.data for e in events] == [b'{"n": %d}' % n for n in range(1, 9)]
    with_context = {n for n, e in enumerate(events, 1) if "traceparent" in e}
    assert with_context == sampled
    for n, event in enumerate(events, 1):
        if n in sampled:  # a child of the device's span, in the device's trace
            assert event["traceparent"].startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
            assert event["traceparent"] != parent
    for batch in batches:
        assert type(batch) is EncodedEvents
        assert list(batch.records) == [encode_record(event) for event in batch]
