"""Twins: desired state from the API, reported state from the device, the delta in between."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from headwater.mqtt.packets import ProtocolVersion, Puback, Publish, ReasonCode
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import Node
from tests.integration.devices.test_registry_auth import connect, register
from tests.integration.mqtt._clients import Paho, Raw, publish_properties

pytestmark = pytest.mark.integration


def delta(client: Paho) -> dict[str, Any]:
    message = client.get()
    assert message.topic.endswith("/twin/delta"), message.topic
    body: dict[str, Any] = orjson.loads(message.payload)
    return body


def twin(node: Node, device: str) -> dict[str, Any]:
    result: dict[str, Any] = node.ok("GET", f"/api/v1/devices/{device}/twin")
    return result


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
def test_desired_reaches_the_device_and_its_report_closes_the_delta(node: Node, v5: bool) -> None:
    secret = register(node, "pump-1")
    device = connect(node, "pump-1", secret, v5=v5)
    device.connack()
    device.subscribe("devices/pump-1/twin/delta", 1)
    assert delta(device) == {"version": 0, "state": {}, "timestamp": None}  # in sync
    node.ok(
        "PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"speed": 3, "mode": {"a": 1}}}
    )
    got = delta(device)
    assert got["version"] == 1 and got["state"] == {"speed": 3, "mode": {"a": 1}}
    device.publish("devices/pump-1/twin/reported", orjson.dumps({"speed": 3, "mode": {"a": 2}}), 1)
    assert delta(device)["state"] == {"mode": {"a": 1}}  # what is still to do
    device.publish("devices/pump-1/twin/reported", b'{"mode": {"a": 1}, "extra": true}', 1)
    assert delta(device)["state"] == {}
    shown = twin(node, "pump-1")
    assert shown["reported"]["state"] == {"speed": 3, "mode": {"a": 1}, "extra": True}
    assert shown["reported"]["version"] == 2 and shown["desired"]["version"] == 1
    assert shown["delta"] == {}
    # Every change is an event.
    wait_until(lambda: len(node.events("dev.headwater.twin.updated")) == 3)
    sides = [orjson.loads(e.data)["side"] for e in node.events("dev.headwater.twin.updated")]  # type: ignore[arg-type]
    assert sides == ["desired", "reported", "reported"]


def test_the_delta_waits_for_the_device_across_reconnects_and_restarts(node: Node) -> None:
    secret = register(node, "pump-1")
    node.ok("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"speed": 5}})
    node = node.restart()
    device = connect(node, "pump-1", secret, v5=False)
    device.connack()
    device.subscribe("devices/pump-1/twin/delta", 1)
    assert delta(device)["state"] == {"speed": 5}
    device.close()
    node.ok("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"speed": None, "on": True}})
    device = connect(node, "pump-1", secret, v5=False)
    device.connack()
    device.subscribe("devices/pump-1/twin/delta", 1)
    assert delta(device) == {
        "version": 2,
        "state": {"on": True},
        "timestamp": pytest.approx(twin(node, "pump-1")["desired"]["updated"]),
    }


def test_reported_state_from_telemetry(node: Node) -> None:
    secret = register(node, "pump-1")
    device = connect(node, "pump-1", secret)
    device.connack()
    for temperature in (20.5, 21.0, 21.5):
        device.publish("sensors/pump-1/climate", orjson.dumps({"temperature": temperature}), 1)
    wait_until(lambda: twin(node, "pump-1")["reported"]["state"] == {"temperature": 21.5})
    # Telemetry is still telemetry: three events, and at most one twin change per interval.
    assert len(node.events("dev.headwater.mqtt.message")) == 3
    assert twin(node, "pump-1")["reported"]["version"] <= 3


def test_a_stale_version_is_refused(node: Node) -> None:
    register(node, "pump-1")
    first = node.ok(
        "PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"a": 1}, "version": 0}
    )
    assert first["desired"]["version"] == 1
    status, body = node.api(
        "PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"a": 2}, "version": 0}
    )
    assert status == 409 and "version 1, not 0" in body["error"]
    replaced = node.ok(
        "PUT", "/api/v1/devices/pump-1/twin/desired", {"state": {"b": 2}, "version": 1}
    )
    assert replaced["desired"]["state"] == {"b": 2}


def test_concurrent_updates_one_wins_the_other_is_told(node: Node) -> None:
    register(node, "pump-1")
    results: list[int] = []

    def update(value: int) -> None:
        status, _ = node.api(
            "PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"v": value}, "version": 0}
        )
        results.append(status)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [200] + [409] * 7
    assert twin(node, "pump-1")["desired"]["version"] == 1


def test_oversized_and_malformed_twins_are_refused(node: Node) -> None:
    secret = register(node, "pump-1")
    big = {"blob": "x" * 40_000}
    status, body = node.api("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": big})
    assert status == 413 and "over the limit" in body["error"]
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(12):
        inner["d"] = {}
        inner = inner["d"]
    status, body = node.api("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": deep})
    assert status == 413 and "deeper" in body["error"]
    status, body = node.api("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": [1]})
    assert status == 400 and "JSON object" in body["error"]
    status, _ = node.api("PATCH", "/api/v1/devices/nobody/twin/desired", {"state": {}})
    assert status == 404
    # The device is refused too, with a reason code (MQTT 5).
    device = Raw(node.port, ProtocolVersion.MQTT5)
    assert device.connect("pump-1", username="pump-1", password=secret.encode()).reason_code == 0
    for packet_id, (payload, code) in enumerate(
        [
            (orjson.dumps(big), ReasonCode.QUOTA_EXCEEDED),
            (b"not json", ReasonCode.PAYLOAD_FORMAT_INVALID),
            (b"[1, 2]", ReasonCode.PAYLOAD_FORMAT_INVALID),
        ],
        start=1,
    ):
        device.send(Publish("devices/pump-1/twin/reported", payload, 1, packet_id=packet_id))
        assert device.recv() == Puback(packet_id, code)
    assert twin(node, "pump-1")["reported"]["version"] == 0


def test_a_device_asks_for_its_whole_twin(node: Node) -> None:
    secret = register(node, "pump-1")
    node.ok("PATCH", "/api/v1/devices/pump-1/twin/desired", {"state": {"speed": 1}})
    device = connect(node, "pump-1", secret)
    device.connack()
    device.subscribe("devices/pump-1/replies", 1)
    props = publish_properties(ResponseTopic="devices/pump-1/replies", CorrelationData=b"c1")
    device.publish("devices/pump-1/twin/get", b"", 1, properties=props)
    message = device.get()
    assert message.topic == "devices/pump-1/replies"
    assert message.properties.CorrelationData == b"c1"  # type: ignore[union-attr]
    document = orjson.loads(message.payload)
    assert document["desired"] == {"state": {"speed": 1}, "version": 1}
    assert document["delta"] == {"speed": 1}
