"""Devices -> embedded broker (MqttBrokerSource) -> Broker -> Trigger -> HTTP, and back.

paho-mqtt clients talk to the embedded broker over TCP; the HTTP receiver is a
real aiohttp server; the mesh is a :class:`~headwater.runtime.Runtime` applying
the same YAML a user would.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator

import orjson
import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import EARLIEST
from headwater.runtime import Runtime
from headwater.sources.mqttbroker import CONNECTED_TYPE
from tests.helpers import Receiver
from tests.integration.sources.conftest import Device

CESQL = importlib.util.find_spec("headwater.cesql") is not None
FILTER = (
    "filters:\n      - cesql: \"type = 'dev.headwater.telemetry' AND temperature > 25\""
    if CESQL
    else "filter:\n      attributes:\n        type: dev.headwater.telemetry\n        hot: 'true'"
)


def mesh(receiver_url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{port: 0}}]
  topics: ["sensors/#", "devices/#"]
  maxEventSize: 4096
  mapping:
    topicPattern: "sensors/{{device}}/{{metric}}"
    type: "dev.headwater.telemetry"
    source: "mqtt://greenhouse/{{device}}"
    subject: "{{device}}"
    extensions: {{temperature: temperature, hot: "temperature > `25`"}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: hot}}
spec:
  broker: default
  {FILTER}
  subscriber: {{uri: "{receiver_url}"}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime()
    yield rt
    await rt.close()


def mqtt_port(runtime: Runtime) -> int:
    url = runtime.listeners["mqtt/default/devices"]
    return int(url.rsplit(":", 1)[1])


async def test_telemetry_reaches_http_with_every_attribute(
    runtime: Runtime, receiver: Receiver
) -> None:
    await runtime.apply_text(mesh(receiver.url), "mesh.yaml")
    device = await asyncio.to_thread(Device, mqtt_port(runtime), "sensor-7")
    try:
        hot = orjson.dumps({"temperature": 31, "humidity": 40.5})
        cold = orjson.dumps({"temperature": 19, "humidity": 55.0})
        assert await asyncio.to_thread(device.publish, "sensors/sensor-7/climate", cold) == 0
        assert await asyncio.to_thread(device.publish, "sensors/sensor-7/climate", hot) == 0
        events = await receiver.wait_for(1)
        await asyncio.sleep(0.2)  # and the cold one never arrives
    finally:
        await asyncio.to_thread(device.close)
    assert len(events) == 1
    event = events[0]
    attrs = dict(event.attributes)
    assert attrs.pop("id")
    assert attrs.pop("time").endswith("Z")
    assert attrs.pop("knativebrokerttl", None) in (None, 255, "255")
    # HTTP binary mode carries every attribute as its canonical string (http 3.1.3.2).
    assert attrs == {
        "specversion": "1.0",
        "type": "dev.headwater.telemetry",
        "source": "mqtt://greenhouse/sensor-7",
        "subject": "sensor-7",
        "datacontenttype": "application/json",
        "device": "sensor-7",
        "metric": "climate",
        "mqtttopic": "sensors/sensor-7/climate",
        "mqttqos": "1",
        "mqttretain": "false",
        "temperature": "31",
        "hot": "true",
    }
    assert event.data_bytes() == hot
    status = runtime.status(("MqttBrokerSource", "default", "devices"))
    assert status["events"] == 2


async def test_bad_input_has_defined_outcomes(runtime: Runtime, receiver: Receiver) -> None:
    await runtime.apply_text(mesh(receiver.url), "mesh.yaml")
    port = mqtt_port(runtime)
    device = await asyncio.to_thread(Device, port, "sensor-8")
    watcher = await asyncio.to_thread(Device, port, "watcher")
    try:
        await asyncio.to_thread(watcher.subscribe, "sensors/#")
        # Over maxEventSize: refused with 0x97 Quota exceeded, not routed.
        big = b"x" * 5000
        assert await asyncio.to_thread(device.publish, "sensors/a/b", big) == 0x97
        # Not UTF-8: an event with octet-stream data, bytes unchanged.
        binary = b"\xff\xfe\x00\x80"
        assert await asyncio.to_thread(device.publish, "sensors/a/raw", binary) == 0
        # Outside the pattern (one level too many): routed between devices, no event.
        assert await asyncio.to_thread(device.publish, "sensors/a/b/c", b"{}") == 0
        # A carried CloudEvent that is malformed: 0x99 Payload format invalid.
        code = await asyncio.to_thread(
            device.publish,
            "sensors/a/ce",
            b"{}",
            content_type="application/cloudevents+json",
        )
        assert code == 0x99
        got = await asyncio.to_thread(watcher.wait_messages, 2)
    finally:
        await asyncio.to_thread(device.close)
        await asyncio.to_thread(watcher.close)
    assert sorted(m.topic for m in got) == ["sensors/a/b/c", "sensors/a/raw"]
    status = runtime.status(("MqttBrokerSource", "default", "devices"))
    assert status["tooLarge"] == 1
    assert status["unmatched"] == 1
    assert status["invalid"] == 1
    assert status["events"] == 1
    broker = runtime.broker("default", "default")
    entries = await _read_all(runtime, broker.stream)
    raw = [e for e in entries if e.get("mqtttopic") == "sensors/a/raw"]
    assert len(raw) == 1
    assert raw[0].datacontenttype == "application/octet-stream"
    assert raw[0].data_bytes() == binary
    assert "temperature" not in raw[0]
    connected = [e for e in entries if e.type == CONNECTED_TYPE]
    assert {e.subject for e in connected} == {"sensor-8", "watcher"}


async def _read_all(runtime: Runtime, stream: str) -> list[CloudEvent]:
    reader = runtime.log.reader(stream, "test-reader", EARLIEST)
    out: list[CloudEvent] = []
    for _ in range(20):
        batch = await reader.next_batch(1000, 0.05)
        if not batch:
            break
        out.extend(entry.event for entry in batch)
    await reader.close()
    return out
