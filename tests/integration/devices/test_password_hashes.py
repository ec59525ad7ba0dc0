"""A supplied password hash scrypt cannot check (too much memory) is a 400 with why, everywhere."""

from __future__ import annotations

import pytest

from headwater.mqtt.auth import hash_password
from tests.integration.devices.conftest import Node
from tests.integration.devices.test_registry_auth import connect

pytestmark = pytest.mark.integration

#: n=65536, r=8: a little more memory than the checker lets scrypt have (64 MiB).
TOO_BIG = "$scrypt$n=65536,r=8,p=1$c2FsdA==$a2V5"


def test_the_api_refuses_it_with_why(node: Node) -> None:
    status, answer = node.api(
        "POST",
        "/api/v1/devices",
        {"id": "d", "credentials": [{"type": "password", "hash": TOO_BIG}]},
    )
    assert status == 400 and "memory" in answer["error"], answer
    node.ok("POST", "/api/v1/devices", {"id": "d"})
    status, answer = node.api(
        "POST", "/api/v1/devices/d/credentials", {"type": "password", "hash": TOO_BIG}
    )
    assert status == 400 and "memory" in answer["error"], answer
    status, answer = node.api(
        "PATCH", "/api/v1/devices/d", {"addCredentials": [{"type": "password", "hash": TOO_BIG}]}
    )
    assert status == 400 and "memory" in answer["error"], answer
    # A hash that fits is taken as it is, and lets the device in.
    node.ok(
        "POST",
        "/api/v1/devices/d/credentials",
        {"type": "password", "hash": hash_password("from a hash")},
    )
    assert connect(node, "d", "from a hash").connack()[0] == 0


def test_a_device_resource_with_it_is_refused_with_its_line(node: Node) -> None:
    body = (
        "apiVersion: devices.headwater.dev/v1alpha1\nkind: Device\nmetadata: {name: d}\n"
        f'spec: {{credentials: [{{type: password, hash: "{TOO_BIG}"}}]}}\n'
    )
    status, answer = node.api(
        "POST", "/api/v1/resources", raw=body.encode(), content_type="application/yaml"
    )
    assert status == 422, answer
    [problem] = answer["problems"]
    assert "password hash" in problem["message"] and problem["line"] is not None, problem
