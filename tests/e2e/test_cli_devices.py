"""`headwater device ...` against a real `headwater up`, with devices that really connect."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.headwater_process import HEADWATER, Headwater, start_headwater
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.mqtt._clients import Paho, close_all

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: mqtt}
spec:
  listeners: [{port: 0}]
  devices:
    publish: ["devices/{device}/#", "sensors/{device}/#"]
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""


@pytest.fixture
def headwater(tmp_path: Path) -> Iterator[Headwater]:
    (tmp_path / "mesh.yaml").write_text(MESH)
    hw = start_headwater(["-f", "mesh.yaml", "--data-dir", "data"], tmp_path)
    yield hw
    close_all()
    hw.stop()


def mqtt_port(hw: Headwater) -> int:
    [line] = [line for line in hw.output if "mqtt/default/mqtt listening on" in line]
    return int(line.rsplit(":", 1)[1])


def secret_of(output: str) -> str:
    found = re.search(r"^secret: (\S+)$", output, re.M)
    assert found, output
    return found.group(1)


def test_add_list_show_update_disable_delete(headwater: Headwater) -> None:
    added = headwater.cli("device", "add", "pump-1", "-l", "site=north").stdout
    assert "device pump-1 added" in added and "shown once" in added
    secret = secret_of(added)
    headwater.cli("device", "add", "pump-2")
    listed = headwater.cli("device", "list").stdout
    assert re.search(r"pump-1\s+yes\s+no\s+never\s+site=north\s+secret", listed), listed
    device = Paho(mqtt_port(headwater), "pump-1", username="pump-1", password=secret)
    assert device.connack()[0] == 0
    online = headwater.cli("device", "list", "--online").stdout
    assert "pump-1" in online and "pump-2" not in online
    assert "pump-2" in headwater.cli("device", "list", "--offline").stdout
    assert "pump-1" in headwater.cli("device", "list", "-l", "site=north").stdout
    shown = orjson.loads(headwater.cli("device", "show", "pump-1", "-o", "json").stdout)
    assert shown["presence"]["online"] and shown["twin"]["delta"] == {}
    updated = headwater.cli("device", "update", "pump-1", "-l", "site-", "-l", "tier=a").stdout
    assert "updated" in updated
    shown = orjson.loads(headwater.cli("device", "show", "pump-1", "-o", "json").stdout)
    assert shown["labels"] == {"tier": "a"}
    assert "disabled" in headwater.cli("device", "disable", "pump-1").stdout
    assert device.disconnects.get(timeout=5) == 0x87
    headwater.cli("device", "enable", "pump-1")
    rotated = headwater.cli("device", "update", "pump-1", "--rotate-secret").stdout
    assert secret_of(rotated) != secret
    assert "deleted" in headwater.cli("device", "delete", "pump-2").stdout
    gone = headwater.cli("device", "show", "pump-2", check=False)
    assert gone.returncode == 1 and "no device 'pump-2'" in gone.stderr


def test_a_password_from_stdin(headwater: Headwater) -> None:
    result = subprocess.run(
        [*HEADWATER, "device", "add", "valve-1", "--password-stdin", "--server", headwater.url],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "secret:" not in result.stdout  # nothing generated, nothing shown
    device = Paho(
        mqtt_port(headwater), "valve-1", username="valve-1", password="correct horse battery"
    )
    assert device.connack()[0] == 0


def test_command_wait_prints_the_answer(headwater: Headwater) -> None:
    secret = secret_of(headwater.cli("device", "add", "pump-1").stdout)
    device = Paho(mqtt_port(headwater), "pump-1", username="pump-1", password=secret)
    device.connack()
    device.subscribe("devices/pump-1/commands/+", 1)
    command = subprocess.Popen(
        [
            *HEADWATER,
            "device",
            "command",
            "pump-1",
            "--data",
            '{"speed": 3}',
            "--wait",
            "20s",
            "--server",
            headwater.url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    message = device.get(timeout=20)
    assert orjson.loads(message.payload) == {"speed": 3}
    device.publish(message.properties.ResponseTopic, b'{"done": true}', 1)  # type: ignore[union-attr]
    out, err = command.communicate(timeout=30)
    assert command.returncode == 0, err
    assert orjson.loads(out) == {"done": True}


def test_command_wait_times_out_with_exit_1(headwater: Headwater) -> None:
    headwater.cli("device", "add", "pump-1")
    result = headwater.cli(
        "device", "command", "pump-1", "--data", "reboot", "--wait", "0.5s", check=False
    )
    assert result.returncode == 1
    assert "no answer within 0.5s (status queued" in result.stderr
    unknown = headwater.cli("device", "command", "nobody", "--data", "1", check=False)
    assert unknown.returncode == 1 and "no device 'nobody'" in unknown.stderr


def test_twin_set_and_show(headwater: Headwater) -> None:
    headwater.cli("device", "add", "pump-1")
    changed = orjson.loads(
        headwater.cli("device", "twin", "pump-1", "--set", '{"speed": 2}', "-o", "json").stdout
    )
    assert changed["desired"]["version"] == 1 and changed["delta"] == {"speed": 2}
    stale = headwater.cli("device", "twin", "pump-1", "--set", "{}", "--version", "0", check=False)
    assert stale.returncode == 1 and "version 1, not 0" in stale.stderr
    shown = headwater.cli("device", "twin", "pump-1").stdout
    assert "speed: 2" in shown


def test_import_a_csv_writes_the_secrets_for_the_owner_only(
    headwater: Headwater, tmp_path: Path
) -> None:
    source = tmp_path / "fleet.csv"
    source.write_text("id,labels\n" + "".join(f"gw-{n},site=s{n % 3}\n" for n in range(50)))
    out = tmp_path / "secrets.csv"
    result = headwater.cli("device", "import", str(source), "--secrets-out", str(out))
    assert "imported 50 devices" in result.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    with out.open() as written:
        rows = list(csv.DictReader(written))
    assert len(rows) == 50 and rows[0].keys() == {"device", "secret"}
    chosen = next(r for r in rows if r["device"] == "gw-7")
    device = Paho(mqtt_port(headwater), "gw-7", username="gw-7", password=chosen["secret"])
    assert device.connack()[0] == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("id\nok\nnot/ok\n")
    refused = headwater.cli("device", "import", str(bad), check=False)
    assert refused.returncode == 1 and "row 3" in refused.stderr
    assert "ok" not in [d for d in headwater.cli("device", "list").stdout.split()]


def test_simulate_says_why_its_publishes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH.replace(', "sensors/{device}/#"', ""))
    hw = start_headwater(["-f", "mesh.yaml", "--data-dir", "data"], tmp_path)
    try:
        result = hw.cli(
            "simulate", "--devices", "1", "--count", "2", "--rate", "20", "--register",
            "--broker", f"mqtt://127.0.0.1:{mqtt_port(hw)}",
        )  # fmt: skip
        assert "failed 2" in result.stdout
        assert "NOT_AUTHORIZED" in result.stderr and "devices.publish" in result.stderr
    finally:
        hw.stop()


def test_simulate_register_brings_devices_online(headwater: Headwater) -> None:
    result = subprocess.run(
        [
            *HEADWATER,
            "simulate",
            "--devices",
            "3",
            "--rate",
            "30",
            "--count",
            "30",
            "--prefix",
            "gh",
            "--register",
            "--broker",
            f"mqtt://127.0.0.1:{mqtt_port(headwater)}",
            "--server",
            headwater.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 30, acked 30, failed 0" in result.stdout
    listed = orjson.loads(headwater.cli("device", "list", "-o", "json").stdout)
    assert [d["id"] for d in listed] == ["gh-0", "gh-1", "gh-2"]
    assert all(d["labels"] == {"simulated": "true"} for d in listed)
    wait_until(lambda: all(d["presence"]["connections"] == 1 for d in listed))
    assert sys.executable
