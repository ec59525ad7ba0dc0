"""An edge Headwater and a cloud Headwater on either side of a WAN that tests cut.

How this works: :class:`Lab` puts ``headwater up`` processes in the
namespaces of :class:`tests.netns.Wan`: the edge (its embedded MQTT broker
for the devices, an Uplink to the cloud, optionally a Downlink and an
MqttSink for commands) and the cloud (a Broker whose ingress wants a bearer
token, a Trigger to the test's receiver, optionally an Edge queue). The
devices and the receiver live in the test process, in threads that entered
the namespaces: :class:`Devices` publishes numbered QoS 1 readings at a
steady rate and keeps the ones the edge acknowledged (PUBACK);
:class:`Receiver` is the HTTP endpoint behind the cloud and keeps every
reading it got, in arrival order. A run passes when every acknowledged
reading arrived, each device's readings in order (first arrivals; a
redelivered suffix after a crash is counted as duplicates, not as disorder).
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from headwater.cloudevents import CloudEvent, from_http
from tests.netns import CLOUD, NetnsThread, Wan, enter

READY_TIMEOUT = 30.0
TOKEN = "cloud-" + secrets.token_hex(8)
EDGE_TOKEN = "site-7-" + secrets.token_hex(8)


class Process:
    """``headwater up`` inside a namespace, its output kept (and shown when a test fails)."""

    def __init__(self, wan: Wan, ns: str, args: list[str], env: dict[str, str]) -> None:
        self.wan, self.ns, self.args, self.env = wan, ns, args, env
        self.output: list[str] = []
        self.urls: dict[str, str] = {}
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Process:
        process = self.wan.popen(
            self.ns,
            [sys.executable, "-m", "headwater.cli", "up", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        self.process = process
        assert process.stdout is not None
        ready = threading.Event()
        stream = process.stdout

        def drain() -> None:
            for line in stream:
                self.output.append(line)
                found = re.search(r"headwater \S+: (\S+) listening on (\S+)", line)
                if found:
                    self.urls[found.group(1)] = found.group(2)
                if line.strip() == "ready":
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(READY_TIMEOUT):
            raise AssertionError("headwater did not start:\n" + "".join(self.output[-50:]))
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def end(self) -> None:
        """Kill it if it still runs (a test's clean-up)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def port(self, name: str) -> int:
        return int(self.urls[name].rsplit(":", 1)[1])

    def tail(self, lines: int = 40) -> str:
        return "".join(self.output[-lines:])


def api(
    thread: NetnsThread,
    url: str,
    token: str | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """A call to a Headwater's HTTP API from inside its namespace; the JSON answer."""

    def call() -> Any:
        request = urllib.request.Request(url, data=body, headers=dict(headers or {}))
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
            return json.loads(text) if text else None

    return thread.call(call)


# -- the devices ------------------------------------------------------------------------


class Devices:
    """``count`` devices publishing ``sensors/<device>/reading`` at ``rate`` messages/s in all.

    Each payload is ``{"device", "seq", "ts"}``; ``acked`` holds the (device, seq)
    the edge acknowledged. The client reconnects by itself while the edge is down.
    """

    def __init__(self, wan: Wan, port: int, count: int = 10, rate: float = 500.0) -> None:
        self.wan, self.port, self.count, self.rate = wan, port, count, rate
        self.acked: set[tuple[str, int]] = set()
        self.ack_times: list[tuple[float, float]] = []
        """(published at, seconds until the PUBACK) of every acknowledged reading."""
        self.sent = 0
        self._pending: dict[int, tuple[str, int, float]] = {}
        self._early: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"devices-{secrets.token_hex(3)}",
            clean_session=True,
        )
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_publish = self._on_publish

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, *args: object) -> None:
        now = time.time()
        with self._lock:
            pending = self._pending.pop(mid, None)
            if pending is None:
                self._early[mid] = now  # before publish() returned: recorded by _publish
            else:
                self._ack(pending, now)

    def _ack(self, pending: tuple[str, int, float], now: float) -> None:
        device, seq, published = pending
        self.acked.add((device, seq))
        self.ack_times.append((published, now - published))

    def _network(self) -> None:
        enter(self.wan.edge)
        self.client.connect_async("127.0.0.1", self.port, keepalive=10)
        self.client.loop_forever(retry_first_connection=True)

    def _publish(self) -> None:
        enter(self.wan.edge)
        seqs = [0] * self.count
        started = time.monotonic()
        while not self._stop.is_set():
            if not self._running.is_set():
                self._running.wait(0.1)
                started = time.monotonic() - self.sent / self.rate
                continue
            due = started + self.sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            device = self.sent % self.count
            name = f"d{device}"
            seq = seqs[device]
            now = time.time()
            payload = json.dumps({"device": name, "seq": seq, "ts": now})
            if self.client.is_connected():
                # Not under self._lock: paho calls on_publish holding a lock of its own.
                info = self.client.publish(f"sensors/{name}/reading", payload, qos=1)
                if info.rc == paho.MQTT_ERR_SUCCESS:
                    with self._lock:
                        early = self._early.pop(info.mid, None)
                        if early is None:
                            self._pending[info.mid] = (name, seq, now)
                        else:
                            self._ack((name, seq, now), early)
                    seqs[device] += 1
            self.sent += 1

    def start(self) -> Devices:
        for target in (self._network, self._publish):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        self._running.set()
        return self

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe, and return once the edge granted it (its SUBACK). paho drops a
        subscribe made before its network thread has a socket (MQTT_ERR_NO_CONN),
        which a loaded machine makes likely right after :meth:`start`."""
        granted = threading.Event()
        self.client.on_subscribe = lambda *args: granted.set()
        wait_until(self.client.is_connected, 30, "the devices' connection")
        result, _ = self.client.subscribe(topic, qos=qos)
        assert result == paho.MQTT_ERR_SUCCESS, result
        assert granted.wait(30), f"no SUBACK for {topic}"

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        self._stop.set()
        self._running.set()
        self.client.disconnect()
        for thread in self._threads:
            thread.join(timeout=10)


# -- the receiver behind the cloud ------------------------------------------------------


class Arrival(NamedTuple):
    device: str
    seq: int
    sent: float
    """When the device published it (its ``ts``, wall clock)."""
    arrived: float

    @property
    def latency(self) -> float:
        return self.arrived - self.sent


class _QuietServer(ThreadingHTTPServer):
    """Connections the other side resets (a killed Headwater, a cut link) are no news."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


CAPABILITIES = {
    "Allow": "POST, OPTIONS",
    "Accept-Post": "application/cloudevents-batch+json, */*",
    "Accept-Encoding": "gzip",
}
"""What the receiver says it takes (as Headwater's Broker ingress says it)."""


@dataclass
class Receiver:
    """The CloudEvents endpoint behind the cloud, in its namespace."""

    batches: bool = True
    """False: behave as a Knative Broker (no OPTIONS, no batches, binary events)."""
    arrivals: list[Arrival] = field(default_factory=list)
    """Every reading that came, in arrival order (duplicates included)."""
    commands: list[CloudEvent] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self, thread: NetnsThread, host: str = "127.0.0.1") -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_OPTIONS(self) -> None:
                if receiver.batches:
                    self._answer(200, CAPABILITIES)
                else:
                    self._answer(405)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if "batch" in self.headers.get("Content-Type", "") and not receiver.batches:
                    self._answer(400)
                    return
                decoded = from_http(list(self.headers.items()), body)
                events = decoded if isinstance(decoded, list) else [decoded]
                now = time.time()
                with receiver.lock:
                    for event in events:
                        receiver.record(event, now)
                self._answer(202)

        def serve() -> tuple[ThreadingHTTPServer, int]:
            server = _QuietServer((host, 0), Handler)
            server.daemon_threads = True
            return server, server.server_address[1]

        self.server, self.port = thread.call(serve)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def record(self, event: CloudEvent, now: float) -> None:
        data = event.data
        reading = json.loads(data) if isinstance(data, bytes | str) else data
        if not isinstance(reading, dict) or "device" not in reading:
            self.commands.append(event)
            return
        sent = float(reading["ts"])
        self.arrivals.append(Arrival(reading["device"], int(reading["seq"]), sent, now))

    def got(self) -> set[tuple[str, int]]:
        with self.lock:
            return {(a.device, a.seq) for a in self.arrivals}

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def verdict(devices: Devices, receiver: Receiver) -> dict[str, Any]:
    """Lost acknowledged readings, order per device, duplicates: the figures of a run."""
    with receiver.lock:
        arrivals = list(receiver.arrivals)
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    last: dict[str, int] = {}
    disorder = []
    for device, seq, _, _ in arrivals:
        seen[(device, seq)] += 1
        if seen[(device, seq)] > 1:
            continue
        if seq <= last.get(device, -1):
            disorder.append((device, last[device], seq))
        last[device] = seq
    lost = sorted(devices.acked - set(seen))
    return {
        "acked": len(devices.acked),
        "received": len(seen),
        "lost": len(lost),
        "lost_sample": lost[:10],
        "out_of_order": disorder[:10],
        "duplicates": sum(n - 1 for n in seen.values()),
    }


def wait_until(condition: Callable[[], bool], within: float, what: str, *procs: Process) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.ns}\n{p.tail()}" for p in procs)
            raise AssertionError(f"timed out after {within:g}s waiting for {what}\n{logs}")
        time.sleep(0.1)


# -- the two Headwaters -------------------------------------------------------------------

CLOUD_FILES = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  annotations: {"headwater.dev/ingress-token": "${CLOUD_TOKEN}"}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: readings
  annotations: {"headwater.dev/delivery-order": ordered, "headwater.dev/max-inflight": "1000"}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.telemetry}}
  subscriber: {uri: "http://127.0.0.1:${RECEIVER_PORT}/"}
  delivery: {retry: 100, backoffDelay: PT0.1S, backoffPolicy: linear}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: Edge
metadata: {name: site-7}
spec: {tokenEnv: EDGE_TOKEN}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-site-7}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.command}}
  subscriber: {ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: Edge, name: site-7}}
"""

EDGE_UPLINK = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: devices}
spec:
  listeners: [{host: 127.0.0.1, port: "${MQTT_PORT}"}]
  dataDir: "${DATA}/mqtt"
  topics: ["sensors/#"]
  mapping:
    topicPattern: "sensors/{device}/{metric}"
    type: dev.headwater.telemetry
    source: "mqtt://site-7/{device}"
    subject: "{device}"
    extensions: {partitionkey: device}
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: Uplink
metadata: {name: to-cloud}
spec:
  broker: default
  start: earliest
  filter: "type = 'dev.headwater.telemetry'"
  sink: {uri: "${UPLINK_URI}"}
  tokenEnv: CLOUD_TOKEN
  delivery: {backoffMax: "${UPLINK_BACKOFF_MAX:-PT10S}"}
"""
"""The devices' MQTT broker and the Uplink (at its defaults, but for ``backoffMax``:
the tests make a link that is back be used within 2 s rather than 10)."""

EDGE_FILES = (
    EDGE_UPLINK
    + """\
---
apiVersion: sources.headwater.dev/v1alpha1
kind: Downlink
metadata: {name: from-cloud}
spec:
  url: "http://${CLOUD_IP}:${CLOUD_PORT}/edges/default/site-7"
  tokenEnv: EDGE_TOKEN
  wait: PT10S
  backoffDelay: PT0.2S
  backoffMax: PT2S
  sink: {ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: MqttSink
metadata: {name: commands}
spec: {topic: "devices/{subject}/commands", qos: 1}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: commands}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.command}}
  subscriber: {ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: MqttSink, name: commands}}
"""
)


class Lab:
    """Both Headwaters, the devices' and the receiver's threads, on one :class:`Wan`."""

    def __init__(self, wan: Wan, root: Path) -> None:
        self.wan = wan
        self.root = root
        self.edge_thread = wan.thread(wan.edge)
        self.cloud_thread = wan.thread(wan.cloud)
        self.receiver = Receiver()
        self.cloud: Process | None = None
        self.edge: Process | None = None
        self.devices: Devices | None = None
        self.mqtt_port = 0
        self.edge_http = 0
        self.cloud_port = 0
        self.uplink_backoff_max = "PT2S"

    def start_cloud(self, receiver: Receiver | None = None) -> Process:
        if receiver is not None:
            self.receiver = receiver
        if not self.receiver.port:
            self.receiver.start(self.cloud_thread)
        files = self.root / "cloud.yaml"
        files.write_text(CLOUD_FILES)
        self.cloud = Process(
            self.wan,
            self.wan.cloud,
            [
                "-f",
                str(files),
                "--data-dir",
                str(self.root / "cloud"),
                "--host",
                "0.0.0.0",
                "--http-port",
                str(self.cloud_port),
                "--token",
                TOKEN,
                "--no-http-worker",
            ],
            {
                "CLOUD_TOKEN": TOKEN,
                "EDGE_TOKEN": EDGE_TOKEN,
                "RECEIVER_PORT": str(self.receiver.port),
            },
        ).start()
        self.cloud_port = self.cloud.port("http")
        return self.cloud

    def start_edge(
        self, uplink_uri: str | None = None, extra: str = "", files_text: str = EDGE_FILES
    ) -> Process:
        files = self.root / "edge.yaml"
        files.write_text(files_text + extra)
        uri = uplink_uri or f"http://{CLOUD}:{self.cloud_port}/default/default"
        self.edge = Process(
            self.wan,
            self.wan.edge,
            [
                "-f",
                str(files),
                "--data-dir",
                str(self.root / "edge"),
                "--http-port",
                str(self.edge_http),
                "--no-http-worker",
            ],
            {
                "CLOUD_TOKEN": TOKEN,
                "EDGE_TOKEN": EDGE_TOKEN,
                "MQTT_PORT": str(self.mqtt_port),
                "DATA": str(self.root / "edge"),
                "UPLINK_URI": uri,
                "CLOUD_IP": CLOUD,
                "CLOUD_PORT": str(self.cloud_port),
                "UPLINK_BACKOFF_MAX": self.uplink_backoff_max,
            },
        ).start()
        self.mqtt_port = self.edge.port("mqtt/default/devices")
        self.edge_http = self.edge.port("http")
        return self.edge

    def uplink(self) -> dict[str, Any]:
        """The edge's Uplink status (from its admin API)."""
        body = api(
            self.edge_thread,
            f"http://127.0.0.1:{self.edge_http}/api/v1/resources/Uplink/default/to-cloud",
        )
        status: dict[str, Any] = body["status"]
        return status

    def status(self, side: str, kind: str, name: str) -> dict[str, Any]:
        if side == "edge":
            thread, base, token = self.edge_thread, f"http://127.0.0.1:{self.edge_http}", None
        else:
            thread, base, token = self.cloud_thread, f"http://127.0.0.1:{self.cloud_port}", TOKEN
        body = api(thread, f"{base}/api/v1/resources/{kind}/default/{name}", token)
        status: dict[str, Any] = body["status"]
        return status

    def start_devices(self, rate: float = 500.0, count: int = 10) -> Devices:
        self.devices = Devices(self.wan, self.mqtt_port, count=count, rate=rate).start()
        return self.devices

    def send_to_cloud(self, events: list[CloudEvent]) -> None:
        """Events into the cloud's Broker, through its ingress (from inside the cloud)."""
        from headwater.cloudevents import to_http_batch

        headers, body = to_http_batch(events)
        headers["Authorization"] = f"Bearer {TOKEN}"
        api(
            self.cloud_thread,
            f"http://127.0.0.1:{self.cloud_port}/default/default",
            None,
            body,
            headers,
        )

    def close(self) -> None:
        if self.devices is not None:
            self.devices.close()
        for process in (self.edge, self.cloud):
            if process is not None:
                process.end()
        self.receiver.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{p.tail(80)}"
            for name, p in (("edge", self.edge), ("cloud", self.cloud))
            if p
        )


def listen(thread: NetnsThread, host: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket inside the thread's namespace."""

    def make() -> socket.socket:
        sock = socket.socket()
        sock.bind((host, 0))
        sock.listen()
        return sock

    return thread.call(make)
