"""MqttBrokerSource's device events over TCP: before the device's first publish, best effort.

The broker takes a connection's packets after the CONNACK only once its
``connected`` event is appended: a consumer of the log sees a device connect
before it sees what the device sent. A device event that cannot be appended
is counted and logged, and the device goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from headwater.cloudevents import CloudEvent
from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.mqtt.packets import Connack, Connect, Puback, Publish, encode
from headwater.sources.device_events import CONNECTED_TYPE
from headwater.sources.mapping import DEFAULT_TYPE, Mapping
from headwater.sources.mqttbroker import MqttBrokerSource
from tests.helpers import wait_until
from tests.integration.mqtt._clients import V311, Raw

pytestmark = pytest.mark.integration


class Log:
    """A sink whose appends of device events can be held back or failed."""

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.device_calls = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.failure: Exception | None = None

    async def emit(self, event: CloudEvent) -> None:
        await self.emit_many([event])

    async def emit_many(self, events: Sequence[CloudEvent]) -> None:
        if any(e.type == CONNECTED_TYPE for e in events):
            self.device_calls += 1
            await self.gate.wait()
            if self.failure is not None:
                raise self.failure
        self.events.extend(events)


@pytest.fixture
async def source() -> AsyncIterator[tuple[MqttBrokerSource, Log]]:
    log = Log()
    runner = MqttBrokerSource(
        BrokerConfig(listeners=(Listener(port=0),)),
        Mapping.compile(),
        log.emit,
        emit_many=log.emit_many,
        append_timeout=0.5,
    )
    async with runner:
        yield runner, log


def _port(runner: MqttBrokerSource) -> int:
    return runner.broker.addresses[0][2]


async def _connect_and_publish(port: int, client_id: str) -> Raw:
    """CONNECT and PUBLISH in one write: the broker reads them together."""
    raw = await asyncio.to_thread(Raw, port, V311)
    packets = encode(Connect(client_id=client_id), V311) + encode(
        Publish("sensors/t", b"21.5", 1, packet_id=1), V311
    )
    await asyncio.to_thread(raw.send_bytes, packets)
    assert isinstance(await asyncio.to_thread(raw.recv), Connack)
    return raw


async def test_the_connected_event_is_appended_before_the_first_publish(
    source: tuple[MqttBrokerSource, Log],
) -> None:
    runner, log = source
    log.gate.clear()  # the connected event's append is slow
    raw = await _connect_and_publish(_port(runner), "sensor-1")
    await wait_until(lambda: log.device_calls == 1, what="the connected event's append")
    log.gate.set()
    assert isinstance(await asyncio.to_thread(raw.recv), Puback)
    assert [e.type for e in log.events] == [CONNECTED_TYPE, DEFAULT_TYPE]
    assert log.events[0]["subject"] == "sensor-1"


@pytest.mark.parametrize("why", ["failed", "timed out"])
async def test_a_device_event_not_appended_is_counted_and_the_device_goes_on(
    source: tuple[MqttBrokerSource, Log], why: str
) -> None:
    runner, log = source
    if why == "failed":
        log.failure = OSError("disk gone")
    else:
        log.gate.clear()  # never set: past the append timeout
    raw = await _connect_and_publish(_port(runner), "sensor-2")
    assert isinstance(await asyncio.to_thread(raw.recv), Puback)
    assert runner.stats.device_events_failed == 1
    assert [e.type for e in log.events] == [DEFAULT_TYPE]
    await wait_until(lambda: runner.status()["deviceEventsFailed"] == 1)
