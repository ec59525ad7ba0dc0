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
import resource
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import headwater_process
from tests.e2e.headwater_process import Headwater
from tests.integration.mqtt._clients import V311, Raw

OPEN_FILES = 256
FLOOD = 300  # more than either share: 192 for MQTT, 32 for HTTP
WAIT = 30.0


@pytest.fixture
def small_headwater(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Headwater]:
    real_popen = headwater_process.subprocess.Popen

    def limited(*args: object, **kwargs: object) -> object:
        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

        return real_popen(*args, preexec_fn=preexec, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(headwater_process.subprocess, "Popen", limited)
    hw = headwater_process.start_headwater(["--http-max-connections", "1000"], tmp_path)
    monkeypatch.undo()
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
    assert "--http-max-connections 1000 is more than an eighth" in "".join(hw.output)
    with _flood(_http_address(hw), b"POST /default/default HTTP/1.1\r\nHost: x\r\n"):
        client = Raw(_mqtt_port(hw), V311)
        assert client.connect("after-http-flood").reason_code == 0
        client.close()


def test_an_mqtt_flood_leaves_http_usable(small_headwater: Headwater) -> None:
    hw = small_headwater
    with _flood(("127.0.0.1", _mqtt_port(hw)), b"\x10"):  # a CONNECT that never ends
        with urllib.request.urlopen(hw.url + "/api/v1/status", timeout=WAIT) as response:
            assert response.status == 200
        with urllib.request.urlopen(hw.url + "/metrics", timeout=WAIT) as response:
            metrics = response.read().decode()
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith("headwater_mqtt_connections_refused_total")
    ]
    assert refused and float(refused[0].split()[-1]) > 0, refused
