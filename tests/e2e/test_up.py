"""`headwater up` end to end: a subprocess driven by the CLI."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from paho.mqtt import publish

from tests.e2e.headwater_process import HEADWATER, Headwater
from tests.helpers import wait_until_blocking

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
    wait_until_blocking(
        lambda: "beat" in hw.cli("get", "pingsource").stdout, what="the new PingSource"
    )
    mesh.write_text(DISPLAY)
    wait_until_blocking(
        lambda: "beat" not in hw.cli("get", "pingsource").stdout,
        what="the removed PingSource gone",
    )
    assert hw.stop() == 0


MQTT_SOURCE = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners:
{listeners}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""


def mqtt_source(*ports: int) -> str:
    listeners = "\n".join(f"    - {{host: 127.0.0.1, port: {port}}}" for port in ports)
    return MQTT_SOURCE.format(listeners=listeners)


def up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEADWATER, "up", "--http-port", "0", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_listener_of_the_files_that_cannot_bind_stops_the_start(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "mesh.yaml").write_text(mqtt_source(port))
        result = up(tmp_path, "-f", "mesh.yaml")
    assert result.returncode == 1
    assert "ready" not in result.stdout.split()
    assert "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: MqttBrokerSource default/devices (mesh.yaml:5) cannot start: ")
    assert "address already in use" in error


def test_mqtt_port_with_files_moves_their_one_listener(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        (tmp_path / "mesh.yaml").write_text(mqtt_source(taken))
        hw = headwater_up("-f", "mesh.yaml", "--mqtt-port", "0")
    url = next(m.group(1) for line in hw.output if (m := re.search(r"(mqtt://\S+)", line)))
    assert not url.endswith(f":{taken}")
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    publish.single("x", b"{}", qos=1, hostname=host, port=int(port))
    assert hw.stop() == 0


def test_mqtt_port_is_refused_when_files_do_not_have_one_listener(tmp_path: Path) -> None:
    (tmp_path / "two.yaml").write_text(
        mqtt_source(0, 0).replace("port: 0}", "port: 0, name: b}", 1)
    )
    (tmp_path / "none.yaml").write_text(DISPLAY)
    two = up(tmp_path, "-f", "two.yaml", "--mqtt-port", "1884")
    assert two.returncode == 1
    assert (
        "error: --mqtt-port sets the port of the one MQTT listener of your files, but they "
        "have 2 listener(s) in 1 MqttBrokerSource(s) (two.yaml:5): set each listener's port "
        "in its file" in two.stderr
    )
    none = up(tmp_path, "-f", "none.yaml", "--mqtt-port", "1884")
    assert none.returncode == 1
    assert "but they have 0 listener(s) in 0 MqttBrokerSource(s)" in none.stderr


def test_every_problem_of_the_files_comes_in_one_run(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(
        """\
apiVersion: eventing.knative.dev/v1
kind: Triger
metadata: {name: typo}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
spec: {delivery: {backofDelay: PT1S}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: cold}
spec:
  broker: defualt
  subscriber: {uri: "http://127.0.0.1:9/"}
"""
    )
    result = up(tmp_path, "-f", "mesh.yaml")
    assert result.returncode == 1
    assert "unknown kind 'Triger' (did you mean `Trigger`?)" in result.stderr
    assert "unknown field `backofDelay` (did you mean `backoffDelay`?)" in result.stderr
    assert (
        "mesh.yaml:10: Trigger cold: spec.broker: no Broker 'defualt' in namespace 'default' "
        "(did you mean `default`?)" in result.stderr
    )


def test_ignored_knative_fields_are_warned_about(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    broker = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: orders
  annotations: {eventing.knative.dev/broker.class: MTChannelBasedBroker}
spec:
  config: {apiVersion: v1, kind: ConfigMap, name: config-br-default-channel}
"""
    (tmp_path / "broker.yaml").write_text(broker)
    hw = headwater_up("-f", "broker.yaml")
    assert any(
        "broker.yaml:1: Broker orders: spec.config: ignored: Knative points a Broker" in line
        for line in hw.output
    )
    (tmp_path / "other.yaml").write_text(broker.replace("orders", "billing"))
    applied = hw.cli("apply", "-f", str(tmp_path / "other.yaml"))
    assert "broker/billing created" in applied.stdout
    assert (
        "warning: " + str(tmp_path / "other.yaml") + ":1: Broker billing: "
        "metadata.annotations[eventing.knative.dev/broker.class]: ignored: Headwater has one "
        "Broker class (its durable event log), not MTChannelBasedBroker" in applied.stderr
    )
    assert hw.stop() == 0


def test_a_reload_keeps_what_the_api_applied(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(DISPLAY)
    hw = headwater_up("-f", "mesh.yaml", "--watch")
    (tmp_path / "ping.yaml").write_text(PING.removeprefix("---\n"))
    hw.cli("apply", "-f", str(tmp_path / "ping.yaml"))
    mesh.write_text(DISPLAY + "spec: {format: json}\n")
    wait_until_blocking(
        lambda: "format: json" in hw.cli("get", "eventdisplay", "display", "-o", "yaml").stdout,
        what="the file reloaded",
    )
    assert "beat" in hw.cli("get", "pingsource").stdout
    assert hw.stop() == 0


def test_an_unwritable_data_directory_is_one_line(tmp_path: Path) -> None:
    """A data directory Headwater may not write to. Root may write anywhere, so as
    root Headwater runs without the capabilities that let it (util-linux's setpriv)."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    command = [*HEADWATER, "up", "--http-port", "0", "--mqtt-port", "0", "--data-dir", "data"]
    if os.geteuid() == 0:
        without = "-dac_override,-dac_read_search,-fowner"
        command = ["setpriv", "--inh-caps=-all", f"--bounding-set={without}", *command]
    try:
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    finally:
        data.chmod(0o755)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the data directory data is not writable by ")
    assert "permission denied (owner uid " in line and "mode dr-xr-xr-x" in line
    assert line.endswith("fix its permissions or choose another directory with --data-dir")


def test_everything_a_node_stores_is_under_its_data_directory(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    """The greenhouse example's MQTT sessions too (they used to go to ./headwater-data)."""
    greenhouse = Path(__file__).resolve().parents[2] / "examples" / "greenhouse"
    hw = headwater_up("-f", str(greenhouse), "--data-dir", "node", "--mqtt-port", "0")
    url = next(m.group(1) for line in hw.output if (m := re.search(r"(mqtt://\S+)", line)))
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    publish.single(
        "sensors/sim-1/climate",
        b'{"temperature": 21.5}',
        qos=1,
        retain=True,
        hostname=host,
        port=int(port),
    )
    assert hw.stop() == 0
    assert not (tmp_path / "headwater-data").exists()
    stored = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "node").rglob("*.*"))
    assert "node/mqtt/default/greenhouse/mqtt.sqlite3" in stored
    assert {"node/events.db", "node/state.db"} <= set(stored)
