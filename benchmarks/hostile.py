"""Hostile MQTT clients: memory and connections held, Mosquitto vs `headwater up`.

How this works: each broker runs with its defaults, as users run it (Debian's
``mosquitto`` with a temporary config that only adds a loopback listener on an
ephemeral port and ``allow_anonymous true``; ``headwater up --http-port 0
--mqtt-port 0`` with its embedded default), a fresh process for each of three
probes, one broker after the other in the same run, started and stopped by
``tests/servers.py``'s :class:`ManagedServer`.  The clients are raw sockets in
this process (packets from Headwater's encoder), whose descriptor limit is
raised to its hard limit (the brokers inherit it).  Memory is the broker
process's resident set from ``/proc/PID/status``: VmRSS, and VmHWM for the peak.

* **Partial packets**: :data:`ROUNDS` rounds of
  :data:`PROBE_CONNECTIONS` connections that each send CONNECT, then the first
  :data:`PROBE_SENT` bytes of a :data:`PROBE_PACKET`-byte PUBLISH, and are
  closed together at the end of the round.  A thread samples VmRSS every few
  milliseconds for the peak.  Before a round's sockets are closed the script
  waits until the broker has taken what was sent (``/proc/net/tcp``: nothing in
  its listening socket's accept queue, its sockets' receive queues or the
  clients' send queues), then counts the connections the broker has already
  closed (EOF or reset): closed early.  RSS is read after each round, and after
  the last once the broker has let go (Headwater: ``headwater_mqtt_incomplete_bytes``
  in ``/metrics`` is 0) and its RSS is stable.  Mosquitto runs with its default
  ``max_packet_size`` (none: the protocol's 256 MB) and ``memory_limit`` (none);
  Headwater with its defaults (2 MiB packets, a 64 MiB budget for bytes of
  packets in progress across connections).
* **Idle connections**: N TCP connections that never send CONNECT; how many the
  broker still holds ``--idle-wait`` seconds (:data:`IDLE_WAIT`) after the last was
  opened, and its RSS once it has accepted them all and after the wait.
  Headwater closes a socket beyond its cap of sockets waiting for a CONNACK
  (4096) as soon as it is accepted, and the others after its 10 s CONNECT
  timeout; Mosquitto gives a new connection the keepalive of 60 s until its
  CONNECT says otherwise, so ``--idle-wait 100`` shows it closing them after
  1.5 x 60 s.  Headwater's counters of what it closed are printed under the table.
* **Slow connections**: N clients that CONNECT with keepalive
  :data:`SLOW_KEEPALIVE` s, read CONNACK, then send nothing; how many are held
  :data:`SLOW_WAIT` seconds after the last CONNACK ("the Server MUST disconnect"
  a client silent for one and a half times its keepalive [MQTT-3.1.2-24]), and
  the RSS each costs while held.  Mosquitto 2.0 checks keepalives every 5 s or
  so, hence :data:`SLOW_WATCH`: how long each broker took to close them all.

The table prints each measure for both brokers and the ratio headwater/mosquitto.
Headwater's HTTP delivery worker (a second process, which sees no MQTT traffic)
is not in the figures; its RSS is printed once.

Run: ``.venv/bin/python benchmarks/hostile.py [--connections 5000] [--idle-wait 15]``
(about 2 minutes).  Interrupted (Ctrl-C, SIGTERM, SIGHUP), it stops the brokers
and removes its temporary directories.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import math
import re
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headwater.mqtt.config import (
    CONNECT_TIMEOUT,
    DEFAULT_MAX_INCOMPLETE_BYTES,
    DEFAULT_MAX_PENDING_CONNECTIONS,
)
from headwater.mqtt.packets import Connect, ProtocolVersion, Publish, encode
from tests.servers import LOOPBACK, ManagedServer, find_executable, free_port

ROUNDS = 10
PROBE_CONNECTIONS = 200
PROBE_PACKET = 1024 * 1024  # the whole PUBLISH, fixed header included
PROBE_SENT = 900 * 1024  # of which each probe connection sends this much
CONNECTIONS = 5000  # idle and slow connections (bounded by the descriptor limit)
IDLE_WAIT = 15.0
SLOW_KEEPALIVE = 5
SLOW_WAIT = 10.0
SLOW_WATCH = 20.0  # Mosquitto 2.0 checks keepalives every 5 s or so: it closes later
WATCH_INTERVAL = 0.25
READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 30.0  # for a broker to read what was sent, or to let go of it
SAMPLE_INTERVAL = 0.005

# -- wire (MQTT 3.1.1) --------------------------------------------------------------------------


def connect_packet(client_id: str, keep_alive: int) -> bytes:
    return encode(Connect(client_id=client_id, keep_alive=keep_alive), ProtocolVersion.MQTT311)


def partial_publish(total: int, sent: int) -> bytes:
    """The first ``sent`` bytes of a QoS 0 PUBLISH to ``t`` that is ``total`` bytes long."""
    # 1 byte of packet type, 3 of Remaining Length (up to 2 MiB), 3 of topic.
    packet = encode(Publish("t", bytes(total - 7), 0, False, False, None), ProtocolVersion.MQTT311)
    assert len(packet) == total
    return packet[:sent]


# -- /proc ---------------------------------------------------------------------------------------


def status_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for process {pid}")


def tcp_queued(port: int) -> int:
    """What the broker on ``port`` has yet to take: connections waiting to be accepted
    (a listening socket's receive queue), bytes in its sockets' receive queues and in
    the send queues of the sockets connected to it (loopback, IPv4)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        tx, rx = (int(q, 16) for q in queues.split(":"))
        if int(local.split(":")[1], 16) == port:
            total += rx
        elif int(remote.split(":")[1], 16) == port:
            total += tx
    return total


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def stable_rss(pid: int, timeout: float = SETTLE_TIMEOUT) -> float:
    """VmRSS once it has moved less than 1 MiB over a second (or after ``timeout``)."""
    samples = [status_mib(pid, "VmRSS")]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        samples.append(status_mib(pid, "VmRSS"))
        last = samples[-5:]
        if len(last) == 5 and max(last) - min(last) < 1:
            break
    return samples[-1]


class PeakSampler:
    """A thread that keeps the highest VmRSS of ``pid`` seen while it runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.peak = max(self.peak, status_mib(self.pid, "VmRSS"))
            self._stop.wait(SAMPLE_INTERVAL)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- brokers -------------------------------------------------------------------------------------


class Broker(ManagedServer):
    """A broker process, its resident memory, and (Headwater's) metrics."""

    metrics_url: str | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss(self) -> float:
        return status_mib(self.pid, "VmRSS")

    def metric(self, name: str) -> float:
        """A Headwater metric from ``/metrics`` (summed over its label sets)."""
        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        values = re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
        if not values:
            raise RuntimeError(f"{name} is not in {self.metrics_url}")
        return sum(float(v) for v in values)


class Mosquitto(Broker):
    """Debian's mosquitto with its defaults, on an ephemeral loopback port."""

    name = "mosquitto"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = find_executable("mosquitto", "/usr/sbin/mosquitto")
        self.port = free_port()  # mosquitto cannot report a random port

    def _command(self, port: int) -> list[str]:
        # Everything else at its default: no max_packet_size, no memory_limit,
        # max_connections -1.  Run as root, mosquitto would switch to the user
        # `mosquitto`: stay who we are.
        config = self.data_dir / "mosquitto.conf"
        config.write_text(
            f"listener {port} {LOOPBACK}\nallow_anonymous true\nuser {getpass.getuser()}\n"
        )
        return [self.binary, "-c", str(config)]


class HeadwaterUp(Broker):
    """``headwater up`` with its embedded default (MQTT broker included)."""

    name = "headwater"

    def _command(self, port: int) -> list[str]:
        argv = [sys.executable, "-u", "-m", "headwater.cli", "up", "--http-port", "0"]
        return [*argv, "--mqtt-port", "0", "--data-dir", str(self.data_dir / "data")]

    def _discover_port(self, process: subprocess.Popen[bytes]) -> int | None:
        text = self._log_path.read_text(errors="replace")
        if "\nready\n" not in text:
            return None
        http = re.findall(r"http listening on (http://\S+)", text)[0]
        self.metrics_url = f"{http}/metrics"
        return int(re.findall(r"mqtt listening on mqtt://127\.0\.0\.1:(\d+)", text)[0])


BROKERS: dict[str, type[Broker]] = {"mosquitto": Mosquitto, "headwater": HeadwaterUp}


# -- clients -------------------------------------------------------------------------------------


class Watched:
    """Client sockets, and which of them the broker has closed (EOF or reset)."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []
        self.closed: set[int] = set()
        self._poll = select.poll()
        self._by_fd: dict[int, socket.socket] = {}

    def add(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sockets.append(sock)
        self._by_fd[sock.fileno()] = sock
        self._poll.register(sock, select.POLLIN | select.POLLRDHUP)

    def mark_closed(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd not in self.closed:
            self.closed.add(fd)
            self._poll.unregister(fd)

    def held(self) -> int:
        """How many the broker still holds: reads what it sent (CONNACK) and looks for EOF."""
        for fd, _ in self._poll.poll(0):
            sock = self._by_fd[fd]
            try:
                while sock.recv(65536):
                    pass
            except BlockingIOError:
                continue
            except OSError:
                pass
            self.mark_closed(sock)
        return len(self.sockets) - len(self.closed)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


@contextlib.contextmanager
def watched() -> Iterator[Watched]:
    group = Watched()
    try:
        yield group
    finally:
        group.close()


Hello = Callable[[int], bytes]  # the first bytes a client sends, by its index


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- probes --------------------------------------------------------------------------------------


@dataclass
class Figures:
    values: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def probe_partial_packets(broker: Broker, out: Figures) -> None:
    payload = connect_packet("", 60) + partial_publish(PROBE_PACKET, PROBE_SENT)
    before = broker.rss()
    early = 0
    unread = 0
    rounds: list[float] = []  # RSS at the end of each round, its connections closed
    started = time.monotonic()
    with PeakSampler(broker.pid) as sampler:
        for _ in range(ROUNDS):
            with watched() as group:
                for _ in range(PROBE_CONNECTIONS):
                    sock = _connect(broker.port)
                    with contextlib.suppress(OSError):  # closed by the broker meanwhile
                        sock.sendall(payload)
                    group.add(sock)
                if not wait_until(lambda: tcp_queued(broker.port) == 0, SETTLE_TIMEOUT):
                    unread += 1
                group.held()
                early += len(group.closed)
            rounds.append(broker.rss())
        elapsed = time.monotonic() - started
        hwm = status_mib(broker.pid, "VmHWM")
        released = time.monotonic()
        if broker.metrics_url is not None:
            wait_until(lambda: broker.metric("headwater_mqtt_incomplete_bytes") == 0, 60, 0.1)
        after = stable_rss(broker.pid)
        released = time.monotonic() - released
    out.values.update(
        {
            "probe: RSS before (MiB)": before,
            "probe: peak RSS, sampled (MiB)": sampler.peak,
            "probe: VmHWM (MiB)": hwm,
            "probe: RSS after round 1 (MiB)": rounds[0],
            f"probe: RSS after round {ROUNDS} (MiB)": rounds[-1],
            "probe: RSS after (MiB)": after,
            "probe: RSS after - before (MiB)": after - before,
            f"probe: closed early (of {ROUNDS * PROBE_CONNECTIONS})": early,
            "probe: rounds (s)": elapsed,
            "probe: let go and settled (s)": released,
        }
    )
    out.notes.append("RSS after each round (MiB): " + " ".join(f"{r:.0f}" for r in rounds))
    if unread:
        out.notes.append(f"{unread} probe rounds: the broker had not read everything in time")


def _open_many(port: int, n: int, group: Watched, hello: Hello | None) -> None:
    """Open ``n`` connections; with ``hello``, send it on each and read the CONNACKs."""
    for i in range(n):
        sock = _connect(port)
        if hello is not None:
            sock.sendall(hello(i))
        group.add(sock)
    if hello is None:
        return
    pending = {sock.fileno(): sock for sock in group.sockets}
    got = dict.fromkeys(pending, b"")
    poll = select.poll()
    for fd in pending:
        poll.register(fd, select.POLLIN)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for fd, _ in poll.poll(1000):
            try:
                data = pending[fd].recv(4 - len(got[fd]))
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            got[fd] += data
            if data and len(got[fd]) < 4:
                continue
            if not data:
                group.mark_closed(pending[fd])
            elif got[fd] != b"\x20\x02\x00\x00":
                raise RuntimeError(f"CONNACK refused: {got[fd]!r}")
            poll.unregister(fd)
            del pending[fd]
    if pending:
        raise RuntimeError(f"{len(pending)} CONNACKs missing after 60 s")


def probe_held(
    broker: Broker,
    n: int,
    out: Figures,
    kind: str,
    hello: Hello | None,
    wait: float,
    watch: float,
) -> None:
    """Open ``n`` connections (sending ``hello`` on each, if any) and send nothing more.

    How many the broker holds once all are open and ``wait`` s later, its RSS then,
    and when it closed the first and the last of them (watched for ``watch`` s).
    """
    before = broker.rss()
    first = last = math.nan
    with watched() as group:
        _open_many(broker.port, n, group, hello)
        opened = time.monotonic()
        # Accepted and read; then the cost of holding them, once the broker is done.
        wait_until(lambda: tcp_queued(broker.port) == 0, SETTLE_TIMEOUT)
        all_open = stable_rss(broker.pid, timeout=min(3.0, wait / 2))
        held_at_open = group.held()
        counted: tuple[int, float] | None = None  # held, RSS at ``wait``
        while True:
            now = time.monotonic() - opened
            count = group.held()
            if count < n and math.isnan(first):
                first = now
            if count == 0 and math.isnan(last):
                last = now
            if counted is None and now >= wait:
                counted = count, broker.rss()
            if counted is not None and (now >= watch or count == 0):
                break
            time.sleep(max(0.0, min(WATCH_INTERVAL, wait - now if now < wait else watch)))
    assert counted is not None
    held, after = counted
    out.values.update(
        {
            f"{kind}: RSS before (MiB)": before,
            f"{kind}: RSS with all open (MiB)": all_open,
            f"{kind}: held with all open (of {n})": held_at_open,
            f"{kind}: RSS per held connection (KiB)": (all_open - before)
            * 1024
            / max(1, held_at_open),
            f"{kind}: held after {wait:.0f} s (of {n})": held,
            f"{kind}: RSS after {wait:.0f} s (MiB)": after,
            f"{kind}: first closed after (s)": first,
            f"{kind}: all closed after (s)": last,
        }
    )


def counters(broker: Broker) -> str:
    """Headwater's counts of connections it closed for the budget or the socket caps."""
    names = ("incomplete_over_budget", "connections_refused")
    return ", ".join(
        f"headwater_mqtt_{n}_total {broker.metric(f'headwater_mqtt_{n}_total'):.0f}" for n in names
    )


def slow_hello(i: int) -> bytes:
    return connect_packet(f"slow-{i}", SLOW_KEEPALIVE)


# -- main ----------------------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _cell(value: float) -> str:
    return f"{'-':>10}" if math.isnan(value) else f"{value:10.1f}"


def print_table(results: dict[str, Figures]) -> None:
    mosq, hw = results["mosquitto"].values, results["headwater"].values
    width = max(len(k) for k in mosq)
    print(f"\n{'measure':<{width}}  {'mosquitto':>10}  {'headwater':>10}  {'ratio':>7}")
    for key, m in mosq.items():
        h = hw.get(key)
        if h is None:
            continue
        ratio = f"{h / m:6.2f}x" if m and not math.isnan(m + h) else "-"
        print(f"{key:<{width}}  {_cell(m)}  {_cell(h)}  {ratio:>7}")
    for name, figures in results.items():
        for note in figures.notes:
            print(f"{name}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=IDLE_WAIT,
        help="seconds idle connections are given before counting those held",
    )
    args = parser.parse_args()
    # Stopped by any of these, the brokers are stopped and the temporary files removed
    # on the way out (SIGINT too when the shell that started this ignores it).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stop)
    limit = raise_fd_limit()
    idle = args.idle_wait
    n = min(args.connections, limit - 500)  # descriptors for this process and its brokers
    version = subprocess.run(
        [find_executable("mosquitto", "/usr/sbin/mosquitto"), "-h"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()[0]
    print(
        f"{version}, defaults (max_packet_size: none, i.e. 256 MB; memory_limit: none) vs "
        f"headwater up, defaults ({DEFAULT_MAX_INCOMPLETE_BYTES // 1024 // 1024} MiB budget "
        f"for incomplete packets, {CONNECT_TIMEOUT:.0f} s CONNECT timeout, at most "
        f"{DEFAULT_MAX_PENDING_CONNECTIONS} sockets waiting for their CONNACK)\n"
        f"descriptor limit {limit}; probe {ROUNDS} x {PROBE_CONNECTIONS} connections sending "
        f"{PROBE_SENT // 1024} KiB of a {PROBE_PACKET // 1024} KiB PUBLISH; "
        f"{n} idle and {n} slow connections",
        flush=True,
    )
    results = {name: Figures() for name in BROKERS}
    probes: list[tuple[str, Callable[[Broker, Figures], None]]] = [
        ("partial packets", probe_partial_packets),
        ("idle", lambda b, out: probe_held(b, n, out, "idle", None, idle, idle)),
        ("slow", lambda b, out: probe_held(b, n, out, "slow", slow_hello, SLOW_WAIT, SLOW_WATCH)),
    ]
    worker: float | None = None
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as root:
        for title, probe in probes:
            for name, kind in BROKERS.items():
                with kind(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))) as broker:
                    print(f"{name}: {title} ...", flush=True)
                    probe(broker, results[name])
                    if broker.metrics_url is not None:
                        results[name].notes.append(f"{title}: " + counters(broker))
                    if name == "headwater" and worker is None:
                        worker = sum(
                            status_mib(int(c), "VmRSS")
                            for task in Path(f"/proc/{broker.pid}/task").iterdir()
                            for c in (task / "children").read_text().split()
                        )
    print_table(results)
    if worker:
        print(f"headwater's HTTP delivery worker process (not in the figures): {worker:.0f} MiB")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: brokers stopped, temporary files removed", file=sys.stderr)
        sys.exit(130)
