"""The README's "Edge to cloud and back" walk-through, run as written.

How this works: the section's ``sh`` blocks are read with the README test's
parser and run in order from the repository root, as a reader would in
three terminals: a ``headwater up`` runs in the background until the test
ends (its ``ready`` line awaited), the simulator gets a duration instead of
a Ctrl-C, a command ending in ``&`` runs beside the rest, and every other
command must exit 0. The reader's fixed addresses are mapped to free ports
(``8090`` the cloud, ``8091`` the edge, ``1884`` the devices' MQTT port,
through the example's ``MQTT_PORT``) and the data directories go to the
test's temporary directory. The device's subscription must receive the
command the walk-through sends down, and the cloud must have the readings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_readme import README, blocks
from tests.servers import free_port

REPO = README.parent
DEADLINE = 60.0


class Background:
    """A command started with bash and left running; its output is kept."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.command = command
        self.output: list[str] = []
        self.process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while not any(text in line for line in self.output):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"`{self.command}` never said {text!r}:\n" + self.text())
            time.sleep(0.1)

    def text(self) -> str:
        return "".join(self.output)

    def stop(self) -> None:
        """SIGTERM to the command's process group (bash and what it started), as Ctrl-C."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def section_commands() -> list[str]:
    text = README.read_text()
    start = text.index("## Edge to cloud and back")
    end = text.index("\n## ", start + 1)
    offset = text.count("\n", 0, start)
    commands: list[str] = []
    for block in blocks(text[start:end]):
        assert block.skipped is not None, f"README.md:{offset + block.line}"
        commands += block.commands
    return commands


@pytest.fixture
def started() -> Iterator[list[Background]]:
    running: list[Background] = []
    yield running
    for background in reversed(running):
        background.stop()


def test_the_edge_cloud_walk_through_runs(tmp_path: Path, started: list[Background]) -> None:
    ports = {"8090": free_port(), "8091": free_port(), "1884": free_port()}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "MQTT_PORT": str(ports["1884"]),
    }
    venv_bin = f"{Path(sys.executable).parent}/"
    subscriber: Background | None = None
    commands = section_commands()
    assert len(commands) >= 8
    for command in commands:
        here = command.replace(".venv/bin/", venv_bin)
        for fixed, port in ports.items():
            here = here.replace(fixed, str(port))
        here = re.sub(r"--data-dir (\S+)", lambda m: f"--data-dir {tmp_path / m.group(1)}", here)
        if here.startswith("export "):
            env.update(re.findall(r"(\w+)=(\S+)", here))
        elif " up " in here:
            background = Background(here, env)
            started.append(background)
            background.wait_for("ready")
        elif " simulate " in here:
            run(f"{here} --duration 5", env)
        elif here.rstrip().endswith("&"):
            # -d: mosquitto_sub says when its subscription is in place; stdbuf: at once.
            line = here.rstrip()[:-1].replace("mosquitto_sub ", "stdbuf -oL mosquitto_sub -d ")
            subscriber = Background(line, env)
            started.append(subscriber)
            subscriber.wait_for("Subscribed")
        else:
            run(here, env)
    assert subscriber is not None
    deadline = time.monotonic() + DEADLINE
    while "commands" not in subscriber.text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(r"devices/sim-3/commands \{\"setpoint\": ?19.5\}", subscriber.text())
    cloud = started[0]
    assert "dev.headwater.telemetry" in cloud.text()


def run(command: str, env: dict[str, str]) -> None:
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, f"`{command}` exited {result.returncode}:\n{result.stderr}"
