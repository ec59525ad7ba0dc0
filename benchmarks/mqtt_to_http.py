"""MQTT devices -> CloudEvents -> HTTP: Headwater vs Node-RED, the whole pipeline, same run.

What is measured: publishers send ``--messages`` QoS 1 telemetry messages
(JSON, numbered per device) as fast as a window of ``--window`` unacknowledged
messages per connection allows, and an HTTP sink counts what arrives. Between
them, one of two systems:

* **node-red**: Node-RED 4 (the npm package, installed at benchmark time into
  ``benchmarks/.cache/node-red``; never by the tests) with the flow a Node-RED
  user would build: ``mqtt in`` (QoS 1) subscribed to a Mosquitto that this
  benchmark starts (Debian's, default limits, ephemeral port) -> ``function``
  setting the CloudEvent ``ce-*`` headers -> ``http request`` POST to the
  sink. The publishers talk to that Mosquitto.
* **headwater**: ``headwater up`` as a user runs it: the embedded MQTT broker
  (MqttBrokerSource; PUBACK only once the event is in the log) -> a Broker on
  the SQLite log at ``normal`` durability -> one Trigger with a CESQL filter on
  a payload field lifted into an extension -> HTTP sink (binary CloudEvents).
  The publishers talk to the embedded broker.

The publishers (one process, our asyncio MQTT client over our codec, the same
for both) and the sink (one process, a bare asyncio protocol that parses
HTTP/1.1 by hand, Content-Length or chunked) are not part of either system;
both run on uvloop, so that they take as little as possible of the two cores
from the system under test.
The sink keys each arrival by (device, seq) from the body, so losses and
duplicates are exact. Rate = distinct messages delivered / (last arrival -
first publish). Loss = PUBACKed messages that never arrived. Peak RSS is the
kernel's high-water mark (VmHWM) of each system's processes (Node-RED's
includes Mosquitto's, Headwater's its HTTP worker's; reported separately too).
CPU is the user + system time each process used during the run.

Measured here (29 November 2026, 2 shared cores, 40,000 messages, 20
connections x window 20, three runs): node-red 1.40k-1.60k msgs/s with
35,768-37,453 of 40,000 PUBACKed messages lost (Mosquitto's default queue of
1000 overflows for Node-RED's session), peak RSS 268-323 MB; headwater
9.9k-10.4k msgs/s, none lost, 118 MB (74 + 44 for its HTTP worker):
6.5x-7.4x. ``--http-worker off`` (one process, 74 MB) delivered as fast
(9.5k-10.7k, alternated with ``on``: 9.7k-10.0k), its PUBACKs 10-15% later.
With ``--mosquitto-queue 0`` (unlimited) Node-RED still loses most: it takes
the whole burst in (RSS near 800 MB) and its ``http request`` node fails
most of the requests it opens at once. Later that day, on the same machine
running slower (the harness's own CPU per run up about 40%): node-red
1.28k-1.38k, headwater 7.8k-8.1k, 5.7x-6.3x; there, group commits on the
event loop (``LoopWriter``) against the writer thread, alternated:
8.05k-8.28k against 7.85k-7.94k, PUBACKs 10-15% sooner.

How Headwater got there (each step measured with this benchmark, py-spy and
the CPU column; earlier figures in the git history of this file):

* 2.9k: pipelining hooked PUBLISHes in the embedded broker (one write for a
  batch of PUBACKs, many appends per group commit) -> 5.4k.
* uvloop, the default of ``headwater up --loop``: about 5% more.
* HTTP deliveries in a worker process (``--http-worker``): the main loop's
  CPU per delivery fell from about 70 us to 10 us -> 6.5k.
* SQLite log reads on the event loop's thread instead of a reader thread:
  while the MQTT ingest kept the loop busy, each hand-over to the reader
  waited for the GIL (10-12 ms per read of 50 entries), and the Trigger
  delivered only about 2.5k/s until the publishers stopped.
* This sink instead of an aiohttp server (the same for both systems):
  aiohttp's took about 45 us of CPU per request, a third of the HTTP hop,
  on the same two cores; this one takes under 10. Node-RED's rate did not
  move (1.2k-1.6k with either sink); Headwater went from 6.2k-6.6k to
  7.1k-7.9k. With the aiohttp sink and everything below, Headwater did 6.6k
  against Node-RED's 1.34k (4.9x, one run): the sink itself was then what
  the pipeline waited for.
* Deliveries with :class:`headwater.eventing._http1.Http1Client` (pooled
  keep-alive HTTP/1.1, httptools' parser) instead of aiohttp's client:
  about 17 us of CPU per POST instead of 75-95 -> 10.8k-11.6k; 9.9k-10.4k
  in the final runs, after the review fixes (bounded response headers, no
  resend); the runs' noise is as large as that difference.

Tracing (``--tracing off,1%,100%``): Headwater runs once per setting in each
round, ``off`` as users run it by default and each percentage with
``--otlp-endpoint`` at the sink's process (which answers OTLP/HTTP as a
collector does) and ``--trace-sampling`` at that ratio; the ratios to
tracing off are printed, in msgs/s and in CPU per event (the system's
processes, the HTTP worker included: where tracing's cost shows even when
the run is bound by something else). ``--baseline DIR`` (repeatable) with a
checkout of a revision before tracing existed says what ``off`` costs
(``git archive main src | tar -x -C DIR``).

Measured here (7 December 2026, 2 cores shared with other test suites, so
msgs/s moved by 2x between runs of one system and CPU per event is the figure
to read; medians, every system once per round in rotating order):

* five rounds of off, 1%, 100% and two checkouts without tracing (main, and
  the seams branch it was merged with): off 83 us/event against main's 88
  (0.95x) and the seams branch's 86 (0.97x): tracing off costs nothing
  measurable. 1%: 97 us (1.16x); 100%: 238 us (2.86x; 0.34x msgs/s in the
  best runs, 0.41x in the medians). Four rounds earlier: off against main
  0.96x, 1% 1.21x, 100% 2.58x.
* three rounds on a quieter machine of off, 0% and 1%: 0% 1.08x the CPU
  per event (0.81x msgs/s), 1% 1.10x (0.86x msgs/s). Most of what 1% costs is
  what every event gets when tracing is on, sampled or not: a new trace
  context (a random draw, the extension stamped), stored with it in the log,
  checked by the Trigger and written out twice (``ce-traceparent`` and
  ``traceparent``). The issue's target for 1%, 0.95x of off, is not met yet.
* 7 December 2026, later, after an unsampled event stopped carrying a context
  of Headwater's (``tracing/flows.py``) and the Broker stopped drawing again
  for what an ingress left unsampled, with ``--baseline`` of main before
  that change and ``--baseline-tracing`` (three rounds of off, 1%, 100% of
  both, the machine loaded by other suites: one tree's off took 86-112 us per
  event from run to run). 1% against main's 1%: 0.85x the CPU per event,
  1.06x msgs/s (medians), 1.16x (best runs); 100% unchanged (0.99x). 1%
  against off of the same tree: 0.97x msgs/s in the best runs, 0.80x in the
  medians, 1.15x CPU (main's own 1% against its off in the same run: 1.55x
  CPU). cProfile of a 1% run: every tracing function together is about 1.5%
  of the main thread's time. The spread between runs is larger than what is
  left to measure; 0.95x in the medians is not shown by these runs. Rebased on
  main's pre-encoded MQTT records (kept at 1% for a batch nothing of which
  is sampled), three rounds: 1% 0.99x msgs/s and 0.99x CPU of the off run
  next to it in the first round, 0.86x msgs/s and 1.22x CPU in the medians.
* 7 December 2026, evening, a quiet machine (nothing else running), after a
  batch holding a sampled event stopped losing the other events' encoded
  records (at 1% about one batch in six of this load held one;
  ``sources/mqttbroker.py``): six rounds of off, 0% and 1%: 0% 1.01x msgs/s
  (medians), 1% 0.98x (0.99x best), CPU per event 1.01x and 1.02x; five
  rounds of off, 1% and 100%: 1% 0.97x msgs/s (medians, 0.98x best) and 1.03x
  CPU, 100% 0.37x msgs/s and 2.64x CPU (205 us against 78). Four more runs
  of off and 1% (6, 8, 6 and 5 rounds) while the shared host slowed from
  run to run (off alone: 8.7k-13.4k msgs/s within one run): medians 0.86x,
  0.92x, 0.96x and 1.12x. Each 1% run against the off runs next to it, all
  36 of the six runs: 0.965x msgs/s (median; geometric mean 0.953x), 1.034x
  CPU per event, which is what 100%'s cost predicts for 1% (1.3 us per event
  for the sampled hundredth, 0.45 us for the draw and check of the rest).
  The target, 0.95x of off, is met in those terms; single runs on this host
  scatter by more than the whole cost.

Run: ``.venv/bin/python benchmarks/mqtt_to_http.py [--messages N] [--publishers P]
[--window W] [--systems node-red,headwater] [--max-inflight M] [--profile FILE]
[--loop uvloop|asyncio] [--http-worker on|off] [--tracing off,1%,100%]
[--baseline DIR]... [--rounds R]``. Needs node/npm (Node-RED) and mosquitto.
``--profile FILE`` runs headwater under cProfile (writes FILE when it stops)
to see where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import uvloop

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache" / "node-red"
NODE_RED_VERSION = "4"
READY_TIMEOUT = 120.0
IDLE_TIMEOUT = 10.0
"""Seconds without a new arrival after which the rest counts as lost."""

NPM_QUIET = ("--no-audit", "--no-fund", "--loglevel=error")

FILTER = "type = 'dev.headwater.telemetry' AND temperature > -100"
"""The Trigger's CESQL filter, on a lifted payload field; every message matches it."""


# -- helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (headwater's HTTP worker), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


class Output:
    """A child's stdout, read by a thread (a full pipe would stall the child)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.changed = threading.Condition()
        assert process.stdout is not None
        stdout = process.stdout

        def read() -> None:
            for line in stdout:
                with self.changed:
                    self.lines.append(line)
                    self.changed.notify_all()

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def wait_for(self, text: str, process: subprocess.Popen[str]) -> str:
        with self.changed:
            ok = self.changed.wait_for(
                lambda: any(text in line for line in self.lines) or process.poll() is not None,
                READY_TIMEOUT,
            )
            if not ok or process.poll() is not None:
                tail = "".join(self.lines[-30:])
                raise RuntimeError(f"no {text!r} from {process.args!r}:\n{tail}")
            return next(line for line in self.lines if text in line)


@contextlib.contextmanager
def child(args: list[str], **kwargs: Any) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    try:
        yield process, Output(process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        assert process.stdout is not None
        process.stdout.close()


# -- the sink (its own process) -----------------------------------------------------------


class _SinkProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection to the sink: requests in, a response each, in order.

    Parsed by hand because the sink is part of the harness, not of either system:
    aiohttp's server took about 45 us of CPU per request here, a third of what the
    HTTP hop costs the system under test, on the same two cores. This takes a few.
    Bodies come with Content-Length or chunked; anything else is answered 400 and
    the connection closed (a miscount would show as losses, never as speed).
    """

    def __init__(self, sink: _Sink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        out: list[bytes] = []
        close = False
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            request_line, *lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            at = end + 4
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = self._chunked(at)
                if body is None:
                    break  # not all of it yet
                body, at = body
            else:
                length = int(headers.get("content-length", "0") or 0)
                if len(buffer) < at + length:
                    break
                body = bytes(buffer[at : at + length])
                at += length
            del buffer[:at]
            method, target, _ = request_line.split(" ", 2)
            out.append(self.sink.handle(method, target, body))
            close = headers.get("connection", "").lower() == "close"
            if close:
                break
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()

    def _chunked(self, at: int) -> tuple[bytes, int] | None:
        buffer, chunks = self.buffer, []
        while True:
            line_end = buffer.find(b"\r\n", at)
            if line_end < 0:
                return None
            size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
            at = line_end + 2
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", at - 2)
                return None if trailer_end < 0 else (b"".join(chunks), trailer_end + 4)
            if len(buffer) < at + size + 2:
                return None
            chunks.append(bytes(buffer[at : at + size]))
            at += size + 2


class _Sink:
    """Counts distinct (device, seq) arrivals; GET /stats, POST /reset."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, int]] = set()
        self.count = 0
        self.last = 0.0
        self.trace_requests = 0
        self.trace_bytes = 0

    def handle(self, method: str, target: str, body: bytes) -> bytes:
        if method == "POST" and target == "/v1/traces":
            # An OTLP/HTTP collector's answer (an empty ExportTraceServiceResponse),
            # for Headwater's spans when --tracing has it export them here.
            self.trace_requests += 1
            self.trace_bytes += len(body)
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
            return f"{head}Content-Length: 0\r\n\r\n".encode()
        if method == "POST" and target == "/":
            event = orjson.loads(body)
            self.seen.add((event["device"], event["seq"]))
            self.count += 1
            self.last = time.time()
            return b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        if method == "GET" and target == "/stats":
            stats = {
                "distinct": len(self.seen),
                "count": self.count,
                "last": self.last,
                "traceRequests": self.trace_requests,
                "traceBytes": self.trace_bytes,
            }
            body = orjson.dumps(stats)
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        if method == "POST" and target == "/reset":
            self.seen.clear()
            self.count, self.last = 0, 0.0
            self.trace_requests = self.trace_bytes = 0
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def run_sink(port: int) -> None:
    async def serve() -> None:
        sink = _Sink()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _SinkProtocol(sink), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


async def _sink_call(port: int, method: str, path: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read(65536)
    writer.close()
    await writer.wait_closed()
    body = data.partition(b"\r\n\r\n")[2]
    return json.loads(body) if body else {}


def sink_stats(port: int) -> dict[str, Any]:
    return asyncio.run(_sink_call(port, "GET", "/stats"))


# -- the publishers (one process) ---------------------------------------------------------


def run_publishers(
    ports: list[int],
    publishers: int,
    total: int,
    window: int,
    out: mp.Queue[dict[str, Any]],
    topic_prefix: str = "bench",
    mqtt5: bool = True,
) -> None:
    """``publishers`` QoS 1 connections, connection ``i`` to ``ports[i % len(ports)]``,
    each with ``window`` publishes in flight; ``total`` messages in all, each stamped
    with the time it was sent (``sent``) for latencies measured at the receiver.
    ``mqtt5=False`` speaks 3.1.1 (nats-server's MQTT has no 5.0)."""
    from headwater.mqtt.client import Client, ClientConfig, ConnectionLost, PublishRefused
    from headwater.mqtt.packets import ProtocolVersion

    version = ProtocolVersion.MQTT5 if mqtt5 else ProtocolVersion.MQTT311

    async def publisher(n: int, count: int, stats: dict[str, int]) -> None:
        device = f"dev{n}"
        topic = f"{topic_prefix}/{device}/climate"
        config = ClientConfig(
            "127.0.0.1", ports[n % len(ports)], f"bench-{n}", version, clean_start=True
        )
        seqs = iter(range(count))
        async with Client(config) as client:

            async def lane() -> None:
                for seq in seqs:
                    payload = orjson.dumps(
                        {
                            "device": device,
                            "seq": seq,
                            "sent": time.time(),
                            "temperature": 15 + seq % 20,
                            "rh": 55.5,
                        }
                    )
                    try:
                        await client.publish(topic, payload, 1)
                        stats["acked"] += 1
                    except (ConnectionLost, PublishRefused):
                        stats["refused"] += 1

            await asyncio.gather(*(lane() for _ in range(window)))

    async def main() -> None:
        stats = {"acked": 0, "refused": 0}
        share = [total // publishers + (i < total % publishers) for i in range(publishers)]
        started = time.time()
        await asyncio.gather(*(publisher(i, share[i], stats) for i in range(publishers)))
        out.put({**stats, "started": started, "finished": time.time()})

    uvloop.run(main())


# -- the systems --------------------------------------------------------------------------


@dataclass
class Result:
    system: str
    sent: int
    acked: int
    delivered: int
    duplicates: int
    seconds: float
    publish_seconds: float
    rss_mb: float
    note: str = ""
    cpu: str = ""
    #: CPU seconds of the system's processes (not the sink's or the publishers').
    cpu_seconds: float = 0.0
    traces: str = ""

    @property
    def cpu_per_event_us(self) -> float:
        return self.cpu_seconds / self.delivered * 1e6 if self.delivered else 0.0

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.acked - self.delivered)


class Sink(NamedTuple):
    """The counting sink's process: where to POST, and whose CPU to report."""

    port: int
    pid: int


def drive(
    system: str, mqtt_port: int, sink: Sink, args: argparse.Namespace, pids: list[int]
) -> Result:
    """Publish, wait until everything acked arrived (or arrivals stop), collect."""
    asyncio.run(_sink_call(sink.port, "POST", "/reset"))
    out: mp.Queue[dict[str, Any]] = mp.Queue()
    pub = mp.Process(
        target=run_publishers,
        args=([mqtt_port], args.publishers, args.messages, args.window, out),
    )
    system_pids = pids + [c for pid in pids for c in children(pid)]
    watched = {"sink": sink.pid, **{str(pid): pid for pid in system_pids}}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    pub.start()
    published = out.get(timeout=600)
    publishers_cpu = cpu_seconds(pub.pid)
    pub.join()
    last_change, last_count = time.monotonic(), -1
    while True:
        stats = sink_stats(sink.port)
        if stats["distinct"] >= published["acked"]:
            break
        if stats["count"] != last_count:
            last_change, last_count = time.monotonic(), stats["count"]
        elif time.monotonic() - last_change > IDLE_TIMEOUT:
            break
        time.sleep(0.1)
    rss = [peak_rss_mb(pid) for pid in system_pids]
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
    # The spans still queued when the last event arrived are exported within the
    # batch processor's delay: counted once the export requests stop changing.
    traces = sink_stats(sink.port)
    if traces["traceRequests"]:
        while True:
            time.sleep(6.0)  # the SDK exports at least every 5 s
            again = sink_stats(sink.port)
            if again["traceRequests"] == traces["traceRequests"]:
                break
            traces = again
    return Result(
        system,
        args.messages,
        published["acked"],
        stats["distinct"],
        stats["count"] - stats["distinct"],
        (stats["last"] or time.time()) - published["started"],
        published["finished"] - published["started"],
        sum(rss),
        " + ".join(f"{r:.0f}" for r in rss) + " MB" if len(rss) > 1 else "",
        " + ".join(f"{cpu[str(pid)]:.1f}" for pid in system_pids)
        + f" s (sink {cpu['sink']:.1f} s, publishers {publishers_cpu:.1f} s)",
        sum(cpu[str(pid)] for pid in system_pids),
        f"{traces['traceRequests']} OTLP requests, {traces['traceBytes'] / 1e6:.1f} MB"
        if traces["traceRequests"]
        else "",
    )


def install_node_red() -> Path:
    red = CACHE / "node_modules" / "node-red" / "red.js"
    if not red.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed (Node-RED needs node and npm)")
        print(f"installing node-red@{NODE_RED_VERSION} into {CACHE} ...", flush=True)
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "install", "--prefix", str(CACHE), f"node-red@{NODE_RED_VERSION}", *NPM_QUIET],
            check=True,
        )
    return red


def node_red_flow(mqtt_port: int, sink_port: int) -> list[dict[str, Any]]:
    set_headers = """
const device = msg.topic.split("/")[1];
msg.headers = {
  "ce-specversion": "1.0",
  "ce-id": RED.util.generateId(),
  "ce-source": "mqtt://127.0.0.1/" + msg.topic,
  "ce-type": "dev.headwater.telemetry",
  "ce-subject": device,
  "ce-time": new Date().toISOString(),
  "content-type": "application/json",
};
return msg;
"""
    return [
        {"id": "tab", "type": "tab", "label": "bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "broker": "127.0.0.1",
            "port": str(mqtt_port),
            "clientid": "node-red-bench",
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "tab",
            "topic": "bench/#",
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "wires": [["ce"]],
        },
        {
            "id": "ce",
            "type": "function",
            "z": "tab",
            "func": set_headers.replace("RED.util.generateId()", "crypto.randomUUID()"),
            "outputs": 1,
            "libs": [{"var": "crypto", "module": "crypto"}],
            "wires": [["post"]],
        },
        {
            "id": "post",
            "type": "http request",
            "z": "tab",
            "method": "POST",
            "ret": "txt",
            "url": f"http://127.0.0.1:{sink_port}/",
            "wires": [[]],
        },
    ]


def bench_node_red(sink: Sink, args: argparse.Namespace) -> Result:
    red = install_node_red()
    node = shutil.which("node")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if node is None:
        raise RuntimeError("node is not installed")
    with tempfile.TemporaryDirectory(prefix="bench-node-red-") as tmp:
        mqtt_port, ui_port = free_port(), free_port()
        conf = Path(tmp) / "mosquitto.conf"
        queue = (
            "" if args.mosquitto_queue is None else f"max_queued_messages {args.mosquitto_queue}\n"
        )
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n{queue}")
        (Path(tmp) / "flows.json").write_text(json.dumps(node_red_flow(mqtt_port, sink.port)))
        (Path(tmp) / "settings.js").write_text(
            "module.exports = {"
            f"uiHost: '127.0.0.1', uiPort: {ui_port}, flowFile: 'flows.json',"
            f"userDir: {json.dumps(tmp)}, credentialSecret: false,"
            "functionExternalModules: true, httpAdminRoot: false,"
            "logging: {console: {level: 'info', metrics: false, audit: false}}};\n"
        )
        with (
            child([mosquitto, "-c", str(conf)]) as (mqtt, _),
            child([node, str(red), "--settings", str(Path(tmp) / "settings.js")], cwd=tmp) as (
                nr,
                nr_out,
            ),
        ):
            wait_port(mqtt_port)
            nr_out.wait_for("Connected to broker", nr)
            return drive("node-red", mqtt_port, sink, args, [nr.pid, mqtt.pid])


def headwater_resources(mqtt_port: int, sink_port: int, max_inflight: int) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{host: 127.0.0.1, port: {mqtt_port}}}]
  topics: ["bench/#"]
  deviceEvents: false
  mapping:
    topicPattern: "bench/{{device}}/{{metric}}"
    type: dev.headwater.telemetry
    subject: "{{device}}"
    extensions: {{temperature: temperature}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: to-sink
  annotations: {{headwater.dev/max-inflight: "{max_inflight}"}}
spec:
  broker: default
  filters:
    - cesql: "{FILTER}"
  subscriber: {{uri: "http://127.0.0.1:{sink_port}/"}}
"""


def bench_headwater(
    sink: Sink, args: argparse.Namespace, src: str | None = None, sampling: float | None = None
) -> Result:
    """``headwater up`` from this checkout, or from another's ``src`` (``--baseline``);
    with ``sampling``, tracing on at that ratio, exporting to the sink's /v1/traces."""
    with tempfile.TemporaryDirectory(prefix="bench-headwater-") as tmp:
        mqtt_port = free_port()
        resources = Path(tmp) / "bench.yaml"
        resources.write_text(headwater_resources(mqtt_port, sink.port, args.max_inflight))
        python = [sys.executable]
        if args.profile:
            python += ["-m", "cProfile", "-o", args.profile]
        command = [*python, "-m", "headwater.cli", "up", "-f", str(resources)]
        command += ["--data-dir", str(Path(tmp) / "data"), "--http-port", "0"]
        command += ["--durability", "normal", "--log-level", "warning"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if src is not None:
            env["PYTHONPATH"] = src  # ahead of this tree's editable install
        # An older checkout may predate these options: then it runs its defaults.
        known = _up_options(env)
        if "--loop" in known:
            command += ["--loop", args.loop]
        if "--http-worker" in known:
            command += ["--http-worker" if args.http_worker == "on" else "--no-http-worker"]
        if sampling is not None:
            command += ["--otlp-endpoint", f"http://127.0.0.1:{sink.port}"]
            command += ["--trace-sampling", str(sampling)]
        with child(command, env=env) as (hw, out):
            out.wait_for("ready", hw)
            return drive("headwater", mqtt_port, sink, args, [hw.pid])


def tracing_variants(text: str) -> dict[str, float | None]:
    """``off,1%,100%`` -> {"headwater": None, "headwater+1%": 0.01, ...}."""
    variants: dict[str, float | None] = {}
    for item in text.split(","):
        item = item.strip()
        if item == "off":
            variants["headwater"] = None
        elif item.endswith("%") and 0 <= float(item[:-1]) <= 100:
            variants[f"headwater+{item}"] = float(item[:-1]) / 100
        else:
            raise SystemExit(f"--tracing: {item!r} is not off or a percentage (1%, 100%)")
    return variants


def _up_options(env: dict[str, str]) -> str:
    """``headwater up --help`` of the checkout ``env`` selects."""
    return subprocess.run(
        [sys.executable, "-m", "headwater.cli", "up", "--help"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--publishers", type=int, default=20, help="MQTT connections")
    parser.add_argument("--window", type=int, default=20, help="unacked messages per connection")
    parser.add_argument("--systems", default="node-red,headwater")
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=100,
        help="the Trigger's concurrent deliveries (headwater.dev/max-inflight; 100 by default)",
    )
    parser.add_argument(
        "--mosquitto-queue",
        type=int,
        default=None,
        help="Mosquitto's max_queued_messages for Node-RED's session (its default: 1000; "
        "0: unlimited, to see Node-RED's rate when Mosquitto drops nothing)",
    )
    parser.add_argument("--profile", default=None, help="cProfile output file for headwater")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="another checkout's tree (git worktree add DIR REV, or git archive REV src): "
        "adds headwater@DIR's name, run alternately; repeatable",
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of every system")
    parser.add_argument(
        "--loop", default="uvloop", choices=["uvloop", "asyncio"], help="headwater up --loop"
    )
    parser.add_argument(
        "--http-worker", default="on", choices=["on", "off"], help="headwater up --http-worker"
    )
    parser.add_argument(
        "--baseline-tracing",
        action="store_true",
        help="run each --baseline with every --tracing setting too (a before/after of "
        "tracing's own cost in one run), not only with tracing off",
    )
    parser.add_argument(
        "--tracing",
        default="off",
        help="headwater's runs, comma-separated: off, or tracing on at a sampling ratio "
        "(1%%, 100%%) exporting OTLP/HTTP to the sink's process; e.g. off,1%%,100%%",
    )
    args = parser.parse_args()
    variants = tracing_variants(args.tracing)
    # A baseline's runs: "headwater@DIR" (off), and with --baseline-tracing
    # "headwater@DIR+1%"... for each setting of --tracing.
    bases: dict[str, tuple[Path, float | None]] = {}
    for directory in args.baseline:
        tree = Path(directory).resolve()
        for variant, sampling in variants.items():
            if sampling is None or args.baseline_tracing:
                name = f"headwater@{tree.name}{variant.removeprefix('headwater')}"
                bases[name] = (tree, sampling)

    sink_port = free_port()
    sink_process = mp.Process(target=run_sink, args=(sink_port,), daemon=True)
    sink_process.start()
    assert sink_process.pid is not None
    sink = Sink(sink_port, sink_process.pid)
    results: dict[str, Result] = {}
    try:
        wait_port(sink_port)
        print(
            f"{args.messages} QoS 1 messages from {args.publishers} connections "
            f"(window {args.window}) -> system -> HTTP sink",
            flush=True,
        )
        systems = []
        for system in args.systems.split(","):
            systems += list(variants) if system == "headwater" else [system]
        systems += list(bases)
        # Each round starts one system later, so that no system always runs first
        # (or always right after another) while the machine's load drifts.
        order = [
            system
            for round_ in range(args.rounds)
            for system in systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
        ]
        runs: dict[str, list[Result]] = {}
        for system in order:
            if system == "node-red":
                result = bench_node_red(sink, args)
            elif system in bases:
                tree, sampling = bases[system]
                result = bench_headwater(sink, args, str(tree / "src"), sampling)
            else:
                result = bench_headwater(sink, args, None, variants[system])
            runs.setdefault(system, []).append(result)
            if system not in results or result.rate > results[system].rate:
                results[system] = result  # the best run of each
            print(
                f"{system:>10}: {result.rate:8.0f} msgs/s delivered "
                f"(published in {result.publish_seconds:5.1f}s, delivered in "
                f"{result.seconds:5.1f}s), acked {result.acked}/{result.sent}, "
                f"lost {result.lost}, duplicates {result.duplicates}, "
                f"peak RSS {result.rss_mb:6.1f} MB {result.note}; CPU {result.cpu}, "
                f"{result.cpu_per_event_us:.0f} us/event"
                + (f"; {result.traces}" if result.traces else ""),
                flush=True,
            )
    finally:
        sink_process.terminate()
        sink_process.join()
    if "node-red" in results and "headwater" in results:
        ratio = results["headwater"].rate / max(results["node-red"].rate, 1e-9)
        print(f"ratio headwater/node-red: {ratio:.1f}x msgs/s (best runs)")
    # This tree's off against each baseline's; each setting against off in the same
    # tree; and, with --baseline-tracing, each setting against the baseline's.
    pairs: list[tuple[str, str]] = []
    for base, (_, sampling) in bases.items():
        off = base.partition("+")[0]
        if sampling is None:
            pairs.append(("headwater", base))
        else:
            pairs += [(base, off), ("headwater" + base.removeprefix(off), base)]
    pairs += [(system, "headwater") for system in variants if system != "headwater"]
    for system, other in pairs:
        if system in runs and other in runs:
            _compare(system, other, runs[system], runs[other])


def _compare(name: str, other: str, mine: list[Result], theirs: list[Result]) -> None:
    """The ratios of two systems' runs: best msgs/s, median msgs/s, median CPU per event."""
    best = max(r.rate for r in mine) / max(max(r.rate for r in theirs), 1e-9)
    median = statistics.median(r.rate for r in mine) / max(
        statistics.median(r.rate for r in theirs), 1e-9
    )
    cpu_mine = statistics.median(r.cpu_per_event_us for r in mine)
    cpu_theirs = statistics.median(r.cpu_per_event_us for r in theirs)
    print(
        f"ratio {name}/{other}: {best:.2f}x msgs/s (best runs), {median:.2f}x (medians); "
        f"CPU per event {cpu_mine:.0f} us against {cpu_theirs:.0f} us "
        f"({cpu_mine / max(cpu_theirs, 1e-9):.2f}x, medians of {len(mine)} runs)"
    )


if __name__ == "__main__":
    main()
