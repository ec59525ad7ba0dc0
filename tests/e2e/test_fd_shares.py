"""A flood on one listener leaves the other usable.

`headwater up` runs with a small open-files limit (256, soft and hard, so that
it cannot raise it): MQTT may hold three quarters of it, HTTP an eighth, and
the rest stays for the log and the admin API. One protocol is then flooded
past its share with connections that never finish a request, and the other
must still answer at once. Before the shares, 1,100 idle HTTP connections
took every descriptor and MQTT clients were refused.
"""

from __future__ import annotations

import contextlib
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.headwater_process import Headwater, start_headwater
from tests.e2e.test_http_limits import follow_output, wait_for
from tests.integration.mqtt._clients import V311, Raw

OPEN_FILES = 256
FLOOD = 300  # more than either share: 192 for MQTT, 32 for HTTP
WAIT = 30.0


@pytest.fixture
def small_headwater(tmp_path: Path) -> Iterator[Headwater]:
    hw = start_headwater(["--http-max-connections", "1000"], tmp_path, open_files=OPEN_FILES)
    follow_output(hw)
    try:
        yield hw
    finally:
        hw.close()


def _mqtt_port(hw: Headwater) -> int:
    for line in hw.output:
        if "mqtt listening on" in line:
            return int(line.rsplit(":", 1)[1].split()[0].rstrip("/"))
    raise AssertionError("no MQTT listener in:\n" + "".join(hw.output))


def _http_address(hw: Headwater) -> tuple[str, int]:
    host, port = hw.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def _flood(address: tuple[str, int], first_bytes: bytes) -> Iterator[list[socket.socket]]:
    """FLOOD connections that send ``first_bytes`` and then nothing."""
    held: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            try:
                sock = socket.create_connection(address, timeout=WAIT)
            except OSError:
                continue  # refused outright: the listener is at its share
            held.append(sock)
            with contextlib.suppress(OSError):
                sock.sendall(first_bytes)
        yield held
    finally:
        for sock in held:
            sock.close()


def test_an_http_flood_leaves_mqtt_usable(small_headwater: Headwater) -> None:
    hw = small_headwater
    wait_for(
        lambda: "--http-max-connections 1000 is more than an eighth" in "".join(hw.output),
        "the HTTP cap is fitted to the open-files limit",
    )
    with _flood(_http_address(hw), b"POST /default/default HTTP/1.1\r\nHost: x\r\n"):
        client = Raw(_mqtt_port(hw), V311)
        assert client.connect("after-http-flood").reason_code == 0
        client.close()


def _refused(hw: Headwater) -> float:
    """The MQTT sockets closed on accept so far (from /metrics)."""
    with urllib.request.urlopen(hw.url + "/metrics", timeout=WAIT) as response:
        metrics = response.read().decode()
    for line in metrics.splitlines():
        if line.startswith("headwater_mqtt_connections_refused_total"):
            return float(line.split()[-1])
    raise AssertionError("no headwater_mqtt_connections_refused_total in /metrics")


def test_an_mqtt_flood_leaves_http_usable(small_headwater: Headwater) -> None:
    hw = small_headwater
    with _flood(("127.0.0.1", _mqtt_port(hw)), b"\x10"):  # a CONNECT that never ends
        with urllib.request.urlopen(hw.url + "/api/v1/status", timeout=WAIT) as response:
            assert response.status == 200
        # The flood went past MQTT's share (the broker may still be accepting the
        # last of it when HTTP answers: wait for its refusals, not a fixed time).
        wait_for(lambda: _refused(hw) > 0, "MQTT refuses sockets past its share")
