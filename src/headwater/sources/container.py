"""ContainerSource: supervised local processes that send their events to ``K_SINK``.

How this works: Knative runs a ContainerSource's containers with two variables
that SinkBinding injects, ``K_SINK`` (the URL to POST CloudEvents to) and
``K_CE_OVERRIDES`` (JSON ``{"extensions": {...}}`` the adapter applies to every
event it sends). Headwater has no container runtime, so each container's
``command`` + ``args`` runs as a local process with those variables added to
Headwater's own environment. :class:`ProcessSupervisor` waits until the sink
has an address (a Broker's ingress exists once the HTTP listener is up),
starts the process in its own process group, logs its output line by line,
and restarts it when it exits, after a delay that doubles from
``restart_delay`` up to ``restart_delay_max`` (Kubernetes' CrashLoopBackOff,
shorter) and resets once a run lasted ``stable_after`` seconds. Stopping sends
SIGTERM to the group, then SIGKILL after the grace period
(``terminationGracePeriodSeconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from headwater.backoff import Backoff

log = logging.getLogger(__name__)

MAX_LINE = 16 * 1024
"""Longer output lines are logged in pieces of this many bytes."""

KEPT_LINES = 20


@dataclass(frozen=True)
class ProcessSpec:
    """One container of a ContainerSource, as the process to run."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


def sink_environment(sink_url: str, extensions: Mapping[str, str] | None) -> dict[str, str]:
    """``K_SINK`` and, when there are overrides, ``K_CE_OVERRIDES``, as SinkBinding sets them."""
    env = {"K_SINK": sink_url}
    if extensions:
        env["K_CE_OVERRIDES"] = json.dumps({"extensions": dict(extensions)}, sort_keys=True)
    return env


class ProcessSupervisor:
    """Keeps one process running until :meth:`stop`; never raises from :meth:`run`."""

    def __init__(
        self,
        spec: ProcessSpec,
        *,
        sink_url: Callable[[], str | None],
        extensions: Mapping[str, str] | None = None,
        grace: float = 10.0,
        restart_delay: float = 1.0,
        restart_delay_max: float = 60.0,
        stable_after: float = 60.0,
    ) -> None:
        self.spec = spec
        self._sink_url = sink_url
        self._extensions = dict(extensions or {})
        self._grace = grace
        self._delays = Backoff(restart_delay, restart_delay_max)
        self._stable_after = stable_after
        self._process: asyncio.subprocess.Process | None = None
        self._stopping = asyncio.Event()
        self.state = "waiting"
        self.starts = 0
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.last_error: str | None = None
        self.output: deque[str] = deque(maxlen=KEPT_LINES)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def run(self) -> None:
        while not self._stopping.is_set():
            url = await self._wait_for_sink()
            if url is None:
                return
            started = time.monotonic()
            await self._run_once(url)
            if self._stopping.is_set():
                return
            if time.monotonic() - started >= self._stable_after:
                self._delays.reset()
            delay = self._delays.next()
            self.state = "backoff"
            log.warning(
                "%s: %s; restarting in %.0f s", self.spec.name, self.last_error, max(delay, 1)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            self.restarts += 1

    async def _wait_for_sink(self) -> str | None:
        while not self._stopping.is_set():
            url = self._sink_url()
            if url:
                return url
            self.state = "waiting"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.1)
        return None

    async def _run_once(self, sink_url: str) -> None:
        env = {**os.environ, **self.spec.env, **sink_environment(sink_url, self._extensions)}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                cwd=self.spec.cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals all of it
            )
        except OSError as exc:
            self.last_exit_code = None
            self.last_error = f"cannot start {self.spec.argv[0]!r}: {exc.strerror or exc}"
            return
        self._process = process
        self.starts += 1
        self.state = "running"
        log.info("%s: started pid %d (K_SINK=%s)", self.spec.name, process.pid, sink_url)
        assert process.stdout is not None
        await self._pump(process.stdout)
        code = await process.wait()
        self._kill_group(process.pid, signal.SIGKILL)  # whatever it left behind
        self.last_exit_code = code
        self.state = "exited"
        last = f": {self.output[-1]}" if self.output else ""
        self.last_error = (
            f"exited with code {code}{last}" if code >= 0 else f"killed by signal {-code}{last}"
        )

    async def _pump(self, stream: asyncio.StreamReader) -> None:
        pending = b""
        while chunk := await stream.read(MAX_LINE):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) >= MAX_LINE:
                lines.append(pending)
                pending = b""
            for line in lines:
                self._line(line)
        if pending:
            self._line(pending)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        self.output.append(text)
        log.info("%s: %s", self.spec.name, text)

    async def stop(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period."""
        self._stopping.set()
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._kill_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self._grace)
        except TimeoutError:
            log.warning(
                "%s: still running %.0f s after SIGTERM, killing", self.spec.name, self._grace
            )
            self._kill_group(process.pid, signal.SIGKILL)
            await process.wait()

    @staticmethod
    def _kill_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "state": self.state,
            "pid": self.pid,
            "starts": self.starts,
            "restarts": self.restarts,
            "lastExitCode": self.last_exit_code,
            "lastError": self.last_error,
        }
