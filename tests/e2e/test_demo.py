"""`make run`'s script: the greenhouse demo starts, data flows, Ctrl-C stops everything.

scripts/demo.sh runs as a user would run it (on ephemeral ports and a temp data
directory instead of :8080/:1883/./headwater-data): the simulated fleet's
readings reach the console display through the embedded broker, a Broker and
a CESQL Trigger; a command sent with the CLI reaches a device through the
MqttSink and the device's answer comes back as a reply on the display; a
SIGINT to the script's process group (the terminal's Ctrl-C) stops both
children cleanly, with exit status 0 and the ports free again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.demo_process import Demo, accepts, running_demo


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    with running_demo(tmp_path) as running:
        yield running


def test_demo_runs_until_ctrl_c(demo: Demo) -> None:
    demo.wait_for(f"demo: dashboard at http://127.0.0.1:{demo.http_port}/")
    # Simulated readings reach the display (the `sample` Trigger shows sim-1).
    demo.wait_for("type: dev.headwater.telemetry", "subject: sim-1", "temperature:")
    # A heat alert within the first minute, whatever the time of day: sim-0's vent
    # sticks shut (only the `too-hot` Trigger shows sim-0).
    demo.wait_for("type: dev.headwater.telemetry", "subject: sim-0", "temperature: 2")

    # A command reaches sim-3 over MQTT; its answer comes back as a reply.
    mark = len(demo.lines)
    sent = subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater.cli",
            "send",
            "--type",
            "dev.headwater.command",
            "--subject",
            "sim-3",
            "--ext",
            "correlationid=e2e-1",
            "--data",
            '{"setpoint": 19.5}',
            "--server",
            demo.server,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert sent.returncode == 0, sent.stderr
    demo.wait_for(
        "type: dev.headwater.command.response",
        "correlationid: e2e-1",
        '"setpoint": 19.5',
        after=mark,
    )

    os.killpg(demo.process.pid, signal.SIGINT)
    assert demo.process.wait(60) == 0, "".join(demo.lines[-30:])
    demo.wait_for("sent ", "failed 0")  # the simulator stopped on its own, then Headwater
    assert not accepts(demo.http_port)
    assert not accepts(demo.mqtt_port)
