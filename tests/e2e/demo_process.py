"""`make run`'s script (scripts/demo.sh) as a subprocess: free ports, a temporary data directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import LOOPBACK, free_port

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0
STOP_TIMEOUT = 45.0
"""Seconds the script gets to stop its children (its own limit is 20 s each)."""


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


@contextmanager
def running_demo(tmp_path: Path, devices: int = 5) -> Iterator[Demo]:
    """scripts/demo.sh with ``devices`` simulated sensors (10 readings/s in all)."""
    http_port, mqtt_port = free_port(), free_port()
    env = {
        **os.environ,
        "VENV": str(Path(sys.executable).parent.parent),
        "HTTP_PORT": str(http_port),
        "MQTT_PORT": str(mqtt_port),
        "HEADWATER_DATA": str(tmp_path / "data"),
        "DEVICES": str(devices),
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
            # Ctrl-C: the script stops its children (each in a process group of its
            # own) before it exits; SIGKILL only if it does not.
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
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
