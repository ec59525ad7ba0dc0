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
for both) and the sink (one process, aiohttp) are not part of either system;
both run on uvloop, so that they take as little as possible of the two cores
from the system under test.
The sink keys each arrival by (device, seq) from the body, so losses and
duplicates are exact. Rate = distinct messages delivered / (last arrival -
first publish). Loss = PUBACKed messages that never arrived. Peak RSS is the
kernel's high-water mark (VmHWM) of each system's processes (Node-RED's
includes Mosquitto's, Headwater's its HTTP worker's; reported separately too).

Measured here (2 shared cores, 20,000 messages, 20 connections x window 20):
node-red 1.55k msgs/s delivered with 16,371 of 20,000 PUBACKed messages lost
(Mosquitto's default queue of 1000 overflows for Node-RED's session), peak
RSS 310 MB; headwater 5.4k msgs/s, none lost, 73 MB: 3.5x (3.3x-5.6x over five
runs on the shared machine, Node-RED varying most). With ``--mosquitto-queue 0``
(unlimited) Node-RED still lost 15,874: it takes the whole burst in (RSS 789 MB)
and its ``http request`` node fails most of the requests it opens at once, so
its losses are the flow's own, not only Mosquitto's. Where headwater's
time goes (py-spy on the process): the Trigger's HTTP delivery (aiohttp
client) ~30% of the event loop, the MQTT ingest hook (mapping + durable
append) ~25%, reading the log for the Trigger ~10%; the process is CPU-bound
on one core. Pipelining hooked PUBLISHes in the embedded broker (one write
for a batch of PUBACKs, many appends per group commit) took it from 2.9k.

29 November 2026 (uvloop, the default of ``headwater up --loop``): node-red
1.35k-1.55k msgs/s (16,998-17,140 of 20,000 lost), headwater 5.5k-5.7k, none
lost: 3.5x-4.2x. uvloop by itself gave about 5% here (``--loop asyncio``
5.1k-5.3k, alternated runs). The process was CPU-bound on one core and the
Trigger's aiohttp deliveries were 60% of its event loop (py-spy). With the
HTTP requests made by a worker process (``headwater up --http-worker``, now
the default) the event loop's CPU per delivery fell from about 70 us to
10 us and the process from 100% to 30% of a core: 40,000 messages,
alternated, 6.5k-6.6k msgs/s with the worker against 5.6k-6.1k without, and
publishing (PUBACKs) took 2.2-2.4 s instead of 3.2-3.6 s; the worker costs
46 MB. What limits it now is the two cores shared by four busy processes
(headwater, its worker, the sink, the publishers): none is at 100%, and a
larger --max-inflight (200, 400) changed nothing. An in-memory tail cache
for the Trigger's log reads (branch wip/log-tail-cache) did not change it
either: the Trigger is far behind the head during the burst.

Run: ``.venv/bin/python benchmarks/mqtt_to_http.py [--messages N] [--publishers P]
[--window W] [--systems node-red,headwater] [--max-inflight M] [--profile FILE]
[--loop uvloop|asyncio] [--http-worker on|off]``. Needs node/npm
(Node-RED) and mosquitto. ``--profile FILE`` runs headwater under cProfile
(writes FILE when it stops) to see where its time goes.
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
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvloop
from aiohttp import web

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


def run_sink(port: int) -> None:
    """Count distinct (device, seq) arrivals; GET /stats, POST /reset."""
    seen: set[tuple[str, int]] = set()
    state = {"count": 0, "last": 0.0}

    async def receive(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.add((body["device"], body["seq"]))
        state["count"] += 1
        state["last"] = time.time()
        return web.Response(status=202)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"distinct": len(seen), **state})

    async def reset(request: web.Request) -> web.Response:
        seen.clear()
        state.update(count=0, last=0.0)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", receive)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, access_log=None, loop=uvloop.new_event_loop()
    )


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
    port: int, publishers: int, total: int, window: int, out: mp.Queue[dict[str, Any]]
) -> None:
    from headwater.mqtt.packets import ProtocolVersion
    from headwater.sources.mqtt import ConnectionLost, MqttClient, MqttClientConfig

    async def publisher(n: int, count: int, stats: dict[str, int]) -> None:
        device = f"dev{n}"
        topic = f"bench/{device}/climate"
        config = MqttClientConfig(
            "127.0.0.1", port, f"bench-{n}", ProtocolVersion.MQTT5, clean_start=True
        )
        seqs = iter(range(count))
        async with MqttClient(config) as client:

            async def lane() -> None:
                for seq in seqs:
                    payload = orjson.dumps(
                        {"device": device, "seq": seq, "temperature": 15 + seq % 20, "rh": 55.5}
                    )
                    try:
                        await client.publish(topic, payload, 1)
                        stats["acked"] += 1
                    except ConnectionLost:
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

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds if self.seconds > 0 else 0.0

    @property
    def lost(self) -> int:
        return max(0, self.acked - self.delivered)


def drive(
    system: str, mqtt_port: int, sink_port: int, args: argparse.Namespace, pids: list[int]
) -> Result:
    """Publish, wait until everything acked arrived (or arrivals stop), collect."""
    asyncio.run(_sink_call(sink_port, "POST", "/reset"))
    out: mp.Queue[dict[str, Any]] = mp.Queue()
    pub = mp.Process(
        target=run_publishers,
        args=(mqtt_port, args.publishers, args.messages, args.window, out),
    )
    pub.start()
    published = out.get(timeout=600)
    pub.join()
    last_change, last_count = time.monotonic(), -1
    while True:
        stats = sink_stats(sink_port)
        if stats["distinct"] >= published["acked"]:
            break
        if stats["count"] != last_count:
            last_change, last_count = time.monotonic(), stats["count"]
        elif time.monotonic() - last_change > IDLE_TIMEOUT:
            break
        time.sleep(0.1)
    rss = [peak_rss_mb(pid) for pid in pids + [c for pid in pids for c in children(pid)]]
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


def bench_node_red(sink_port: int, args: argparse.Namespace) -> Result:
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
        (Path(tmp) / "flows.json").write_text(json.dumps(node_red_flow(mqtt_port, sink_port)))
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
            return drive("node-red", mqtt_port, sink_port, args, [nr.pid, mqtt.pid])


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


def bench_headwater(sink_port: int, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="bench-headwater-") as tmp:
        mqtt_port = free_port()
        resources = Path(tmp) / "bench.yaml"
        resources.write_text(headwater_resources(mqtt_port, sink_port, args.max_inflight))
        python = [sys.executable]
        if args.profile:
            python += ["-m", "cProfile", "-o", args.profile]
        command = [*python, "-m", "headwater.cli", "up", "-f", str(resources)]
        command += ["--data-dir", str(Path(tmp) / "data"), "--http-port", "0"]
        command += ["--durability", "normal", "--log-level", "warning", "--loop", args.loop]
        command += ["--http-worker" if args.http_worker == "on" else "--no-http-worker"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with child(command, env=env) as (hw, out):
            out.wait_for("ready", hw)
            return drive("headwater", mqtt_port, sink_port, args, [hw.pid])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
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
        "--loop", default="uvloop", choices=["uvloop", "asyncio"], help="headwater up --loop"
    )
    parser.add_argument(
        "--http-worker", default="on", choices=["on", "off"], help="headwater up --http-worker"
    )
    args = parser.parse_args()

    sink_port = free_port()
    sink = mp.Process(target=run_sink, args=(sink_port,), daemon=True)
    sink.start()
    results: dict[str, Result] = {}
    try:
        wait_port(sink_port)
        print(
            f"{args.messages} QoS 1 messages from {args.publishers} connections "
            f"(window {args.window}) -> system -> HTTP sink",
            flush=True,
        )
        for system in args.systems.split(","):
            bench = bench_node_red if system == "node-red" else bench_headwater
            result = bench(sink_port, args)
            results[system] = result
            print(
                f"{system:>10}: {result.rate:8.0f} msgs/s delivered "
                f"(published in {result.publish_seconds:5.1f}s, delivered in "
                f"{result.seconds:5.1f}s), acked {result.acked}/{result.sent}, "
                f"lost {result.lost}, duplicates {result.duplicates}, "
                f"peak RSS {result.rss_mb:6.1f} MB {result.note}",
                flush=True,
            )
    finally:
        sink.terminate()
        sink.join()
    if "node-red" in results and "headwater" in results:
        ratio = results["headwater"].rate / max(results["node-red"].rate, 1e-9)
        print(f"ratio headwater/node-red: {ratio:.1f}x msgs/s")


if __name__ == "__main__":
    main()
