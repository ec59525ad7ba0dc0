"""`headwater up` under the partial-packet probe: memory holds steady.

The probe: many connections each send most of a large PUBLISH and close. Before
the fix ten rounds took the process from 67 MB to 1.35 GB, which stayed (only a
full garbage collection freed it). Here the broker runs with a small budget for
incomplete packets so that the test runs in seconds; the RSS of the process may
grow by the budget and bookkeeping, never by what the rounds sent.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.e2e.headwater_process import Headwater

BUDGET = 4 * 1024 * 1024
ROUNDS = 6
CONNECTIONS = 100
PACKET = 1024 * 1024  # declared size of each PUBLISH
SENT = 900 * 1024  # of which each client sends this much, then closes

MESH = f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{port: 0}}]
  maxEventSize: {PACKET}
  maxIncompleteBytes: {BUDGET}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""

# CONNECT (3.1.1, clean session, keepalive 60, empty client id), then the fixed
# header and topic of a PUBLISH whose body never fully arrives.
_CONNECT = bytes([0x10, 12, 0, 4, *b"MQTT", 4, 2, 0, 60, 0, 0])


def _publish_head(size: int) -> bytes:
    header = bytearray([0x30])
    while True:
        byte, size = size & 0x7F, size >> 7
        header.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(header) + b"\x00\x01t"


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert match is not None, name
    return float(match.group(1))


def _round(port: int) -> None:
    body = _publish_head(PACKET) + b"x" * (SENT - 4)
    sockets = []
    try:
        for _ in range(CONNECTIONS):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sockets.append(sock)
            with contextlib.suppress(OSError):  # closed by the broker: over budget
                sock.sendall(_CONNECT + body)
    finally:
        for sock in sockets:
            sock.close()


def _wait(predicate: Callable[[], bool]) -> None:
    while not predicate():
        time.sleep(0.05)


def test_partial_packets_do_not_pin_memory(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    hw = headwater_up("-f", "mesh.yaml")
    port = int(re.findall(r"mqtt://127\.0\.0\.1:(\d+)", "".join(hw.output))[0])
    pid = hw.process.pid
    _round(port)  # the first round warms allocator pools and caches
    _wait(lambda: _metric(hw.url, "headwater_mqtt_incomplete_bytes") == 0)
    before = _rss_kib(pid)
    for _ in range(ROUNDS):
        _round(port)
    _wait(lambda: _metric(hw.url, "headwater_mqtt_incomplete_bytes") == 0)
    grown = _rss_kib(pid) - before
    # What the rounds sent: 6 x 100 x 900 KiB = 527 MiB; allowed: a fraction of it.
    assert grown < 64 * 1024, f"RSS grew by {grown} KiB"
    assert _metric(hw.url, "headwater_mqtt_incomplete_over_budget_total") > 0
    # The broker still serves a client.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_CONNECT)
        assert sock.recv(4) == b"\x20\x02\x00\x00"  # CONNACK, accepted
    assert hw.stop() == 0
