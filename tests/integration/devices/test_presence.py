"""Presence from MQTT connections: clean and unclean ends, takeover, keepalive, restarts."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest

from headwater.mqtt.packets import Disconnect, ProtocolVersion, ReasonCode, Will
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import Node
from tests.integration.devices.test_registry_auth import connect, register
from tests.integration.mqtt._clients import Raw

pytestmark = pytest.mark.integration


def presence(node: Node, device: str) -> dict[str, Any]:
    result: dict[str, Any] = node.ok("GET", f"/api/v1/devices/{device}")["presence"]
    return result


def online(node: Node) -> list[str]:
    return [d["id"] for d in node.ok("GET", "/api/v1/devices?online=true")["items"]]


def test_online_while_connected_offline_after(node: Node) -> None:
    secret = register(node, "pump-1", labels={"site": "north"})
    register(node, "pump-2")
    assert presence(node, "pump-1") == {"online": False, "lastSeen": None}
    device = connect(node, "pump-1", secret)
    device.connack()
    record = presence(node, "pump-1")
    assert record["online"] and record["clientId"] == "pump-1" and record["protocol"] == "5.0"
    assert record["address"].startswith("127.0.0.1:") and record["broker"] == "default/mqtt"
    assert online(node) == ["pump-1"]
    offline = [d["id"] for d in node.ok("GET", "/api/v1/devices?online=false")["items"]]
    assert offline == ["pump-2"]
    device.close()
    wait_until(lambda: not presence(node, "pump-1")["online"])
    record = presence(node, "pump-1")
    assert record["disconnectedAt"] >= record["connectedAt"] and record["lastSeen"]
    # The device events carry the registry's labels.
    [connected] = node.events("dev.headwater.device.connected")
    assert connected["device"] == "pump-1"
    assert orjson.loads(connected.data)["labels"] == {"site": "north"}  # type: ignore[arg-type]


def test_a_dead_connection_makes_it_offline_and_its_will_is_published(node: Node) -> None:
    secret = register(node, "pump-1")
    watcher_secret = register(node, "pump-2")
    raw = Raw(node.port, ProtocolVersion.MQTT311)
    will = Will("devices/pump-1/status", b"gone", 1, True)
    assert (
        raw.connect("pump-1", username="pump-1", password=secret.encode(), will=will).reason_code
        == 0
    )
    wait_until(lambda: presence(node, "pump-1")["online"])
    raw.sock.shutdown(socket.SHUT_RDWR)  # the network fails: no DISCONNECT
    raw.close()
    wait_until(lambda: not presence(node, "pump-1")["online"])
    # The will went out (retained; pump-2 may not read pump-1's topics, so ask the broker).
    source = node.runtime.reconciler.component(("MqttBrokerSource", "default", "mqtt")).source
    [message] = node.run(lambda: source.broker.retained.match("devices/pump-1/status", 0.0))
    assert message.payload == b"gone"
    assert watcher_secret


def test_a_takeover_keeps_the_device_online(node: Node) -> None:
    secret = register(node, "pump-1")
    first = Raw(node.port, ProtocolVersion.MQTT5)
    assert first.connect("pump-1", username="pump-1", password=secret.encode()).reason_code == 0
    wait_until(lambda: presence(node, "pump-1")["online"])
    before = presence(node, "pump-1")["connections"]
    second = connect(node, "pump-1", secret)
    assert second.connack()[0] == 0
    assert first.recv() == Disconnect(ReasonCode.SESSION_TAKEN_OVER)
    assert first.is_closed()
    # The old connection's end is announced after the new one began: still online.
    wait_until(lambda: presence(node, "pump-1")["connections"] == before + 1)
    assert presence(node, "pump-1")["online"]
    # The taken-over connection's end is recorded, and changes nothing.
    wait_until(lambda: len(node.events("dev.headwater.device.disconnected")) == 1)
    assert presence(node, "pump-1")["online"]
    second.close()
    wait_until(lambda: not presence(node, "pump-1")["online"])


def test_keepalive_expiry_makes_it_offline(node: Node) -> None:
    secret = register(node, "pump-1")
    raw = Raw(node.port, ProtocolVersion.MQTT5)
    connack = raw.connect("pump-1", username="pump-1", password=secret.encode(), keep_alive=1)
    assert connack.reason_code == 0
    wait_until(lambda: presence(node, "pump-1")["online"])
    # Silent for 1.5 x keepalive [MQTT-3.1.2-22]: the broker closes it.
    assert raw.recv(timeout=10) == Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)
    wait_until(lambda: not presence(node, "pump-1")["online"])


def test_presence_is_kept_across_a_restart(node: Node) -> None:
    secret = register(node, "pump-1")
    device = connect(node, "pump-1", secret)
    device.connack()
    wait_until(lambda: presence(node, "pump-1")["online"])
    connected_at = presence(node, "pump-1")["connectedAt"]
    node = node.restart()
    record = presence(node, "pump-1")
    assert not record["online"]
    assert record["connectedAt"] == connected_at
    assert record["disconnectedAt"] >= connected_at
    assert record["clientId"] == "pump-1" and record["connections"] == 1
    # And the registry, with its secrets: the device connects again.
    assert connect(node, "pump-1", secret).connack()[0] == 0
    assert presence(node, "pump-1")["connections"] == 2


def test_metrics_count_registered_and_online_devices(node: Node) -> None:
    import urllib.request

    secret = register(node, "pump-1")
    register(node, "pump-2")
    connect(node, "pump-1", secret).connack()
    connect(node, "pump-2", "wrong").connack()

    def metrics() -> str:
        with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
            return str(response.read().decode())

    wait_until(lambda: 'headwater_devices_online{name="mqtt",namespace="default"} 1.0' in metrics())
    text = metrics()
    assert 'headwater_devices_registered{name="mqtt",namespace="default"} 2.0' in text
    assert 'headwater_devices_refused_total{name="mqtt",namespace="default"} 1.0' in text
