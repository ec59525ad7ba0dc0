"""One device registry across the mesh: registered on one node, known on every other.

Two `headwater up --nats` nodes share the registry in JetStream KV, each
following it with a watcher: a device added on one node (by the CLI or the
API) connects with its generated secret on the other; disabled or deleted on
one node, it is refused and cut off on the other; and its presence (online,
from where, offline again) is what both nodes' APIs show, whichever node it
is connected to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.mqtt.packets import ReasonCode
from tests.integration.mqtt._clients import Paho, close_all
from tests.mesh.nodes import Node, receiving, wait_for

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = ReasonCode.NOT_AUTHORIZED.value

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: devices}
spec:
  listeners: [{host: 127.0.0.1, port: 1883}]
  topics: ["sensors/#"]
  devices: {}
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""


@pytest.fixture
def nodes(mesh_node: Callable[..., Node], tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    files = tmp_path / "mesh.yaml"
    files.write_text(MESH)
    yield mesh_node("n1", files=[files]), mesh_node("n2", files=[files])
    close_all()


def register(on: Node, seen_by: Node, device: str) -> str:
    """Register ``device`` on one node (the API) once the other knows it too; its secret."""
    answer = on.api("POST", "/api/v1/devices", {"id": device})
    wait_for(f"{device} on {seen_by.name}", lambda: seen_by.api(path=f"/api/v1/devices/{device}"))
    return str(answer["secrets"][0]["secret"])


def connect(node: Node, device: str, secret: str, *, v5: bool = True) -> Paho:
    return Paho(node.mqtt_port, device, v5=v5, username=device, password=secret)


def presence(node: Node, device: str) -> dict[str, Any]:
    answer: dict[str, Any] = node.api(path=f"/api/v1/devices/{device}")["presence"]
    return answer


def online_ids(node: Node) -> list[str]:
    return [d["id"] for d in node.api(path="/api/v1/devices?online=true")["items"]]


def test_a_device_added_on_one_node_connects_on_the_other(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    added = n1.cli("device", "add", "pump-1", "--label", "site=north")
    assert added.returncode == 0, added.stderr
    secret = re.search(r"^secret: (\S+)$", added.stdout, re.M)
    assert secret is not None, added.stdout
    # n2 learns of it by its watcher: it connects there with its secret, and only with it.
    wait_for("pump-1 on n2", lambda: n2.api(path="/api/v1/devices/pump-1"))
    assert connect(n2, "pump-1", "guess").connack()[0] == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    device = connect(n2, "pump-1", secret.group(1), v5=False)
    assert device.connack()[0] == 0

    # Both nodes see it online, connected to n2.
    for node in (n1, n2):
        seen = wait_for(f"pump-1 online on {node.name}", lambda n=node: _online(n, "pump-1"))
        assert seen["clientId"] == "pump-1" and seen["protocol"] == "3.1.1"
        assert online_ids(node) == ["pump-1"]
    device.close()
    for node in (n1, n2):
        wait_for(f"pump-1 offline on {node.name}", lambda n=node: _offline(n, "pump-1"))
        assert online_ids(node) == []


def test_disabled_on_one_node_cut_off_on_the_other(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    secret = register(n2, n1, "valve-7")
    device = connect(n1, "valve-7", secret)
    assert device.connack()[0] == 0
    wait_for("valve-7 online on n2", lambda: _online(n2, "valve-7"))

    disabled = n2.cli("device", "disable", "valve-7")
    assert disabled.returncode == 0, disabled.stderr
    # MQTT 5: DISCONNECT 0x87 from n1, as soon as n1's watcher has the change.
    assert device.disconnects.get(timeout=30) == NOT_AUTHORIZED
    assert connect(n1, "valve-7", secret).connack()[0] == NOT_AUTHORIZED
    for node in (n1, n2):
        wait_for(f"valve-7 offline on {node.name}", lambda n=node: _offline(n, "valve-7"))

    n1.api("PATCH", "/api/v1/devices/valve-7", {"enabled": True})
    wait_for("valve-7 enabled on n2", lambda: n2.api(path="/api/v1/devices/valve-7")["enabled"])
    again = connect(n2, "valve-7", secret)
    assert again.connack()[0] == 0
    wait_for("valve-7 online on n1", lambda: _online(n1, "valve-7"))


def test_deleted_on_one_node_cut_off_on_the_other(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    secret = register(n1, n2, "meter-3")
    device = connect(n2, "meter-3", secret, v5=False)
    assert device.connack()[0] == 0
    wait_for("meter-3 online on n1", lambda: _online(n1, "meter-3"))

    deleted = n1.cli("device", "delete", "meter-3")
    assert deleted.returncode == 0, deleted.stderr
    wait_for("meter-3 cut off on n2", lambda: not device.client.is_connected())
    assert connect(n2, "meter-3", secret).connack()[0] == NOT_AUTHORIZED
    assert connect(n1, "meter-3", secret).connack()[0] == NOT_AUTHORIZED
    for node in (n1, n2):
        assert online_ids(node) == []


def test_presence_follows_a_device_that_moves_between_nodes(nodes: tuple[Node, Node]) -> None:
    n1, n2 = nodes
    secret = register(n1, n2, "gw-1")
    first = connect(n1, "gw-1", secret)
    assert first.connack()[0] == 0
    for node in (n1, n2):
        wait_for(f"gw-1 online on {node.name}", lambda n=node: _online(n, "gw-1"))
    # The same device connecting to n2 takes n1's connection over: it stays online,
    # now on n2, whatever order the two nodes' records reach the store in.
    second = connect(n2, "gw-1", secret)
    assert second.connack()[0] == 0
    assert first.disconnects.get(timeout=30) == ReasonCode.SESSION_TAKEN_OVER
    for node in (n1, n2):
        wait_for(
            f"gw-1 online on {node.name}, its second connection",
            lambda n=node: (_online(n, "gw-1") or {}).get("node") == "n2",
        )
    # Whatever came late from n1 (its connection's end) does not make it offline.
    n1.stop()
    n1.start()
    for node in (n1, n2):
        seen = wait_for(f"gw-1 online on {node.name}", lambda n=node: _online(n, "gw-1"))
        assert seen["node"] == "n2"
    second.close()
    for node in (n1, n2):
        wait_for(f"gw-1 offline on {node.name}", lambda n=node: _offline(n, "gw-1"))


def _online(node: Node, device: str) -> dict[str, Any] | None:
    seen = presence(node, device)
    return seen if seen["online"] else None


def _offline(node: Node, device: str) -> dict[str, Any] | None:
    seen = presence(node, device)
    return seen if not seen["online"] and seen["disconnectedAt"] else None


DISCONNECTED = """\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: disconnects}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.device.disconnected}}
  subscriber: {uri: "%s"}
"""


def test_the_devices_of_a_node_that_died_are_shown_offline(nodes: tuple[Node, Node]) -> None:
    """A node killed with a device connected: once the mesh has lost its heartbeat,
    the other node shows the device offline, says why, and records the
    ``disconnected`` event the dead node could not."""
    n1, n2 = nodes
    secret = register(n1, n2, "probe-9")
    n1.api("PATCH", "/api/v1/devices/probe-9", {"labels": {"site": "north"}})
    with receiving() as receiver:
        n1.apply(DISCONNECTED % receiver.url)
        for node in (n1, n2):
            wait_for(
                f"the Trigger on {node.name}",
                lambda n=node: n.api(path="/api/v1/resources/Trigger/default/disconnects"),
            )
        device = connect(n2, "probe-9", secret)
        assert device.connack()[0] == 0
        wait_for("probe-9 online on n1", lambda: _online(n1, "probe-9"))
        n2.kill()
        # The node registry's TTL (10 s) and presence's look at the nodes (every 5 s).
        seen = wait_for("probe-9 offline on n1", lambda: _offline(n1, "probe-9"), timeout=60)
        assert seen["reason"] == "node n2 is gone" and seen["node"] == "n2"
        assert online_ids(n1) == []
        [event] = receiver.wait_for_blocking(1, within=60)
    assert event.type == "dev.headwater.device.disconnected"
    assert event["device"] == "probe-9" and event.subject == "probe-9"
    body = orjson.loads(event.data_bytes())
    assert body["device"] == "probe-9" and body["labels"] == {"site": "north"}
    # The record written says so too: a node starting now shows it offline.
    n1.stop()
    n1.start()
    assert not presence(n1, "probe-9")["online"]


def test_a_command_reaches_its_device_on_whichever_node_it_is_connected_to(
    nodes: tuple[Node, Node],
) -> None:
    """A command made through one node's API is sent by the node the device is
    connected to, sent again by the node it reconnects to, and its answer,
    taken there, is what a wait on the first node sees."""
    n1, n2 = nodes
    secret = register(n1, n2, "pump-4")
    device = connect(n2, "pump-4", secret)
    assert device.connack()[0] == 0
    device.subscribe("devices/pump-4/commands/+", 1)
    made = n1.api("POST", "/api/v1/devices/pump-4/commands", {"data": {"speed": 3}})
    message = device.get(timeout=30)
    assert message.topic == f"devices/pump-4/commands/{made['id']}"
    with ThreadPoolExecutor(1) as pool:  # the API's long poll on n1 (before or after the answer)
        waiting = pool.submit(n1.api, path=f"/api/v1/devices/pump-4/commands/{made['id']}?wait=8")
        device.publish(f"devices/pump-4/responses/{made['id']}", b'{"ok": true}', 1)
        done = waiting.result(timeout=15)
    assert done["status"] == "answered" and done["response"]["data"] == {"ok": True}

    # Sent on n1, unanswered; the device reconnects to n2 and answers there.
    device.close()
    wait_for("pump-4 offline on n1", lambda: _offline(n1, "pump-4"))
    device = connect(n1, "pump-4", secret)
    assert device.connack()[0] == 0
    device.subscribe("devices/pump-4/commands/+", 1)
    again = n2.api("POST", "/api/v1/devices/pump-4/commands", {"data": "stop"})
    assert device.get(timeout=30).topic == f"devices/pump-4/commands/{again['id']}"
    wait_for("n2 knows it was sent once", lambda: _sent(n2, "pump-4", again["id"]) == 1)
    device.close()
    moved = connect(n2, "pump-4", secret)
    assert moved.connack()[0] == 0
    moved.subscribe("devices/pump-4/commands/+", 1)
    assert moved.get(timeout=30).topic == f"devices/pump-4/commands/{again['id']}"
    moved.publish(f"devices/pump-4/responses/{again['id']}", b"stopped", 1)
    for node in (n1, n2):
        seen = wait_for(
            f"the answer on {node.name}",
            lambda n=node: _answered(n, "pump-4", again["id"]),
        )
        assert seen["attempts"] == 2 and seen["response"]["data"] == "stopped"


def _sent(node: Node, device: str, command: str) -> int:
    seen: dict[str, Any] = node.api(path=f"/api/v1/devices/{device}/commands/{command}")
    return int(seen["attempts"])


def _answered(node: Node, device: str, command: str) -> dict[str, Any] | None:
    seen: dict[str, Any] = node.api(path=f"/api/v1/devices/{device}/commands/{command}")
    return seen if seen["status"] == "answered" else None
