"""Registered devices connect with their credentials, within their ACL templates, or not at all."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest

from headwater.devices.credentials import certificate_info
from headwater.mqtt.packets import ProtocolVersion, ReasonCode
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import MakeNode, Node
from tests.integration.mqtt._clients import Paho, make_certificates

pytestmark = pytest.mark.integration

BAD_CREDENTIALS = ReasonCode.BAD_USER_NAME_OR_PASSWORD.value
NOT_AUTHORIZED = ReasonCode.NOT_AUTHORIZED.value


def register(node: Node, device: str, **body: Any) -> str:
    """Register ``device``; returns its generated secret."""
    answer = node.ok("POST", "/api/v1/devices", {"id": device, **body})
    [secret] = answer["secrets"]
    assert secret["device"] == device
    return str(secret["secret"])


def connect(node: Node, device: str, password: str | None, *, v5: bool = True, **kw: Any) -> Paho:
    client = Paho(
        node.port, kw.pop("client_id", device), v5=v5, username=device, password=password, **kw
    )
    return client


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
def test_right_and_wrong_credentials(node: Node, v5: bool) -> None:
    secret = register(node, "pump-1")
    assert connect(node, "pump-1", secret, v5=v5).connack()[0] == 0
    assert (
        connect(node, "pump-1", "guess", v5=v5, client_id="pump-1").connack()[0] == BAD_CREDENTIALS
    )
    assert connect(node, "pump-1", None, v5=v5).connack()[0] == BAD_CREDENTIALS
    # Not a device, no password file: authentication is configured, so no anonymous access.
    assert connect(node, "stranger", "x", v5=v5).connack()[0] == NOT_AUTHORIZED
    # One device is one session: the client id must be the device id.
    other_id = connect(node, "pump-1", secret, v5=v5, client_id="not-pump-1").connack()[0]
    assert other_id == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID.value


def test_a_chosen_password_is_a_credential_too(node: Node) -> None:
    node.ok(
        "POST",
        "/api/v1/devices",
        {"id": "valve-7", "credentials": [{"type": "password", "password": "correct horse"}]},
    )
    assert connect(node, "valve-7", "correct horse").connack()[0] == 0
    assert connect(node, "valve-7", "wrong horse").connack()[0] == BAD_CREDENTIALS
    shown = node.ok("GET", "/api/v1/devices/valve-7")
    assert [c["type"] for c in shown["credentials"]] == ["password"]
    assert "hash" not in shown["credentials"][0]  # never shown


def test_acl_templates_are_enforced(node: Node) -> None:
    secret = register(node, "pump-1")
    register(node, "pump-2")
    device = connect(node, "pump-1", secret)
    device.connack()
    # Its own topics, by template; another device's are not its business.
    assert device.subscribe("devices/pump-1/#", 1) == [1]
    assert device.get().topic == "devices/pump-1/twin/delta"  # retained: in sync
    assert device.subscribe("devices/pump-2/#", 1) == [NOT_AUTHORIZED]
    assert device.subscribe("#", 1) == [NOT_AUTHORIZED]
    device.publish("sensors/pump-1/climate", b'{"temperature": 20}', 1)
    device.publish("devices/pump-1/status", b"up", 1)
    assert device.get().topic == "devices/pump-1/status"  # its own, back to it
    device.publish("devices/pump-2/x", b"forged", 1)  # 5.0: PUBACK 0x87
    # Headwater's own topics: a device cannot forge its commands or its desired state.
    device.publish("devices/pump-1/commands/123", b"forged", 1)
    device.publish("devices/pump-1/twin/delta", b"{}", 1, retain=True)
    assert device.nothing()
    source = node.runtime.reconciler.component(("MqttBrokerSource", "default", "mqtt")).source
    stats = node.run(lambda: source.broker.stats)
    assert stats.denied_publish == 3
    assert stats.denied_subscribe == 2
    [delta] = node.run(lambda: source.broker.retained.match("devices/pump-1/twin/delta", 0.0))
    assert orjson.loads(delta.payload)["state"] == {}  # Headwater's, not the forged one


def test_a_disabled_device_is_refused_and_cut_off_at_once(node: Node) -> None:
    secret = register(node, "pump-1")
    device = connect(node, "pump-1", secret)
    assert device.connack()[0] == 0
    node.ok("PATCH", "/api/v1/devices/pump-1", {"enabled": False})
    assert device.disconnects.get(timeout=5) == NOT_AUTHORIZED
    assert connect(node, "pump-1", secret).connack()[0] == NOT_AUTHORIZED
    # A wrong password on a disabled device says "bad credentials", not "it exists".
    assert connect(node, "pump-1", "guess", client_id="pump-1").connack()[0] == BAD_CREDENTIALS
    node.ok("PATCH", "/api/v1/devices/pump-1", {"enabled": True})
    assert connect(node, "pump-1", secret, client_id="pump-1").connack()[0] == 0


def test_a_deleted_device_is_cut_off(node: Node) -> None:
    secret = register(node, "pump-1")
    device = connect(node, "pump-1", secret, v5=False)
    assert device.connack()[0] == 0
    node.ok("DELETE", "/api/v1/devices/pump-1")
    wait_until(lambda: not device.client.is_connected())
    assert connect(node, "pump-1", secret, client_id="pump-1").connack()[0] == NOT_AUTHORIZED


def test_secrets_rotate_and_the_removed_one_is_cut_off(node: Node) -> None:
    old = register(node, "pump-1")
    answer = node.ok("POST", "/api/v1/devices/pump-1/credentials", {"type": "secret"})
    [shown] = answer["secrets"]
    new = shown["secret"]
    on_old = connect(node, "pump-1", old)
    assert on_old.connack()[0] == 0
    old_id = next(
        c["id"] for c in answer["device"]["credentials"] if c["id"] != shown["credential"]
    )
    node.ok("DELETE", f"/api/v1/devices/pump-1/credentials/{old_id}")
    assert on_old.disconnects.get(timeout=5) == NOT_AUTHORIZED
    assert connect(node, "pump-1", old, client_id="pump-1").connack()[0] == BAD_CREDENTIALS
    assert connect(node, "pump-1", new, client_id="pump-1").connack()[0] == 0


# -- X.509 --------------------------------------------------------------------------------

TLS_DEVICES = """\
    provisioning:
      caFile: %(ca)s
      labels: {provisioned: auto}
"""

TLS_LISTENER = """\
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: mqtts}
spec:
  listeners:
    - port: 0
      tls: {certFile: %(server)s, keyFile: %(key)s, caFile: %(ca)s, requireClientCert: true}
  devices:
%(devices)s
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""


def _tls_port(node: Node) -> int:
    return int(node.server.urls["mqtt/default/mqtts"].rsplit(":", 1)[1])  # type: ignore[union-attr]


def _client_tls(certs: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs["ca"]))
    context.load_cert_chain(certs["client"], certs["client-key"])
    return context


def _tls_node(make_node: MakeNode, tmp_path: Path, devices: str) -> tuple[Node, dict[str, Path]]:
    certs = make_certificates(tmp_path)
    paths = {k: str(v) for k, v in certs.items()}
    listener = TLS_LISTENER % {
        "server": paths["server"],
        "key": paths["server-key"],
        "ca": paths["ca"],
        "devices": devices % {"ca": paths["ca"]},
    }
    return make_node(extra=listener), certs


def test_a_registered_certificate_authenticates_its_device(
    make_node: MakeNode, tmp_path: Path
) -> None:
    node, certs = _tls_node(make_node, tmp_path, '    publish: ["devices/{device}/#"]\n')
    fingerprint = certificate_info(
        ssl.PEM_cert_to_DER_cert(certs["client"].read_text())
    ).fingerprint
    node.ok(
        "POST",
        "/api/v1/devices",
        {"id": "device-1", "credentials": [{"type": "x509", "fingerprint": fingerprint.upper()}]},
    )
    client = Paho(_tls_port(node), "device-1", tls=_client_tls(certs), connect=False)
    client.client.connect("localhost", _tls_port(node))
    client.client.loop_start()
    assert client.connack()[0] == 0
    presence = node.ok("GET", "/api/v1/devices/device-1")["presence"]
    assert presence["online"] and presence["credential"]


def test_auto_provisioning_registers_a_device_on_first_connect(
    make_node: MakeNode, tmp_path: Path
) -> None:
    node, certs = _tls_node(make_node, tmp_path, TLS_DEVICES)
    status, _ = node.api("GET", "/api/v1/devices/device-1")
    assert status == 404
    client = Paho(_tls_port(node), "device-1", tls=_client_tls(certs), connect=False)
    client.client.connect("localhost", _tls_port(node))
    client.client.loop_start()
    assert client.connack()[0] == 0
    device = node.ok("GET", "/api/v1/devices/device-1")
    assert device["labels"] == {"provisioned": "auto"}
    [credential] = device["credentials"]
    assert credential["type"] == "x509" and credential["subject"] == "CN=device-1"
    assert device["presence"]["online"]


def test_without_provisioning_an_unknown_certificate_registers_nothing(
    make_node: MakeNode, tmp_path: Path
) -> None:
    """Auto-provisioning is off by default: a certificate the listener's CA signed is
    not a device until someone registers it (or turns `provisioning` on)."""
    node, certs = _tls_node(make_node, tmp_path, '    publish: ["devices/{device}/#"]\n')
    client = Paho(_tls_port(node), "device-1", tls=_client_tls(certs), connect=False)
    client.client.connect("localhost", _tls_port(node))
    client.client.loop_start()
    assert client.connack()[0] == NOT_AUTHORIZED
    status, _ = node.api("GET", "/api/v1/devices/device-1")
    assert status == 404


def test_provisioning_never_takes_over_a_registered_id(make_node: MakeNode, tmp_path: Path) -> None:
    node, certs = _tls_node(make_node, tmp_path, TLS_DEVICES)
    register(node, "device-1")  # registered with a secret, not this certificate
    client = Paho(_tls_port(node), "device-1", tls=_client_tls(certs), connect=False)
    client.client.connect("localhost", _tls_port(node))
    client.client.loop_start()
    assert client.connack()[0] == NOT_AUTHORIZED
    [credential] = node.ok("GET", "/api/v1/devices/device-1")["credentials"]
    assert credential["type"] == "secret"


def test_protocol_versions_in_presence(node: Node) -> None:
    secret = register(node, "pump-1")
    connect(node, "pump-1", secret, v5=False).connack()
    presence = node.ok("GET", "/api/v1/devices/pump-1")["presence"]
    assert presence["protocol"] == "3.1.1" and presence["clientId"] == "pump-1"
    assert ProtocolVersion.MQTT311 == 4


def test_the_password_file_keeps_working_beside_the_registry(
    make_node: MakeNode, tmp_path: Path
) -> None:
    from headwater.mqtt.auth import PasswordFile

    passwords = PasswordFile()
    passwords.add_user("dashboard", "a person's password")
    passwords.save(tmp_path / "passwd")
    extra = f"""\
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: both}}
spec:
  listeners: [{{port: 0}}]
  passwordFile: {tmp_path / "passwd"}
  devices: {{}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""
    node = make_node(extra=extra)
    port = int(node.server.urls["mqtt/default/both"].rsplit(":", 1)[1])  # type: ignore[union-attr]
    secret = register(node, "pump-1")
    device = Paho(port, "pump-1", username="pump-1", password=secret)
    assert device.connack()[0] == 0
    person = Paho(port, "anything", username="dashboard", password="a person's password")
    assert person.connack()[0] == 0
    wrong = Paho(port, "x", username="dashboard", password="guess")
    assert wrong.connack()[0] == BAD_CREDENTIALS
    # The person is no device: no presence, and the broker's ACL (none: all topics) applies.
    assert person.subscribe("devices/#", 1) == [1]
