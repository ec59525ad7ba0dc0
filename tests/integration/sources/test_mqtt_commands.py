"""Commands to devices through MqttSink, and the devices' answers as reply events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from headwater.sinks.mqtt import RESPONSE_TYPE
from tests.helpers import Receiver
from tests.integration.sources.conftest import Device


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
  topics: ["sensors/#"]
  deviceEvents: false
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: MqttSink
metadata: {{name: commands}}
spec:
  topic: "devices/{{subject}}/commands"
  qos: 1
  responseTimeout: 5
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-devices}}
spec:
  broker: default
  filter: {{attributes: {{type: dev.headwater.command}}}}
  subscriber:
    ref: {{apiVersion: sinks.headwater.dev/v1alpha1, kind: MqttSink, name: commands}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: answers}}
spec:
  broker: default
  filter: {{attributes: {{type: {RESPONSE_TYPE}}}}}
  subscriber: {{uri: "{receiver_url}"}}
"""


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime()
    yield rt
    await rt.close()


def answering(device: Device) -> None:
    """Make ``device`` answer each command on its Response Topic with the Correlation Data."""

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        device.received.append(message)
        props = getattr(message, "properties", None)
        topic = getattr(props, "ResponseTopic", None)
        if topic:
            answer = Properties(PacketTypes.PUBLISH)
            answer.CorrelationData = props.CorrelationData  # type: ignore[union-attr]
            answer.ContentType = "application/json"
            client.publish(topic, b'{"ok": true, "setpoint": 21}', 1, properties=answer)

    device.client.on_message = on_message


async def test_command_reaches_device_and_response_comes_back(
    runtime: Runtime, receiver: Receiver
) -> None:
    await runtime.apply_text(mesh(receiver.url), "mesh.yaml")
    port = int(runtime.listeners["mqtt/default/devices"].rsplit(":", 1)[1])
    device = await asyncio.to_thread(Device, port, "sensor-7")
    try:
        answering(device)
        await asyncio.to_thread(device.subscribe, "devices/sensor-7/commands")
        command = CloudEvent(
            {
                "specversion": "1.0",
                "id": "cmd-1",
                "source": "/ops",
                "type": "dev.headwater.command",
                "subject": "sensor-7",
                "correlationid": "c-42",
                "datacontenttype": "application/json",
            },
            b'{"setpoint": 21}',
        )
        await runtime.broker("default", "default").accept([command])
        replies = await receiver.wait_for(1)
        got = await asyncio.to_thread(device.wait_messages, 1)
    finally:
        await asyncio.to_thread(device.close)
    # The device got the command in binary mode: data as payload, attributes as properties.
    assert got[0].topic == "devices/sensor-7/commands"
    assert got[0].payload == b'{"setpoint": 21}'
    user = dict(got[0].properties.UserProperty)  # type: ignore[union-attr]
    assert user["id"] == "cmd-1"
    assert user["type"] == "dev.headwater.command"
    assert got[0].properties.CorrelationData == b"c-42"  # type: ignore[union-attr]
    assert len(replies) == 1
    reply = replies[0]
    assert reply.type == RESPONSE_TYPE
    assert reply.subject == "sensor-7"
    assert reply["correlationid"] == "c-42"
    assert reply.datacontenttype == "application/json"
    assert reply.data_bytes() == b'{"ok": true, "setpoint": 21}'
    assert runtime.status(("MqttSink", "default", "commands"))["responses"] == 1


async def test_command_without_subject_is_not_retried(runtime: Runtime, receiver: Receiver) -> None:
    await runtime.apply_text(mesh(receiver.url), "mesh.yaml")
    sink = runtime.reconciler.component(("MqttSink", "default", "commands"))
    assert sink is not None
    from headwater.eventing import DeliveryError

    event = CloudEvent(
        {"specversion": "1.0", "id": "x", "source": "/ops", "type": "dev.headwater.command"}
    )
    with pytest.raises(DeliveryError) as info:
        await sink.sink.deliver(event)  # type: ignore[attr-defined]
    assert info.value.status == 400
    assert not info.value.retryable
