"""Every command block of README.md runs, as shown, against the demo: the README cannot drift.

How this works: the README's ```` ```sh ```` blocks are read in order. A block
right after an HTML comment ``<!-- readme-test: REASON -->`` is not run, and
the reason must say why (an empty one fails). Every other block runs command
by command (continuation lines joined, comments left to bash), each with
``bash -o pipefail`` from the repository root, against ``scripts/demo.sh``
(what ``make run`` runs) on free ports with a temporary data directory. The
fixed addresses a reader has are mapped to the test's: ``:8080`` to the
demo's HTTP port (and ``HEADWATER_SERVER`` for the CLI), ``-p 1883`` to its
MQTT port, ``localhost:9000`` to a receiver the test runs, ``.venv/bin/`` to
the virtualenv running the tests. Each command must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.demo_process import REPO, Demo, running_demo
from tests.helpers import Receiver

README = REPO / "README.md"
COMMAND_TIMEOUT = 120.0
"""Seconds one command may take (`tail --max 3` waits for three hot readings)."""

_BLOCK = re.compile(
    r"(?:<!--\s*readme-test:(?P<reason>.*?)-->\s*\n)?^```sh\n(?P<body>.*?)^```",
    re.DOTALL | re.MULTILINE,
)


@dataclass(frozen=True)
class Block:
    line: int
    commands: list[str]
    skipped: str | None  # why it is not run here


def blocks(text: str) -> list[Block]:
    found = []
    for match in _BLOCK.finditer(text):
        commands: list[str] = []
        pending = ""
        for raw in match.group("body").splitlines():
            pending += raw
            if raw.endswith("\\"):
                pending += "\n"
                continue
            if pending.strip() and not pending.lstrip().startswith("#"):
                commands.append(pending)
            pending = ""
        reason = match.group("reason")
        line = text.count("\n", 0, match.start("body"))
        found.append(Block(line, commands, " ".join(reason.split()) if reason else None))
    return found


def test_the_readme_blocks_are_found_and_every_skip_says_why() -> None:
    found = blocks(README.read_text())
    assert len([b for b in found if b.skipped is None]) >= 3
    for block in found:
        assert block.commands, f"README.md:{block.line}: an empty sh block"
        if block.skipped is not None:
            assert len(block.skipped) > 20, f"README.md:{block.line}: say why it is not run"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver.in_thread() as r:
        yield r


def as_here(command: str, demo: Demo, receiver: Receiver) -> str:
    """The command with a reader's fixed addresses mapped to this test's."""
    venv_bin = Path(sys.executable).parent
    for fixed, here in (
        (".venv/bin/", f"{venv_bin}/"),
        ("localhost:8080", f"127.0.0.1:{demo.http_port}"),
        ("127.0.0.1:8080", f"127.0.0.1:{demo.http_port}"),
        ("-p 1883", f"-p {demo.mqtt_port}"),
        ("localhost:9000", f"127.0.0.1:{receiver.port}"),
    ):
        command = command.replace(fixed, here)
    return command


def test_every_command_block_of_the_readme_runs(tmp_path: Path, receiver: Receiver) -> None:
    runnable = [b for b in blocks(README.read_text()) if b.skipped is None]
    with running_demo(tmp_path, devices=20) as demo:
        demo.wait_for(f"demo: dashboard at http://127.0.0.1:{demo.http_port}/")
        env = {
            **os.environ,
            "HEADWATER_SERVER": demo.server,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        }
        for block in runnable:
            for command in block.commands:
                here = as_here(command, demo, receiver)
                result = subprocess.run(
                    ["bash", "-o", "pipefail", "-c", here],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=COMMAND_TIMEOUT,
                    check=False,
                )
                assert result.returncode == 0, (
                    f"README.md:{block.line}: `{command}` exited {result.returncode}\n"
                    f"stdout:\n{result.stdout[-2000:]}\nstderr:\n{result.stderr[-2000:]}"
                )
    assert receiver.ids  # the replay delivered to it
