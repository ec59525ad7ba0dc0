"""Run `headwater up` as a real subprocess and drive it with the real CLI."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import wait_until_blocking

HEADWATER = [sys.executable, "-m", "headwater.cli"]
READY_TIMEOUT = 20.0


@dataclass
class Headwater:
    process: subprocess.Popen[str]
    url: str
    output: list[str]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*HEADWATER, *args, "--server", self.url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"headwater {' '.join(args)} failed: {result.stderr}")
        return result

    def settled(self, broker: str = "default", namespace: str = "default") -> None:
        """Wait until every cursor of the Broker's stream acknowledged all of it: each
        event was delivered (or dead-lettered), and nothing more is under way."""

        def lags() -> list[int]:
            url = f"{self.url}/api/v1/brokers/{namespace}/{broker}/stream"
            with urllib.request.urlopen(url, timeout=30) as response:
                info = json.load(response)
            return [consumer["lag"] for consumer in info["consumers"]]

        wait_until_blocking(lambda: not any(lags()), what=f"broker {namespace}/{broker} settled")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        self.close()
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_headwater(args: Sequence[str], cwd: Path, *, open_files: int | None = None) -> Headwater:
    """`headwater up` on free ports; the embedded MQTT broker's too when there are no files
    (with files, `--mqtt-port` is for their one listener: pass it when that is wanted).
    ``open_files``: the process's RLIMIT_NOFILE, soft and hard (so it cannot raise it)."""
    files = any(arg in ("-f", "--file") for arg in args)
    ports = ["--http-port", "0", *([] if files else ["--mqtt-port", "0"])]

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    process = subprocess.Popen(
        [*HEADWATER, "up", *ports, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limit_open_files if open_files is not None else None,
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + READY_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        m = re.search(r"http listening on (http://\S+)", line)
        if m:
            url = m.group(1)
        if line.strip() == "ready" and url:
            return Headwater(process, url, output)
    process.kill()
    process.wait()
    process.stdout.close()
    raise AssertionError("headwater up did not become ready:\n" + "".join(output))
