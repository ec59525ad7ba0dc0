"""Commands: queued durably, sent at most once per connection, answered, expired, re-sent."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import Node
from tests.integration.devices.test_registry_auth import connect, register
from tests.integration.mqtt._clients import Paho, publish_properties

pytestmark = pytest.mark.integration


def send(node: Node, device: str, data: Any, **body: Any) -> dict[str, Any]:
    status, answer = node.api("POST", f"/api/v1/devices/{device}/commands", {"data": data, **body})
    assert status == 201, answer
    result: dict[str, Any] = answer
    return result


def status(node: Node, device: str, command: str, wait: float = 0) -> dict[str, Any]:
    result: dict[str, Any] = node.ok(
        "GET", f"/api/v1/devices/{device}/commands/{command}?wait={wait}"
    )
    return result


def online_device(node: Node, device: str, *, v5: bool = True, filter_: str = "") -> Paho:
    secret = register(node, device)
    client = connect(node, device, secret, v5=v5)
    client.connack()
    client.subscribe(filter_ or f"devices/{device}/commands/+", 1)
    return client


def answer(client: Paho, payload: bytes, *, code: int | None = None) -> str:
    """Answer the next command (by its Response Topic on MQTT 5, its topic otherwise)."""
    message = client.get()
    props = message.properties
    command = message.topic.rsplit("/", 1)[1]
    device = message.topic.split("/")[1]
    topic = f"devices/{device}/responses/{command}" + (f"/{code}" if code else "")
    if client.v5 and code is None:
        assert props is not None
        assert props.ResponseTopic == topic  # type: ignore[attr-defined]
        assert props.CorrelationData == command.encode()  # type: ignore[attr-defined]
        reply = publish_properties(CorrelationData=props.CorrelationData)  # type: ignore[attr-defined]
        client.publish(props.ResponseTopic, payload, 1, properties=reply)  # type: ignore[attr-defined]
    else:
        client.publish(topic, payload, 1)
    return command


@pytest.mark.parametrize("v5", [False, True], ids=["3.1.1", "5.0"])
def test_a_command_is_answered(node: Node, v5: bool) -> None:
    device = online_device(node, "pump-1", v5=v5)
    created = send(node, "pump-1", {"speed": 3})
    assert created["status"] == "sent" and created["attempts"] == 1
    assert answer(device, b'{"ok": true}') == created["id"]
    done = status(node, "pump-1", created["id"], wait=10)
    assert done["status"] == "answered"
    assert done["response"] == {"code": 200, "contentType": None, "data": {"ok": True}}
    assert done["data"] == {"speed": 3}
    # The answer is recorded as an event, with the command id as correlationid.
    wait_until(lambda: node.events("dev.headwater.command.answered") != [])
    [event] = node.events("dev.headwater.command.answered")
    assert event["correlationid"] == created["id"] and event.subject == "pump-1"


def test_a_device_says_it_failed(node: Node) -> None:
    device = online_device(node, "pump-1", v5=False)
    created = send(node, "pump-1", "reboot", contentType="text/plain")
    answer(device, b"no power", code=503)
    done = status(node, "pump-1", created["id"], wait=10)
    assert done["status"] == "failed" and done["response"]["code"] == 503
    assert done["response"]["data"] == "no power" and done["data"] == "reboot"


def test_a_command_waits_for_its_device_and_survives_a_restart(node: Node) -> None:
    secret = register(node, "pump-1")
    created = send(node, "pump-1", {"speed": 1}, expiry=120)
    assert created["status"] == "queued" and created["attempts"] == 0
    node = node.restart()
    assert status(node, "pump-1", created["id"])["status"] == "queued"
    client = connect(node, "pump-1", secret)
    client.connack()
    # Online is not enough: it is sent once the device subscribed to its commands.
    assert status(node, "pump-1", created["id"])["status"] == "queued"
    client.subscribe("devices/pump-1/commands/+", 1)
    assert answer(client, b"done") == created["id"]
    assert status(node, "pump-1", created["id"], wait=10)["status"] == "answered"


def test_an_expired_command_is_never_sent(node: Node) -> None:
    secret = register(node, "pump-1")
    created = send(node, "pump-1", {"speed": 1}, expiry=1)
    done = status(node, "pump-1", created["id"], wait=10)
    assert done["status"] == "expired" and done["attempts"] == 0
    assert "never sent" in done["reason"]
    client = connect(node, "pump-1", secret)
    client.connack()
    client.subscribe("devices/pump-1/commands/+", 1)
    assert client.nothing(0.5)
    wait_until(lambda: node.events("dev.headwater.command.expired") != [])


def test_resent_after_a_reconnect_with_the_same_id_once_per_connection(node: Node) -> None:
    device = online_device(node, "pump-1")
    created = send(node, "pump-1", {"speed": 2})
    first = device.get()
    assert first.topic == f"devices/pump-1/commands/{created['id']}"
    # Subscribing again on the same connection does not send it again.
    device.subscribe("devices/pump-1/commands/#", 1)
    assert device.nothing(0.5)
    device.close()  # no answer: it stays sent, unanswered
    secret_again = node.ok("POST", "/api/v1/devices/pump-1/credentials", {"type": "secret"})
    client = connect(node, "pump-1", secret_again["secrets"][0]["secret"])
    client.connack()
    client.subscribe("devices/pump-1/commands/+", 1)
    again = client.get()
    assert again.topic == first.topic and again.payload == first.payload  # the same id
    assert status(node, "pump-1", created["id"])["attempts"] == 2
    reply = publish_properties(CorrelationData=created["id"].encode())
    client.publish(f"devices/pump-1/responses/{created['id']}", b"ok", 1, properties=reply)
    assert status(node, "pump-1", created["id"], wait=10)["status"] == "answered"
    # A duplicate answer changes nothing.
    client.publish(f"devices/pump-1/responses/{created['id']}", b"again", 1)
    assert status(node, "pump-1", created["id"])["response"]["data"] == "ok"


def test_an_answer_after_expiry_is_kept(node: Node) -> None:
    device = online_device(node, "pump-1")
    created = send(node, "pump-1", {"go": 1}, expiry=1)
    message = device.get()
    assert status(node, "pump-1", created["id"], wait=10)["status"] == "expired"
    device.publish(message.properties.ResponseTopic, b"late", 1)  # type: ignore[union-attr]
    wait_until(lambda: status(node, "pump-1", created["id"])["status"] == "answered")
    assert status(node, "pump-1", created["id"])["reason"] == "answered after it expired"


def test_wait_returns_when_the_answer_comes(node: Node) -> None:
    device = online_device(node, "pump-1")
    created = send(node, "pump-1", {"speed": 2})
    got: list[dict[str, Any]] = []
    waiting = threading.Thread(
        target=lambda: got.append(status(node, "pump-1", created["id"], wait=30))
    )
    waiting.start()
    commands = node.runtime.devices.commands
    wait_until(lambda: node.run(lambda: bool(commands._waiters)))  # it waits
    answer(device, b"1")
    waiting.join(30)
    assert got and got[0]["status"] == "answered"


def test_listing_the_last_commands(node: Node) -> None:
    device = online_device(node, "pump-1")
    ids = [send(node, "pump-1", n)["id"] for n in range(3)]
    for _ in ids:
        answer(device, b"ok")
    for command in ids:
        status(node, "pump-1", command, wait=10)
    send(node, "pump-1", 3, expiry=60)  # sent, waiting
    listed = node.ok("GET", "/api/v1/devices/pump-1/commands?limit=3")["items"]
    assert [c["status"] for c in listed] == ["sent", "answered", "answered"]
    assert [c["id"] for c in listed[1:]] == ids[:0:-1]


@pytest.mark.parametrize(
    ("path", "body", "code", "says"),
    [
        pytest.param(
            "/api/v1/devices/nobody/commands", {"data": 1}, 404, "no device", id="unknown"
        ),
        pytest.param(
            "/api/v1/devices/bad%2Fid/commands", {"data": 1}, 400, "not valid", id="bad-id"
        ),
        pytest.param(
            "/api/v1/devices/pump-1/commands", {"data": 1, "expiry": 0}, 400, "expiry", id="expiry"
        ),
        pytest.param(
            "/api/v1/devices/pump-1/commands", {"data": 1, "x": 1}, 400, "unknown", id="field"
        ),
        pytest.param(
            "/api/v1/devices/pump-1/commands", {"dataBase64": "%%"}, 400, "base64", id="b64"
        ),
        pytest.param(
            "/api/v1/devices/pump-1/commands", {"data": "x" * 300_000}, 400, "limit", id="large"
        ),
    ],
)
def test_bad_commands_are_refused(node: Node, path: str, body: Any, code: int, says: str) -> None:
    register(node, "pump-1")
    status_, answer_ = node.api("POST", path, body)
    assert status_ == code and says in answer_["error"], answer_
    assert node.ok("GET", "/api/v1/devices/pump-1/commands")["items"] == []


def test_a_deleted_device_fails_its_commands(node: Node) -> None:
    register(node, "pump-1")
    created = send(node, "pump-1", 1)
    node.ok("DELETE", "/api/v1/devices/pump-1")
    wait_until(lambda: node.events("dev.headwater.command.failed") != [])
    [event] = node.events("dev.headwater.command.failed")
    assert orjson.loads(event.data)["reason"] == "the device was deleted"  # type: ignore[arg-type]
    assert created
