"""Real servers for tests: started on an ephemeral loopback port with a temporary
data directory, waited for until they accept connections, stopped after.

How this works: :class:`ManagedServer` owns one child process. A subclass says
how to write its configuration and command line for a port (``0`` on the first
start: the server picks one and the subclass reads it back; the same port on a
restart, so that clients reconnect to the address they know) and how to learn
which port it got. ``start``/``stop``/``kill``/``restart`` are synchronous and
bounded by ``STARTUP_TIMEOUT``; fixtures wrap them (see the ``conftest.py``
files that use this module). To add a server (mosquitto, influxd), subclass
:class:`ManagedServer` and implement ``_command`` and, if the server cannot
report a random port itself, pass ``port=free_port()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Final, Self

STARTUP_TIMEOUT: Final = 15.0
"""Seconds a server gets to accept connections before the test fails."""

STOP_TIMEOUT: Final = 10.0
"""Seconds between SIGTERM and SIGKILL when stopping."""

LOOPBACK: Final = "127.0.0.1"


def _ephemeral_range() -> range:
    """The ports the kernel gives outgoing connections (and ``bind(0)``)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


_handed_out: set[int] = set()


def free_port() -> int:
    """A currently free loopback TCP port (for servers that cannot pick one themselves).

    Picked below the kernel's ephemeral range, never twice in a run: between
    this call and the server's bind, an outgoing connection of a process the
    test started (a node's to NATS) cannot take it, nor can another test.
    """
    ephemeral = _ephemeral_range()
    candidates = [p for p in range(20000, 32768) if p not in ephemeral and p not in _handed_out]
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def find_executable(name: str, *candidates: str) -> str:
    """The server binary on PATH or at one of ``candidates``; fails loudly when missing."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} is not installed (run `make servers`)")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class ManagedServer:
    """A server child process with a data directory that outlives restarts."""

    name = "server"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log_path = data_dir / f"{self.name}.log"

    # -- what a subclass says --------------------------------------------------

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _discover_port(self, process: subprocess.Popen[bytes]) -> int | None:
        """The port the server listens on, once known (``None``: not yet)."""
        return self.port or None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(
                self._command(self.port), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
            port = self._discover_port(self.process)
            if port and _accepts(port):
                self.port = port
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"{self.name} not ready after {STARTUP_TIMEOUT}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_TIMEOUT``."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to flush anything."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class NatsServer(ManagedServer):
    """``nats-server`` with JetStream (unless ``jetstream=False``), its store in ``data_dir``.

    ``extra`` is appended to its configuration (an ``authorization`` block, a
    ``cluster`` block: see :class:`NatsCluster`).
    """

    name = "nats-server"

    def __init__(
        self,
        data_dir: Path,
        *,
        max_payload: str = "2MB",
        jetstream: bool = True,
        extra: str = "",
        server_name: str | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.binary = find_executable(
            "nats-server", "/usr/sbin/nats-server", "/usr/bin/nats-server"
        )
        # A 1 MiB event plus its attributes needs more than NATS's default 1 MB.
        self.max_payload = max_payload
        self.jetstream = jetstream
        self.extra = extra
        self.server_name = server_name
        self._ports_dir = data_dir / "ports"

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    def _command(self, port: int) -> list[str]:
        self._ports_dir.mkdir(exist_ok=True)
        for stale in self._ports_dir.iterdir():
            stale.unlink()
        config = self.data_dir / "nats.conf"
        store = json.dumps(str(self.data_dir / "store"))
        config.write_text(
            (f"server_name: {self.server_name}\n" if self.server_name else "")
            + f"host: {LOOPBACK}\n"
            f"port: {port or -1}\n"
            f"max_payload: {self.max_payload}\n"
            f"ports_file_dir: {json.dumps(str(self._ports_dir))}\n"
            + (f"jetstream {{ store_dir: {store} }}\n" if self.jetstream else "")
            + self.extra
        )
        return [self.binary, "-c", str(config)]

    def _discover_port(self, process: subprocess.Popen[bytes]) -> int | None:
        ports_file = self._ports_dir / f"nats-server_{process.pid}.ports"
        try:
            urls = json.loads(ports_file.read_text())["nats"]
        except (OSError, ValueError, KeyError):
            return None
        return int(urls[0].rsplit(":", 1)[1])


class InfluxServer(ManagedServer):
    """Debian's ``influxd`` (InfluxDB 1.x), its meta, data and WAL under ``data_dir``.

    influxd cannot report a port it picked, so it gets ``free_port()``; the
    RPC (backup) listener gets one too. Reporting, the internal monitor store
    and query logging are off: nothing leaves the machine or the temp dir.
    """

    name = "influxd"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = find_executable("influxd", "/usr/bin/influxd")
        self.port = free_port()
        self._rpc_port = free_port()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self, port: int) -> list[str]:
        config = self.data_dir / "influxdb.conf"
        quoted = {n: json.dumps(str(self.data_dir / n)) for n in ("meta", "data", "wal")}
        config.write_text(
            "reporting-disabled = true\n"
            f'bind-address = "{LOOPBACK}:{self._rpc_port}"\n'
            f"[meta]\n  dir = {quoted['meta']}\n"
            f"[data]\n  dir = {quoted['data']}\n  wal-dir = {quoted['wal']}\n"
            "  query-log-enabled = false\n"
            f'[http]\n  bind-address = "{LOOPBACK}:{port}"\n  log-enabled = false\n'
            "[monitor]\n  store-enabled = false\n"
            "[continuous_queries]\n  enabled = false\n"
            "[subscriber]\n  enabled = false\n"
        )
        return [self.binary, "-config", str(config)]


class PrometheusServer(ManagedServer):
    """Debian's ``prometheus`` scraping ``targets`` (host:port) every ``scrape_interval``."""

    name = "prometheus"

    def __init__(
        self,
        data_dir: Path,
        targets: list[str],
        *,
        scrape_interval: str = "1s",
        config: dict[str, Any] | None = None,
    ) -> None:
        """``config``: a whole prometheus.yml (as data) instead of one job for ``targets``."""
        super().__init__(data_dir)
        self.binary = find_executable("prometheus", "/usr/bin/prometheus")
        self.port = free_port()
        self.targets = targets
        self.scrape_interval = scrape_interval
        self.config = config

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _command(self, port: int) -> list[str]:
        config = self.data_dir / "prometheus.yml"
        config.write_text(
            json.dumps(
                self.config
                or {
                    "global": {"scrape_interval": self.scrape_interval},
                    "scrape_configs": [
                        {
                            "job_name": "headwater",
                            "scrape_interval": self.scrape_interval,
                            "scrape_timeout": self.scrape_interval,
                            "static_configs": [{"targets": self.targets}],
                        }
                    ],
                }
            )
        )
        return [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address={LOOPBACK}:{port}",
        ]


JETSTREAM_READY_TIMEOUT: Final = 30.0
"""Seconds a cluster gets to elect its JetStream meta leader once every server listens."""


class NatsCluster:
    """Three (``size``) ``nats-server`` processes with JetStream, routed into one cluster.

    Client ports are picked by each server (as :class:`NatsServer` does); the
    route ports are chosen up front with :func:`free_port`, since every server
    must name the others' in its configuration. ``start`` returns once every
    server accepts clients and JetStream has a meta leader (``/healthz`` of
    every server answers 200), so that streams with three replicas can be
    created at once. One server can be killed and started again
    (:meth:`kill`, :meth:`start_server`) at the same ports and store.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        size: int = 3,
        name: str = "hw",
        no_advertise: bool = False,
        mqtt: bool = False,
    ) -> None:
        """``no_advertise``: the servers do not tell clients about each other, so a client
        uses only the URLs it was given (a proxy in front of a server stays in the way).
        ``mqtt``: each server also listens for MQTT (nats-server's own, at ``mqtt_ports``)."""
        self.data_dir = data_dir
        routes = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.mqtt_ports = [free_port() for _ in range(size)] if mqtt else []
        self.servers: list[NatsServer] = []
        for index in range(size):
            others = ", ".join(
                f"nats-route://{LOOPBACK}:{port}" for i, port in enumerate(routes) if i != index
            )
            extra = (
                f"http: {LOOPBACK}:{self.monitor_ports[index]}\n"
                f"cluster {{\n  name: {name}\n  host: {LOOPBACK}\n  port: {routes[index]}\n"
                f"  routes: [{others}]\n"
                + ("  no_advertise: true\n" if no_advertise else "")
                + "}\n"
                + (f"mqtt {{ host: {LOOPBACK}, port: {self.mqtt_ports[index]} }}\n" if mqtt else "")
            )
            self.servers.append(
                NatsServer(data_dir / f"n{index + 1}", extra=extra, server_name=f"n{index + 1}")
            )

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """Every server's URL, comma-separated (what ``headwater up --nats`` takes)."""
        return ",".join(self.urls)

    def start(self) -> None:
        for server in self.servers:
            server.start()
        self.wait_jetstream()

    def start_server(self, index: int) -> None:
        self.servers[index].start()
        self.wait_jetstream()

    def kill(self, index: int) -> None:
        self.servers[index].kill()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def wait_jetstream(self) -> None:
        """Until every running server says it is healthy, JetStream included."""
        deadline = time.monotonic() + JETSTREAM_READY_TIMEOUT
        for server, port in zip(self.servers, self.monitor_ports, strict=True):
            if server.process is None:
                continue
            while not _healthy(port):
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{server.server_name}: JetStream not ready after "
                        f"{JETSTREAM_READY_TIMEOUT}s:\n{server.log_tail()}"
                    )
                time.sleep(0.05)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _healthy(monitor_port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(
            f"http://{LOOPBACK}:{monitor_port}/healthz", timeout=1
        ) as answer:
            return bool(answer.status == 200)
    except (OSError, urllib.error.URLError):
        return False
