"""The README's three-node walk-through ("Running several nodes"), run as written.

How this works: the section's block that starts three NATS servers and three
``headwater up --nats`` nodes is read with the README test's parser and run
as one bash script (``-e -o pipefail``: every command must succeed), as a
reader would paste it, from a temporary directory that has the repository's
``examples`` and the virtualenv running the tests where the block expects
them (``..``). The reader's fixed ports (NATS 4222-4224 and its routes
6222-6224, HTTP 8081-8083, MQTT 1884-1886) are each mapped to a free port.
The block must list the three nodes, show on node 3 the Trigger applied on
node 1, deliver a command queued in a session made on node 3 to the same
device resumed on node 2, and describe a Trigger per node. Whatever the
block left running when it fails is killed with its process group.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_readme import README, blocks
from tests.servers import find_executable, free_port

REPO = README.parent
README_PORTS = (4222, 4223, 4224, 6222, 6223, 6224, 8081, 8082, 8083, 1884, 1885, 1886)
TIMEOUT = 240.0
"""Seconds the whole walk-through may take (three servers elect their leaders first);
pytest's own timeout is longer, so that a block that hangs is reported with its output."""

pytestmark = [pytest.mark.integration, pytest.mark.timeout(TIMEOUT + 120)]


def walk_through() -> str:
    text = README.read_text()
    start = text.index("## Running several nodes")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    [block] = [b for b in blocks(section) if b.commands[0].startswith("mkdir -p mesh")]
    assert block.skipped is not None and "test_readme_mesh.py" in block.skipped
    body = section.split("```sh\nmkdir -p mesh", 1)[1].split("\n```", 1)[0]
    return "mkdir -p mesh" + body + "\n"


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports and port not in README_PORTS:
            ports.append(port)
    return ports


def test_the_three_node_walk_through_runs_as_written(tmp_path: Path) -> None:
    script = walk_through()
    mapping = dict(zip(README_PORTS, free_ports(len(README_PORTS)), strict=True))
    for fixed, free in mapping.items():
        script = re.sub(rf"(?<!\d){fixed}(?!\d)", str(free), script)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "examples").symlink_to(REPO / "examples")
    servers = Path(find_executable("nats-server", "/usr/sbin/nats-server")).parent
    env = {**os.environ, "PATH": f"{servers}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HEADWATER_SERVER", None)
    process = subprocess.Popen(
        ["bash", "-x", "-e", "-o", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    left = ""
    with process:
        try:
            output, _ = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            left = subprocess.run(
                ["ps", "-o", "pid,stat,etime,args", "-g", str(process.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            output = ""
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # what a failed block left running
        if left:
            output, _ = process.communicate()
            output = f"{output}\n--- still running after {TIMEOUT:.0f} s:\n{left}"
    logs = "".join(
        f"\n--- {log.name}:\n{log.read_text()[-2000:]}"
        for log in sorted((tmp_path / "mesh").glob("*.log"))
    )
    assert not left and process.returncode == 0, output + logs
    listed = output.split("get nodes", 1)[-1]
    assert all(f"n{i}" in listed for i in (1, 2, 3)), output
    assert re.search(r"Trigger\s+too-cold", output), output  # listed by node 3
    assert "vent open" in output, output  # queued on node 3's session, received on node 2
    assert "Nodes (the counters above are their sum):" in output, output
    assert all(f"  n{i}:" in output for i in (1, 2, 3)), output
