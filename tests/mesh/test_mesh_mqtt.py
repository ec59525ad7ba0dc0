"""Devices on different nodes of a mesh talk to each other, and their publishes become events.

Paho clients spread over three `headwater up --nats` nodes: what one
publishes reaches subscribers on the others (QoS 0, 1, 2), a retained
message is served by every node, a device that reconnects to another node
resumes its session with what was queued meanwhile, and every publish is an
event on the Broker, delivered once by the Trigger's share on each node.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from tests.mesh.nodes import Node, receiving, wait_for

pytestmark = pytest.mark.integration

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: telemetry}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: devices}
spec:
  listeners: [{host: 127.0.0.1, port: 1883}]
  topics: ["sensors/#"]
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: telemetry}
"""


def trigger(url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: all
  annotations: {{headwater.dev/start: earliest}}
spec:
  broker: telemetry
  filter: {{attributes: {{type: dev.headwater.mqtt.message}}}}
  subscriber: {{uri: {json.dumps(url)}}}
"""


class Device:
    """A paho client (its own network thread) that remembers what it received."""

    def __init__(self, client_id: str, port: int, *, clean: bool = True) -> None:
        self.received: list[tuple[str, bytes, int, bool]] = []
        self.present: list[bool] = []
        self.lock = threading.Lock()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_message = self._message
        self.client.on_connect = lambda c, u, flags, rc, p: self.present.append(
            flags.session_present
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_for(f"{client_id} connected", lambda: self.present)

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.append((message.topic, message.payload, message.qos, message.retain))

    def subscribe(self, topic: str, qos: int) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *args: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(30), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(30)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho leaves its wake-up socket pair to the garbage collector otherwise.
        self.client._reset_sockets()


@contextmanager
def devices() -> Iterator[Callable[..., Device]]:
    made: list[Device] = []

    def make(*args: Any, **kwargs: Any) -> Device:
        device = Device(*args, **kwargs)
        made.append(device)
        return device

    try:
        yield make
    finally:
        for device in made:
            device.close()


def test_devices_on_different_nodes_are_one_broker(
    mesh_node: Callable[..., Node], tmp_path: Path
) -> None:
    with receiving() as receiver:
        files = tmp_path / "mesh.yaml"
        files.write_text(MESH + "---\n" + trigger(receiver.url))
        n1, n2, n3 = (mesh_node(name, files=[files]) for name in ("n1", "n2", "n3"))
        with devices() as device:
            listener = device("listener", n3.mqtt_port)
            listener.subscribe("sensors/#", 2)
            publishers = [device(f"pub{i}", n.mqtt_port) for i, n in enumerate((n1, n2, n3))]
            sent = []
            for i, pub in enumerate(publishers):
                for qos in (0, 1, 2):
                    topic = f"sensors/p{i}/q{qos}"
                    pub.publish(topic, json.dumps({"p": i, "qos": qos}).encode(), qos)
                    sent.append(topic)
            wait_for("every message on n3", lambda: len(listener.received) >= len(sent))
            assert sorted(t for t, _, _, _ in listener.received) == sorted(sent)
            assert {(t, q) for t, _, q, _ in listener.received} == {(t, int(t[-1])) for t in sent}

            publishers[0].publish("sensors/p0/state", b"on", 1, retain=True)
            late = device("late", n2.mqtt_port)
            late.subscribe("sensors/+/state", 1)
            wait_for("the retained message on n2", lambda: late.received)
            assert late.received[0][1:] == (b"on", 1, True)

            # Every publish is an event of the Broker; the Trigger delivers each once.
            events = len(sent) + 1
            ids = receiver.wait_for_requests(events)
            assert len(set(ids)) == len(ids) == events


def test_a_device_resumes_its_session_on_another_node(
    mesh_node: Callable[..., Node], tmp_path: Path
) -> None:
    files = tmp_path / "mesh.yaml"
    files.write_text(MESH)
    n1, n2 = mesh_node("n1", files=[files]), mesh_node("n2", files=[files])
    with devices() as device:
        dev = device("valve-7", n1.mqtt_port, clean=False)
        dev.subscribe("commands/valve-7", 1)
        dev.close()
        app = device("app", n2.mqtt_port)
        for i in range(5):
            app.publish("commands/valve-7", f"set {i}".encode(), 1)
        again = device("valve-7", n2.mqtt_port, clean=False)
        wait_for("the queued commands", lambda: len(again.received) >= 5)
    assert again.present == [True]
    assert [p for _, p, _, _ in again.received] == [f"set {i}".encode() for i in range(5)]
