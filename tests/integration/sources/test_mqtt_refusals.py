"""MqttBrokerSource: a publish refused for good is never a reconnect loop; "not now" is.

An MQTT 3.1.1 client cannot hear a refusal. A message that can never become
an event (over the size limit, a topic that makes no valid event) is
acknowledged and dropped with a count; a message the log cannot take *now*
(a full disk) is left unacknowledged so that the device sends it again later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.log import LogFull
from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.mqtt.packets import Properties, Puback, Publish, ReasonCode
from headwater.sources.mapping import Mapping
from headwater.sources.mqttbroker import MqttBrokerSource
from tests.integration.mqtt._clients import V5, V311, Raw
from tests.integration.sources.test_mqtt_redelivery import wait_until

pytestmark = pytest.mark.integration


class Log:
    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.failure: Exception | None = None

    async def append(self, event: CloudEvent) -> None:
        if self.failure is not None:
            raise self.failure
        self.events.append(event)


@pytest.fixture
async def source() -> AsyncIterator[tuple[MqttBrokerSource, Log]]:
    log = Log()
    runner = MqttBrokerSource(
        BrokerConfig(listeners=(Listener(port=0),)),
        Mapping.compile(),
        log.append,
        device_events=False,
        max_event_size=100,
    )
    async with runner:
        yield runner, log


async def _connect(port: int, version, client_id: str) -> Raw:  # type: ignore[no-untyped-def]
    raw = await asyncio.to_thread(Raw, port, version)
    await asyncio.to_thread(raw.connect, client_id, clean_start=False)
    return raw


async def _publish(raw: Raw, topic: str, payload: bytes, pid: int) -> object:
    await asyncio.to_thread(raw.send, Publish(topic, payload, 1, packet_id=pid))
    return await asyncio.to_thread(raw.recv)


@pytest.mark.parametrize(
    ("topic", "payload", "code", "counter"),
    [
        pytest.param("sensors/a", b"x" * 101, ReasonCode.QUOTA_EXCEEDED, "too_large", id="size"),
        pytest.param("sensors/\x01", b"{}", ReasonCode.PAYLOAD_FORMAT_INVALID, "invalid", id="ctl"),
    ],
)
async def test_a_message_refused_for_good_is_acknowledged_to_a_311_client(
    source: tuple[MqttBrokerSource, Log], topic: str, payload: bytes, code: ReasonCode, counter: str
) -> None:
    runner, log = source
    port = runner.broker.port()
    device = await _connect(port, V311, "old-device")
    try:
        # Before: no ack and a disconnect, so the device resent it on every reconnect.
        assert await _publish(device, topic, payload, 1) == Puback(1)
        assert await _publish(device, "sensors/ok", b"{}", 2) == Puback(2)
    finally:
        device.close()
    assert [e["mqtttopic"] for e in log.events] == ["sensors/ok"]
    assert getattr(runner.stats, counter) == 1
    assert runner.broker.stats.refused_acknowledged == 1
    # MQTT 5 clients hear the reason.
    modern = await _connect(port, V5, "new-device")
    try:
        assert await _publish(modern, topic, payload, 3) == Puback(3, code)
    finally:
        modern.close()


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(LogFull("disk full"), id="log"),
        pytest.param(DeliveryError(507, True, reason="Insufficient Storage"), id="sink"),
    ],
)
async def test_a_full_log_is_quota_exceeded_and_311_clients_resend(
    source: tuple[MqttBrokerSource, Log], failure: Exception
) -> None:
    runner, log = source
    log.failure = failure
    port = runner.broker.port()
    modern = await _connect(port, V5, "v5")
    try:
        assert await _publish(modern, "sensors/a", b"{}", 1) == Puback(1, ReasonCode.QUOTA_EXCEEDED)
    finally:
        modern.close()
    old = await _connect(port, V311, "v311")
    try:
        await asyncio.to_thread(old.send, Publish("sensors/a", b"{}", 1, packet_id=1))
        # Not acknowledged: the session keeps it for the device to send again.
        assert await asyncio.to_thread(old.is_closed)
    finally:
        old.close()
    await wait_until(lambda: "v311" not in runner.broker.connected_clients)
    assert runner.stats.append_failures == 2
    assert runner.broker.stats.refused_acknowledged == 0
    log.failure = None
    again = await _connect(port, V311, "v311")
    try:
        assert await _publish(again, "sensors/a", b"{}", 1) == Puback(1)
    finally:
        again.close()
    assert len(log.events) == 1


@pytest.mark.parametrize("content_type", ["text", "p", "", "application/json"])
async def test_a_content_type_that_is_no_media_type_never_refuses_telemetry(
    source: tuple[MqttBrokerSource, Log], content_type: str
) -> None:
    """MQTT says Content Type is the application's business [MQTT-3.3.2-19]."""
    runner, log = source
    device = await _connect(runner.broker.port(), V5, "typed")
    try:
        props = Properties(content_type=content_type)
        await asyncio.to_thread(
            device.send, Publish("sensors/a", b'{"t": 1}', 1, packet_id=1, properties=props)
        )
        assert await asyncio.to_thread(device.recv) == Puback(1)
        await asyncio.to_thread(device.send, Publish("sensors/a", b'{"t": 2}', 0, properties=props))
        await wait_until(lambda: len(log.events) == 2)
    finally:
        device.close()
    kept = content_type != "application/json"
    for event in log.events:
        assert event.datacontenttype == "application/json"
        assert event.get("mqttcontenttype") == (content_type if kept else None)
    assert runner.stats.content_types_kept == (2 if kept else 0)
    assert runner.stats.invalid == 0
