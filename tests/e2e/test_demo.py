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
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0


@dataclass
class Demo:
    process: subprocess.Popen[str]
    http_port: int
    mqtt_port: int
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait_for(self, *needles: str, after: int = 0) -> int:
        """Wait for a line (from index ``after``) containing ``needles[0]`` with every
        needle within the 30 lines from there (one displayed event); its index."""

        def found() -> int | None:
            text = self.lines[after:]
            for i in range(len(text)):
                window = "".join(text[i : i + 30])
                if text[i].find(needles[0]) >= 0 and all(n in window for n in needles):
                    return after + i
            return None

        with self.changed:
            where: int | None = None
            ok = self.changed.wait_for(
                lambda: (where := found()) is not None or self.process.poll() is not None,
                TIMEOUT,
            )
            where = found()
        if not ok or where is None:
            tail = "".join(self.lines[-60:])
            raise AssertionError(f"{needles} not in the demo's output:\n{tail}")
        return where

    @property
    def server(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    http_port, mqtt_port = free_port(), free_port()
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "HTTP_PORT": str(http_port),
        "MQTT_PORT": str(mqtt_port),
        "HEADWATER_DATA": str(tmp_path / "data"),
        "DEVICES": "5",
        "RATE": "10",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("INFLUXDB_URL", None)
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as in a terminal
    )
    running = Demo(process, http_port, mqtt_port)
    reader = threading.Thread(target=running.read, daemon=True)
    reader.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(10)
        assert process.stdout is not None
        process.stdout.close()


def accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


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

    started = time.monotonic()
    os.killpg(demo.process.pid, signal.SIGINT)
    assert demo.process.wait(30) == 0, "".join(demo.lines[-30:])
    assert time.monotonic() - started < 25
    demo.wait_for("sent ", "failed 0")  # the simulator stopped on its own, then Headwater
    assert not accepts(demo.http_port)
    assert not accepts(demo.mqtt_port)
