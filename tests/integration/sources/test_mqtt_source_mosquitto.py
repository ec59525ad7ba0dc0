"""MqttSource against a real Mosquitto: mapping, persistent session, broker restarts."""

from __future__ import annotations

import asyncio

import orjson

from headwater.runtime import Runtime
from tests.helpers import Receiver, wait_until
from tests.integration.sources.conftest import Device, Mosquitto

N = 100


def mesh(broker_url: str, receiver_url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttSource
metadata: {{name: plant}}
spec:
  broker: "{broker_url}"
  clientId: headwater-plant-test
  topics: [{{filter: "sensors/#", qos: 1}}]
  maxBackoff: 0.5
  mapping:
    topicPattern: "sensors/{{device}}/{{metric}}"
    type: "dev.headwater.telemetry"
    subject: "{{device}}"
    extensions: {{seq: seq}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: all
  annotations: {{headwater.dev/start: earliest}}
spec:
  broker: default
  subscriber: {{uri: "{receiver_url}"}}
"""


async def wait_connected(runtime: Runtime) -> None:
    key = ("MqttSource", "default", "plant")
    await wait_until(lambda: runtime.status(key).get("connected"), what="connected")


def publish_all(port: int, first: int, count: int) -> None:
    device = Device(port, f"pub-{first}")
    try:
        for seq in range(first, first + count):
            code = device.publish(f"sensors/s{seq % 5}/climate", orjson.dumps({"seq": seq}))
            assert code == 0
    finally:
        device.close()


def seqs(receiver: Receiver) -> list[int]:
    return sorted(int(str(e["seq"])) for e in receiver.accepted)


async def test_mosquitto_messages_become_events(mosquitto: Mosquitto, receiver: Receiver) -> None:
    runtime = Runtime()
    try:
        await runtime.apply_text(mesh(mosquitto.url, receiver.url), "mesh.yaml")
        await wait_connected(runtime)
        await asyncio.to_thread(publish_all, mosquitto.port, 0, N)
        await receiver.wait_for(N)
    finally:
        await runtime.close()
    assert seqs(receiver) == list(range(N))
    event = receiver.accepted[0]
    assert event.type == "dev.headwater.telemetry"
    assert event.source == f"mqtt://127.0.0.1:{mosquitto.port}/{event['mqtttopic']}"
    assert event.subject == event["device"]
    assert event["metric"] == "climate"
    assert event["mqttqos"] == "1"
    assert event.datacontenttype == "application/json"


async def test_persistent_session_survives_headwater_and_mosquitto_restarts(
    mosquitto: Mosquitto, receiver: Receiver
) -> None:
    text = mesh(mosquitto.url, receiver.url)
    runtime = Runtime()
    await runtime.apply_text(text, "mesh.yaml")
    await wait_connected(runtime)  # the session and its subscription now exist at Mosquitto
    await runtime.close()
    # Headwater is away: Mosquitto queues for the persistent session ...
    await asyncio.to_thread(publish_all, mosquitto.port, 0, N)
    # ... and keeps the queue across its own restart.
    await asyncio.to_thread(mosquitto.restart)
    runtime = Runtime()
    try:
        await runtime.apply_text(text, "mesh.yaml")
        await receiver.wait_for(N)
        # Mosquitto restarts under the running source: it reconnects and resubscribes.
        await wait_connected(runtime)
        await asyncio.to_thread(mosquitto.restart)
        await wait_connected(runtime)
        await asyncio.to_thread(publish_all, mosquitto.port, N, N)
        await receiver.wait_for(2 * N)
        status = runtime.status(("MqttSource", "default", "plant"))
    finally:
        await runtime.close()
    got = seqs(receiver)
    assert set(got) == set(range(2 * N)), f"lost {sorted(set(range(2 * N)) - set(got))[:10]}"
    duplicates = len(got) - len(set(got))
    assert duplicates <= N  # at least once; duplicates only from unacked redelivery
    assert status["connects"] >= 2
