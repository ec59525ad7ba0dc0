"""`headwater up` under hostile HTTP peers: slowloris, aborted uploads, malformed requests.

Each test starts `headwater up` with small limits so that it runs in seconds,
and waits for the events themselves (a connection's EOF, a counter reaching
its figure), never for a fixed time.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.e2e.headwater_process import Headwater

SLOW_CONNECTIONS = 120
MAX_CONNECTIONS = 40
WAIT = 60.0
"""How long to wait for an awaited event before failing (only a broken build waits it)."""

# The four ways to hold a connection without finishing a request.
SLOW_STARTS = [
    b"POST /default/default HTTP/1.1\r\nHost: x\r\nContent-Le",  # headers never end
    b"POST /default/default HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",  # no last chunk
    b"POST /default/default HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n{",  # Content-Length never filled
    b"",  # nothing at all
]


def follow_output(hw: Headwater) -> None:
    """Keep reading the process's output into hw.output (a full pipe would block it)."""
    assert hw.process.stdout is not None
    stdout = hw.process.stdout

    def read() -> None:
        for line in stdout:
            hw.output.append(line)

    threading.Thread(target=read, daemon=True).start()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def address(hw: Headwater) -> tuple[str, int]:
    host, port = hw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def metric(hw: Headwater, name: str) -> float:
    text = urllib.request.urlopen(hw.url + "/metrics", timeout=WAIT).read().decode()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_slowloris_connections_are_closed_and_the_fds_stay_bounded(
    headwater_up: Callable[..., Headwater],
) -> None:
    hw = headwater_up(
        "--http-max-connections",
        str(MAX_CONNECTIONS),
        "--http-header-timeout",
        "1",
        "--http-body-timeout",
        "1",
    )
    follow_output(hw)
    pid = hw.process.pid
    baseline = open_fds(pid)
    selector = selectors.DefaultSelector()
    slow = []
    for i in range(SLOW_CONNECTIONS):
        sock = socket.create_connection(address(hw))
        sock.sendall(SLOW_STARTS[i % len(SLOW_STARTS)])
        selector.register(sock, selectors.EVENT_READ)
        slow.append(sock)
    try:
        # While they hold on: a fresh request is answered, and the process holds
        # no more descriptors than its cap allows (a few more for the answer).
        with urllib.request.urlopen(hw.url + "/api/v1/status", timeout=WAIT) as response:
            assert response.status == 200
        assert open_fds(pid) <= baseline + MAX_CONNECTIONS + 4
        # Every slow connection is closed by the server: wait for each EOF.
        deadline = time.monotonic() + WAIT
        pending = len(slow)
        while pending:
            assert time.monotonic() < deadline, f"{pending} slow connections still open"
            for key, _ in selector.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    selector.unregister(sock)
                    pending -= 1
    finally:
        selector.close()
        for sock in slow:
            sock.close()
    wait_for(lambda: open_fds(pid) <= baseline + 2, "the descriptors are released")
    closed = sum(
        metric(hw, f'headwater_http_connections_closed_total{{listener="http",reason="{reason}"}}')
        for reason in ("header-timeout", "body-timeout", "evicted")
    )
    assert closed > 0
    warnings = [line for line in hw.output if "headwater.http" in line]
    assert warnings, "the cap and the timeouts are said in the log"
    assert not [line for line in hw.output if "Traceback" in line]
    assert hw.stop() == 0


def test_aborted_uploads_and_malformed_requests_are_a_line_and_a_count_each(
    headwater_up: Callable[..., Headwater],
) -> None:
    hw = headwater_up()
    follow_output(hw)
    for _ in range(100):
        with socket.create_connection(address(hw)) as sock:
            sock.sendall(
                b"POST /default/default HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/cloudevents+json\r\nContent-Length: 100000\r\n\r\n"
                + b"{"
                * 5000
            )
    for _ in range(50):
        with socket.create_connection(address(hw)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.")  # 400, with a reason
    wait_for(
        lambda: metric(hw, 'headwater_http_peer_errors_total{kind="aborted"}') >= 100,
        "100 aborted uploads counted",
    )
    assert metric(hw, 'headwater_http_peer_errors_total{kind="malformed"}') == 50
    assert hw.stop() == 0
    output = "".join(hw.output)
    assert "Traceback" not in output
    assert "ERROR" not in output
    assert output.count("the request body ended") <= 2
    assert output.count("malformed request") <= 2


def test_a_lan_address_names_the_brokers_open_to_anyone(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    (tmp_path / "brokers.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: open}\n---\n"
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\n"
        "metadata: {name: guarded, annotations: {headwater.dev/ingress-token: s3cret}}\n"
    )
    hw = headwater_up("-f", "brokers.yaml", "--host", "0.0.0.0", "--token", "admin-token")
    [line] = [line for line in hw.output if "accepts events from anyone" in line]
    assert "the Broker ingress on 0.0.0.0 accepts events from anyone who can reach it for " in line
    assert "default/open:" in line and "guarded" not in line
    assert "headwater.dev/ingress-token" in line
    assert hw.stop() == 0
