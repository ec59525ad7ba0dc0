"""Events through a running `headwater up`: ingress -> log -> Trigger -> HTTP subscriber."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.headwater_process import Headwater
from tests.helpers import Answer, Receiver, Request, wait_until_blocking


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver.in_thread() as r:
        yield r


MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: hot}}
spec:
  broker: default
  filters:
    - prefix: {{type: dev.headwater.}}
    - not: {{exact: {{subject: ignore-me}}}}
  subscriber:
    uri: {uri}
"""


def test_ingress_to_http_subscriber_with_filters(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(uri=receiver.url))
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    hw.cli(
        "send",
        "--type",
        "dev.headwater.telemetry",
        "--subject",
        "s1",
        "--id",
        "e1",
        "--data",
        '{"temperature": 31}',
        "--ext",
        "zone=north",
    )
    hw.cli("send", "--type", "dev.headwater.telemetry", "--subject", "ignore-me", "--id", "e2")
    hw.cli("send", "--type", "com.other", "--id", "e3")
    hw.cli("send", "--type", "dev.headwater.command", "--id", "e4")
    receiver.wait_for_blocking(2)
    hw.settled()  # all four passed the Trigger: nothing more comes
    assert receiver.ids == ["e1", "e4"]
    first = receiver.requests[0]
    assert first.headers["ce-type"] == "dev.headwater.telemetry"
    assert first.headers["ce-subject"] == "s1"
    assert first.headers["ce-zone"] == "north"
    assert first.headers["ce-source"] == "/headwater/cli"
    assert first.headers["content-type"] == "application/json"
    assert json.loads(first.body) == {"temperature": 31}
    assert first.headers["prefer"] == "reply"
    described = hw.cli("describe", "trigger", "hot").stdout
    assert re.search(r"delivered: +2\n", described) and re.search(r"filtered: +2\n", described)
    assert hw.stop() == 0


def test_acked_events_survive_a_restart_and_replay(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(uri=receiver.url))
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    for i in range(5):
        hw.cli("send", "--type", "dev.headwater.telemetry", "--id", f"r{i}")
    receiver.wait_for_requests(5)
    assert hw.stop() == 0

    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    out = hw.cli("replay", "default", "--from", "earliest", "--to", receiver.url).stdout
    assert f"to {receiver.url}: done; delivered 5, failed 0, remaining 0" in out
    ids = receiver.wait_for_requests(10)
    assert ids[5:] == [f"r{i}" for i in range(5)]
    tail = hw.cli("tail", "--from", "earliest", "--json", "--max", "5").stdout.splitlines()
    assert [json.loads(line)["id"] for line in tail] == [f"r{i}" for i in range(5)]
    assert hw.stop() == 0


def test_bad_events_get_400_and_nothing_breaks(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.format(uri=receiver.url))
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")

    async def post(headers: dict[str, str], body: bytes, path: str = "/default/default") -> int:
        import aiohttp

        async with (
            aiohttp.ClientSession() as session,
            session.post(hw.url + path, headers=headers, data=body) as response,
        ):
            return response.status

    cases = [
        ({"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s"}, b"", 400),  # no type
        ({"content-type": "application/cloudevents+json"}, b"{not json", 400),
        ({"ce-specversion": "9.9", "ce-id": "x", "ce-source": "/s", "ce-type": "t"}, b"", 400),
        ({"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"}, b"", 202),
    ]
    for headers, body, status in cases:
        assert asyncio.run(post(headers, body)) == status
    ok = {"ce-specversion": "1.0", "ce-id": "x", "ce-source": "/s", "ce-type": "t"}
    assert asyncio.run(post(ok, b"", "/default/nope")) == 404
    assert hw.stop() == 0


def test_hot_reload_changes_routing_without_loss(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    only_a = MESH.format(uri=receiver.url).replace(
        "    - prefix: {type: dev.headwater.}\n    - not: {exact: {subject: ignore-me}}\n",
        "    - exact: {type: dev.headwater.a}\n",
    )
    a_or_b = only_a.replace(
        "    - exact: {type: dev.headwater.a}\n",
        "    - any: [{exact: {type: dev.headwater.a}}, {exact: {type: dev.headwater.b}}]\n",
    )
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(only_a)
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data", "--watch")
    sent: list[str] = []

    def send(type_: str, count: int) -> None:
        for _ in range(count):
            event_id = f"{type_}-{len(sent)}"
            hw.cli("send", "--type", f"dev.headwater.{type_}", "--id", event_id)
            sent.append(event_id)

    send("a", 5)
    mesh.write_text(a_or_b)  # reloaded while events keep coming
    send("a", 5)
    wait_until_blocking(
        lambda: "any" in hw.cli("get", "trigger", "hot", "-o", "yaml").stdout,
        what="the changed Trigger reloaded",
    )
    send("b", 3)
    receiver.wait_for_requests(13)
    hw.settled()
    assert sorted(receiver.ids) == sorted(sent)  # none lost, none twice
    assert hw.stop() == 0


def test_cesql_trigger_and_filtered_tail(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    mesh = MESH.format(uri=receiver.url).replace(
        "    - prefix: {type: dev.headwater.}\n    - not: {exact: {subject: ignore-me}}\n",
        "    - cesql: \"type = 'dev.headwater.telemetry' AND INT(temperature) > 30\"\n",
    )
    (tmp_path / "mesh.yaml").write_text(mesh)
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    for i, temperature in enumerate((25, 31, 40)):
        hw.cli(
            "send",
            "--type",
            "dev.headwater.telemetry",
            "--id",
            f"t{i}",
            "--ext",
            f"temperature={temperature}",
        )
    assert receiver.wait_for_requests(2) == ["t1", "t2"]
    tail = hw.cli(
        "tail", "--from", "earliest", "--json", "--max", "1", "--filter", "INT(temperature) < 30"
    ).stdout
    assert json.loads(tail)["id"] == "t0"
    bad = hw.cli("tail", "--filter", "temperature >", check=False)
    assert bad.returncode == 1
    assert "invalid filter: line 1, column 14: expected a value" in bad.stderr
    assert hw.stop() == 0


def test_sigterm_lets_a_delivery_under_way_finish(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    async def after_a_while(request: Request) -> Answer:
        await asyncio.sleep(1.5)
        return 202, {}, b""

    with Receiver.in_thread(answer=after_a_while) as slow:
        (tmp_path / "mesh.yaml").write_text(MESH.format(uri=slow.url))
        hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
        hw.cli("send", "--type", "dev.headwater.telemetry", "--id", "slow-1")
        slow.wait_for_requests(1)  # the delivery started
        assert hw.stop() == 0  # SIGTERM while the subscriber is still working
        assert slow.accepted_ids == ["slow-1"]  # it finished
        # ...and was acknowledged: a restart does not deliver it again.
        hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
        hw.settled()
        assert slow.ids == ["slow-1"]
        assert hw.stop() == 0


CHANNEL = """\
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: orders}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: fulfil}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: orders}}
  subscriber: {{uri: "{uri}"}}
"""


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_a_channel_has_an_http_address_with_the_broker_ingress_status_codes(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    (tmp_path / "mesh.yaml").write_text(CHANNEL.format(uri=receiver.url))
    hw = headwater_up("-f", "mesh.yaml")
    described = hw.cli("describe", "channel", "orders").stdout
    address = f"{hw.url}/channels/default/orders"
    assert re.search(rf"address: +{re.escape(address)}\n", described)
    event = {"ce-specversion": "1.0", "ce-id": "c-1", "ce-source": "/e2e", "ce-type": "t"}
    assert _post(address, b"{}", {**event, "content-type": "application/json"})[0] == 202
    assert receiver.wait_for_requests(1) == ["c-1"]
    status, reason = _post(address, b"{}", {"content-type": "application/json"})
    assert status == 400 and reason.startswith("invalid CloudEvent")
    missing = _post(f"{hw.url}/channels/default/nothing", b"{}", event)
    assert missing == (404, "channel default/nothing not found\n")
    assert hw.stop() == 0
