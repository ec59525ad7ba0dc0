"""`headwater up` end to end: a subprocess driven by the CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from paho.mqtt import publish

from tests.e2e.headwater_process import HEADWATER, Headwater

DISPLAY = """\
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
"""

PING = """\
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: beat}
spec:
  schedule: "* * * * *"
  sink:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
"""


def test_up_serves_resources_to_the_cli_and_stops_cleanly(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "mesh.yaml").write_text(DISPLAY + PING)
    hw = headwater_up("-f", "mesh.yaml")
    table = hw.cli("get", "pingsource").stdout
    assert "beat" in table and "True" in table
    described = hw.cli("describe", "pingsource", "beat").stdout
    assert "Ready=True" in described and "schedule: '* * * * *'" in described
    items = orjson.loads(hw.cli("get", "eventdisplays", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in items] == ["display"]
    assert hw.stop() == 0


def test_apply_and_delete_through_the_cli(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "empty").mkdir()
    hw = headwater_up("-f", "empty")
    (tmp_path / "d.yaml").write_text(DISPLAY + PING)
    out = hw.cli("apply", "-f", str(tmp_path / "d.yaml")).stdout
    assert "eventdisplay/display created" in out and "pingsource/beat created" in out
    assert "pingsource/beat unchanged" in hw.cli("apply", "-f", str(tmp_path / "d.yaml")).stdout
    hw.cli("delete", "pingsource", "beat")
    missing = hw.cli("get", "pingsource", "beat", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no PingSource 'beat' in namespace 'default'"
    assert hw.stop() == 0


def test_config_error_exits_1_with_file_line_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(DISPLAY + PING.replace("schedule:", "schedul:"))
    result = subprocess.run(
        [*HEADWATER, "up", "--http-port", "0", "--mqtt-port", "0", "-f", "bad.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert (
        "bad.yaml:9: PingSource beat: spec.schedul: unknown field `schedul` "
        "(did you mean `schedule`?)" in result.stderr
    )


@pytest.mark.parametrize(
    ("flag", "other", "name"),
    [("--http-port", "--mqtt-port", "HTTP"), ("--mqtt-port", "--http-port", "MQTT")],
)
def test_port_in_use_names_the_flag(tmp_path: Path, flag: str, other: str, name: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [*HEADWATER, "up", flag, str(port), other, "0"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"{name} port {port} on 127.0.0.1 is in use; choose another with {flag}" in (
        result.stderr
    )


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_the_embedded_default_takes_mqtt_publishes_into_the_default_broker(
    headwater_up: Callable[..., Headwater], loop: str
) -> None:
    hw = headwater_up("--loop", loop)
    mqtt_url = next(
        m.group(1)
        for line in hw.output
        if (m := re.search(r"mqtt listening on (mqtt://\S+)", line))
    )
    assert any(f"dashboard on {hw.url}/" in line for line in hw.output)
    assert any(line.rstrip().endswith(f": event loop {loop}") for line in hw.output)
    host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    publish.single(
        "sensors/s1/temperature", b'{"temperature": 21.5}', qos=1, hostname=host, port=int(port)
    )
    # PUBACK came after the durable append: the event is in the Broker's history.
    tail = hw.cli("tail", "--from", "earliest", "--json", "--max", "3")
    events = [orjson.loads(line) for line in tail.stdout.splitlines()]
    assert [e["type"] for e in events] == [
        "dev.headwater.device.connected",
        "dev.headwater.mqtt.message",
        "dev.headwater.device.disconnected",
    ]
    assert events[1]["mqtttopic"] == "sensors/s1/temperature"
    assert events[1]["data"] == {"temperature": 21.5}
    assert hw.stop() == 0


def test_non_loopback_without_token_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*HEADWATER, "up", "--http-port", "0", "--mqtt-port", "0", "--host", "0.0.0.0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "without a token" in result.stderr


def test_watch_reloads_changed_files(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(DISPLAY)
    hw = headwater_up("-f", "mesh.yaml", "--watch")
    assert "No" not in hw.cli("get", "eventdisplay").stdout
    mesh.write_text(DISPLAY + PING)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if "beat" in hw.cli("get", "pingsource").stdout:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the new PingSource never appeared")
    mesh.write_text(DISPLAY)
    deadline = time.monotonic() + 10
    while "beat" in hw.cli("get", "pingsource").stdout:
        assert time.monotonic() < deadline, "the removed PingSource is still there"
        time.sleep(0.2)
    assert hw.stop() == 0
