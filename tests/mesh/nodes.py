"""Headwater mesh nodes for tests: `headwater up --nats` subprocesses on free ports.

How this works: :class:`Node` runs one ``headwater up --nats URLS --node-name
NAME`` with its output in a file of its data directory (a pipe nobody reads
would fill and stall a chatty node), waits for its ``ready`` line, and reads
its HTTP and MQTT addresses from its output. ``kill`` is SIGKILL (a node
that dies), ``stop`` SIGTERM; ``start`` again reuses the node's data
directory, name and ports, so that clients reconnect to the address they
know. :func:`api` and :func:`wait_for` are what the tests use to ask a node
and to wait for a condition without fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from tests.helpers import Receiver, Request

T = TypeVar("T")

HEADWATER: Final = [sys.executable, "-m", "headwater.cli"]
READY_TIMEOUT: Final = 40.0
"""Seconds a node gets to say ready (streams with three replicas take a moment)."""


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except (OSError, AssertionError, KeyError, ValueError) as exc:
            last, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f": {last}" if last else "")
    )


def api(
    url: str,
    method: str = "GET",
    path: str = "/api/v1/status",
    body: Any = None,
    content_type: str = "application/json",
) -> Any:
    """One admin API call; the decoded JSON answer (HTTPError for a 4xx/5xx).

    The HTTPError raised holds its body in memory, not the connection: one that
    is dropped (by :func:`wait_for`, polling until a resource exists) leaves no
    socket for the garbage collector to warn about in a later test."""
    data = None
    if body is not None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        with exc:
            answer_body = exc.read()
        raise urllib.error.HTTPError(
            exc.url, exc.code, exc.msg, exc.headers, io.BytesIO(answer_body)
        ) from None


class Node:
    """One ``headwater up --nats`` process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        nats_url: str,
        data_dir: Path,
        *,
        files: Sequence[Path] = (),
        extra: Sequence[str] = (),
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.nats_url = nats_url
        self.data_dir = data_dir
        self.files = list(files)
        self.extra = list(extra)
        self.cwd = cwd or data_dir
        self.http_port = 0
        self.mqtt_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"{name}.log"
        self._offset = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        args = [
            *HEADWATER,
            "up",
            "--nats",
            self.nats_url,
            "--node-name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            "--http-port",
            str(self.http_port),
            "--mqtt-port",
            str(self.mqtt_port),
            "--no-http-worker",
            "--drain-timeout",
            "2",
        ]
        for file in self.files:
            args += ["-f", str(file)]
        return args + self.extra

    def start(self, *, expect_ready: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._offset = out.tell()
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        if expect_ready:
            self.wait_ready()

    def output(self) -> str:
        try:
            with open(self.log_path, "rb") as out:
                out.seek(self._offset)
                return out.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        assert self.process is not None
        while time.monotonic() < deadline:
            text = self.output()
            if re.search(r"^ready$", text, re.M):
                http = re.search(r"http listening on http://[^:]+:(\d+)", text)
                mqtt = re.search(r" mqtt\S* listening on \w+://[^:]+:(\d+)", text)
                assert http is not None, text
                self.http_port = int(http.group(1))
                if mqtt is not None:
                    self.mqtt_port = int(mqtt.group(1))
                return
            if self.process.poll() is not None:
                raise AssertionError(f"node {self.name} exited at start:\n{text[-4000:]}")
            time.sleep(0.05)
        self.kill()
        raise AssertionError(
            f"node {self.name} not ready after {READY_TIMEOUT}s:\n{self.output()[-4000:]}"
        )

    def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def stop(self) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                return process.wait()
        return process.returncode

    def api(
        self,
        method: str = "GET",
        path: str = "/api/v1/status",
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        return api(self.url, method, path, body, content_type)

    def apply(self, yaml_text: str) -> Any:
        return self.api("POST", "/api/v1/resources", yaml_text, "application/yaml")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*HEADWATER, *args, "--server", self.url],
            capture_output=True,
            text=True,
            timeout=60,
        )


def http_error(call: Callable[[], Any]) -> urllib.error.HTTPError:
    """The HTTPError ``call`` raises (fails when it answers 2xx)."""
    try:
        call()
    except urllib.error.HTTPError as exc:
        return exc
    raise AssertionError("expected an HTTP error")


@contextlib.contextmanager
def receiving(*, delay: float = 0.0, status: int = 202) -> Iterator[Receiver]:
    """A subscriber on a thread of its own answering ``status``, after ``delay``
    seconds per request (a slow subscriber, so that one node cannot take everything)."""

    async def slowly(request: Request) -> tuple[int, dict[str, str], bytes]:
        await asyncio.sleep(delay)
        return status, {}, b""

    with Receiver.in_thread(status=status, answer=slowly if delay else None) as receiver:
        yield receiver
