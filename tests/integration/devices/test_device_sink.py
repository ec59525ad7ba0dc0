"""Events become commands and desired state through a DeviceSink: once, whatever the retries."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import MakeNode, Node
from tests.integration.devices.test_commands import answer, online_device

pytestmark = pytest.mark.integration

SINK = """\
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: DeviceSink
metadata: {name: devices}
spec: {expiry: PT30S}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-devices}
spec:
  broker: default
  filters:
    - cesql: "type IN ('dev.headwater.command', 'dev.headwater.twin.desired')"
  delivery: {retry: 3, backoffDelay: PT0.05S}
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: DeviceSink, name: devices}
"""


def post(
    node: Node, event_id: str, event_type: str, subject: str, data: object, **ext: str
) -> None:
    request = urllib.request.Request(
        f"{node.url}/default/default",
        data=orjson.dumps(data),
        method="POST",
        headers={
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/test",
            "ce-type": event_type,
            "ce-subject": subject,
            "ce-time": "2030-01-01T00:00:00Z",
            "content-type": "application/json",
            **{f"ce-{k}": v for k, v in ext.items()},
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


@pytest.fixture
def sink_node(make_node: MakeNode) -> Node:
    from tests.integration.devices.conftest import DEVICES

    return make_node(DEVICES, extra=SINK)


def test_the_same_event_twice_is_one_command(sink_node: Node) -> None:
    node = sink_node
    device = online_device(node, "pump-1")
    post(node, "e-1", "dev.headwater.command", "pump-1", {"speed": 4}, correlationid="k-1")
    post(node, "e-1", "dev.headwater.command", "pump-1", {"speed": 4}, correlationid="k-1")
    command = answer(device, b'{"ok": true}')
    assert device.nothing(0.5)  # not sent a second time
    wait_until(lambda: node.events("dev.headwater.command.answered") != [])
    [done] = node.ok("GET", "/api/v1/devices/pump-1/commands")["items"]
    assert done["id"] == command and done["status"] == "answered"
    assert done["correlationId"] == "k-1" and done["data"] == {"speed": 4}
    [event] = node.events("dev.headwater.command.answered")
    assert event["correlationid"] == "k-1"
    # Delivered again after it finished (a redelivery after a restart): still one.
    post(node, "e-1", "dev.headwater.command", "pump-1", {"speed": 4}, correlationid="k-1")
    wait_until(lambda: len(node.events("dev.headwater.command")) == 3)
    assert device.nothing(0.5)
    assert len(node.ok("GET", "/api/v1/devices/pump-1/commands")["items"]) == 1


def test_desired_state_from_an_event(sink_node: Node) -> None:
    node = sink_node
    online_device(node, "pump-1")
    post(node, "d-1", "dev.headwater.twin.desired", "pump-1", {"speed": 2})
    wait_until(
        lambda: node.ok("GET", "/api/v1/devices/pump-1/twin")["desired"]["state"] == {"speed": 2}
    )


def test_an_unknown_device_is_a_dead_letter_at_once(sink_node: Node) -> None:
    node = sink_node
    post(node, "x-1", "dev.headwater.command", "nobody", {"speed": 1})
    wait_until(lambda: node.ok("GET", "/api/v1/deadletters")["items"] != [])
    [letter] = node.ok("GET", "/api/v1/deadletters")["items"]
    assert letter["code"] == 404 and "no device 'nobody'" in letter["error"]
