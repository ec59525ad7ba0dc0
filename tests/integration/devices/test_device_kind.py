"""Devices kept in git: the Device kind owns its registry entry; the API may not change it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from headwater.mqtt.auth import hash_password
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import DEVICES, MESH, Node
from tests.integration.devices.test_registry_auth import connect

pytestmark = pytest.mark.integration

PUMP = """\
---
apiVersion: devices.headwater.dev/v1alpha1
kind: Device
metadata:
  name: pump-7
  labels: {site: north}
spec:
  credentials:
    - type: password
      password: ${PUMP_PASSWORD}
    - type: password
      hash: "%(hash)s"
"""


@pytest.fixture
def defined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Node:
    monkeypatch.setenv("PUMP_PASSWORD", "from the environment")
    text = MESH % {"devices": DEVICES} + PUMP % {"hash": hash_password("from a hash")}
    started: list[Node] = []
    node = Node(tmp_path, text, started)
    yield node
    for one in started:
        one.stop()


def test_a_file_defines_a_device(defined: Node) -> None:
    node = defined
    device = node.ok("GET", "/api/v1/devices/pump-7")
    assert device["labels"] == {"site": "north"}
    assert device["owner"]["resource"] == "Device/default/pump-7"
    assert "mesh.yaml" in device["owner"]["origin"]
    assert connect(node, "pump-7", "from the environment").connack()[0] == 0
    assert connect(node, "pump-7", "from a hash", client_id="pump-7").connack()[0] == 0
    status, body = node.api("PATCH", "/api/v1/devices/pump-7", {"enabled": False})
    assert status == 409 and "defined by Device/default/pump-7" in body["error"]
    status, _ = node.api("DELETE", "/api/v1/devices/pump-7")
    assert status == 409
    # Its status is its presence.
    resource = node.ok("GET", "/api/v1/resources/device/default/pump-7")
    assert resource["status"]["device"] == "pump-7" and resource["status"]["online"]


def test_a_restart_keeps_the_hash_and_writes_nothing(defined: Node) -> None:
    node = defined
    before = node.ok("GET", "/api/v1/devices/pump-7")
    node = node.restart()
    after = node.ok("GET", "/api/v1/devices/pump-7")
    assert after["revision"] == before["revision"]  # the password checked, not hashed again
    assert [c["id"] for c in after["credentials"]] == [c["id"] for c in before["credentials"]]


def test_removing_it_from_the_files_removes_the_device(defined: Node, tmp_path: Path) -> None:
    node = defined
    assert connect(node, "pump-7", "from the environment").connack()[0] == 0
    node.stop()
    node.mesh = MESH % {"devices": DEVICES}
    node = node.restart()
    status, _ = node.api("GET", "/api/v1/devices/pump-7")
    assert status == 404  # its file no longer defines it: deleted at start
    assert os.path.exists(tmp_path / "mesh.yaml")


def test_applied_and_deleted_through_the_api(defined: Node) -> None:
    node = defined
    body = """\
apiVersion: devices.headwater.dev/v1alpha1
kind: Device
metadata: {name: valve-1}
spec:
  id: Valve_1
  credentials: [{type: x509, subject: "CN=Valve_1"}]
"""
    status, answer = node.api(
        "POST", "/api/v1/resources", raw=body.encode(), content_type="application/yaml"
    )
    assert status == 200, answer
    device = node.ok("GET", "/api/v1/devices/Valve_1")
    assert device["owner"]["resource"] == "Device/default/valve-1"
    node.ok("DELETE", "/api/v1/resources/device/default/valve-1")
    wait_until(lambda: node.api("GET", "/api/v1/devices/Valve_1")[0] == 404)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        pytest.param("spec: {id: 'a/b'}", "one MQTT topic level", id="bad-id"),
        pytest.param("spec: {credentials: [{type: secret}]}", "password", id="secret"),
        pytest.param("spec: {credentials: [{type: password}]}", "`password` or `hash`", id="empty"),
        pytest.param(
            "spec: {credentials: [{type: x509, fingerprint: xyz}]}", "SHA-256", id="fingerprint"
        ),
        pytest.param("spec: {enabled: maybe}", "bool", id="enabled"),
    ],
)
def test_a_bad_device_resource_is_refused_with_its_line(
    defined: Node, spec: str, says: str
) -> None:
    head = "apiVersion: devices.headwater.dev/v1alpha1\nkind: Device\nmetadata: {name: d}\n"
    body = f"{head}{spec}\n"
    status, answer = defined.api(
        "POST", "/api/v1/resources", raw=body.encode(), content_type="application/yaml"
    )
    assert status == 422, answer
    [problem] = answer["problems"]
    assert says in problem["message"] and problem["line"] is not None, problem
