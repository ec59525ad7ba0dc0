"""Store-and-forward over a cut link: a Mosquitto bridge vs Headwater's Uplink, side by side.

How this works: the same network namespaces as the cut-link tests
(:mod:`tests.netns`: an edge behind NAT, a WAN, a cloud) and the same
workload for each system, one after the other in one run: 10 MQTT devices at
the edge publish numbered QoS 1 readings at ``--rate`` in all; after
``--before`` seconds the WAN is cut (its veth goes down) for ``--outage``
seconds while the devices go on; then the link is back and the devices go on
for ``--after`` seconds. Then the run waits until the cloud side has
everything (or nothing new came for ``IDLE`` seconds).

- **Mosquitto bridge**: Debian's ``mosquitto``, two instances, the edge one
  bridging ``sensors/#`` out at QoS 1 with ``cleansession false`` and
  persistence on, once with Mosquitto's default queue bound
  (``max_queued_messages 1000``) and once unbounded (``0``); a QoS 1
  subscriber with a persistent session on the cloud instance receives.
- **Headwater**: ``headwater up`` at the edge (the embedded MQTT broker, an
  Uplink to the cloud with everything at its defaults: batches, gzip, ordered
  lanes) and in the cloud (a Broker ingress, a Trigger to an HTTP receiver).

Figures per system: readings acknowledged to the devices (PUBACK), delivered
(unique, at the cloud-side receiver), lost (acknowledged, never delivered),
duplicates; the drain rate after the outage (the backlog at the moment the
link came back, divided by the time until the last of it arrived) against the
devices' live rate; bytes on the wire per delivered reading (both directions
of the WAN veth, everything included: TCP/IP headers, MQTT or HTTP framing,
keepalives, acknowledgements); the devices' PUBACK latency before the outage
and during the catch-up (is the device side starved?), and the latency of
live readings during the catch-up. The targets of issue 16 are checked at
the end: 0 lost where the bridge loses some, a drain rate of at least 10x
the live rate, at most 0.5x the bridge's bytes per event.

``--downlink`` adds the downlink over a WAN of 300 ms each way: the latency
of commands from the cloud's Broker to the device, and what an idle edge's
pulls cost on the wire.

``--backlog N`` adds a compressed long outage for Headwater: N readings are
appended to the edge's log while it is cut off (directly, not over MQTT, to
keep the run short), the link comes back while the devices publish live, and
the time to drain and the live latency during the drain are reported.

Needs root (network namespaces). Run:
``sudo .venv/bin/python benchmarks/uplink.py`` (about 5 minutes with the
defaults; ``--backlog 1000000`` adds a few more).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from tests.chaos.tiers.lab import EDGE_UPLINK, Arrival, Devices, Lab, Receiver, api  # noqa: E402
from tests.netns import CLOUD, NetnsThread, Wan, enter  # noqa: E402

IDLE = 30.0
"""Seconds without a new arrival after which what is missing counts as lost."""

DEADLINE = 600.0
"""Seconds a system may take to deliver after the devices stopped."""


def free_port(thread: NetnsThread, host: str) -> int:
    def pick() -> int:
        with socket.socket() as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])

    return thread.call(pick)


def wait_port(thread: NetnsThread, host: str, port: int, within: float = 15.0) -> None:
    def probe() -> bool:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
        except OSError:
            return False
        return True

    deadline = time.monotonic() + within
    while not thread.call(probe):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port}")
        time.sleep(0.1)


# -- the cloud side of the bridge ---------------------------------------------------------


@dataclass
class MqttReceiver:
    """A QoS 1 subscriber with a persistent session on the cloud's Mosquitto."""

    wan: Wan
    port: int
    arrivals: list[Arrival] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> MqttReceiver:
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id="cloud-receiver",
            clean_session=False,
        )
        client.on_connect = lambda c, *args: c.subscribe("sensors/#", qos=1)
        client.on_message = self._message
        self.client = client

        def run() -> None:
            enter(self.wan.cloud)
            client.connect(CLOUD, self.port, keepalive=10)
            client.loop_forever(retry_first_connection=True)

        threading.Thread(target=run, daemon=True).start()
        return self

    def _message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        reading = json.loads(message.payload)
        now = time.time()
        with self.lock:
            self.arrivals.append(Arrival(reading["device"], reading["seq"], reading["ts"], now))

    def got(self) -> set[tuple[str, int]]:
        with self.lock:
            return {(a.device, a.seq) for a in self.arrivals}

    def close(self) -> None:
        self.client.disconnect()


# -- one run --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    backlog: int = 0
    reconnect_s: float = 0.0
    """From the link coming back to the first arrival after it (retry backoff, reconnection)."""
    drain_s: float = 0.0
    """From that first arrival to the last reading of the backlog."""
    drain_rate: float = 0.0
    wire_bytes: int = 0
    puback_before_ms: tuple[float, float] | None = None
    puback_drain_ms: tuple[float, float] | None = None
    live_drain_s: tuple[float, float] | None = None

    @property
    def bytes_per_event(self) -> float:
        return self.wire_bytes / self.delivered if self.delivered else float("inf")


def pcts(values: list[float], scale: float = 1.0) -> tuple[float, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return (
        round(scale * ordered[len(ordered) // 2], 1 if scale > 1 else 3),
        round(
            scale * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1 if scale > 1 else 3
        ),
    )


def scenario(
    name: str,
    wan: Wan,
    devices: Devices,
    arrivals: Callable[[], list[Arrival]],
    args: argparse.Namespace,
) -> Result:
    """Live, cut, back, live; then wait for the cloud side to have everything."""
    start_bytes = wan.wire_bytes()
    started = time.time()
    devices.start()
    time.sleep(args.before)
    cut_at = time.time()
    wan.cut()
    time.sleep(args.outage)
    acked_before = set(devices.acked)
    wan.restore()
    restored = time.time()
    time.sleep(args.after)
    devices.pause()
    # Everything acknowledged, then everything delivered (or nothing new for IDLE s).
    deadline = time.monotonic() + 30
    while devices._pending and time.monotonic() < deadline:
        time.sleep(0.1)
    last_count, last_change = -1, time.monotonic()
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        got = {(a.device, a.seq) for a in arrivals()}
        if devices.acked <= got:
            break
        if len(got) != last_count:
            last_count, last_change = len(got), time.monotonic()
        elif time.monotonic() - last_change > IDLE:
            break
        time.sleep(0.2)
    wire = wan.wire_bytes() - start_bytes
    seen: dict[tuple[str, int], Arrival] = {}
    duplicates = 0
    for arrival in arrivals():
        key = (arrival.device, arrival.seq)
        if key in seen:
            duplicates += 1
        else:
            seen[key] = arrival
    backlog_keys = [k for k in acked_before if k in seen and seen[k].arrived >= restored]
    drained_at = max((seen[k].arrived for k in backlog_keys), default=restored)
    resumed = min((a.arrived for a in seen.values() if a.arrived >= restored), default=restored)
    drain = drained_at - resumed
    during = [a for a in seen.values() if restored <= a.sent and a.arrived <= drained_at]
    return Result(
        name=name,
        acked=len(devices.acked),
        delivered=len(seen),
        lost=len(devices.acked - set(seen)),
        duplicates=duplicates,
        backlog=len(backlog_keys),
        reconnect_s=round(resumed - restored, 2),
        drain_s=round(drain, 2),
        drain_rate=round(len(backlog_keys) / drain) if drain > 0 else 0.0,
        wire_bytes=wire,
        puback_before_ms=pcts(
            [lat for sent, lat in devices.ack_times if started + 2 <= sent < cut_at], 1000
        ),
        puback_drain_ms=pcts(
            [lat for sent, lat in devices.ack_times if restored <= sent <= drained_at], 1000
        ),
        live_drain_s=pcts([a.latency for a in during]),
    )


def mosquitto_run(args: argparse.Namespace, queue_limit: int, root: Path) -> Result:
    name = f"mosquitto bridge (max_queued_messages {queue_limit or 'unbounded'})"
    with Wan() as wan:
        edge_thread, cloud_thread = wan.thread(wan.edge), wan.thread(wan.cloud)
        cloud_port = free_port(cloud_thread, CLOUD)
        edge_port = free_port(edge_thread, "127.0.0.1")
        for side in ("cloud", "edge"):
            (root / side).mkdir(parents=True, exist_ok=True)
        (root / "cloud.conf").write_text(
            f"listener {cloud_port} {CLOUD}\nallow_anonymous true\n"
            "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"persistence true\npersistence_location {root / 'cloud'}/\n"
            # The subscriber's queue must not be what loses messages here.
            "max_queued_messages 0\nmax_inflight_messages 0\n"
        )
        (root / "edge.conf").write_text(
            f"listener {edge_port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {root / 'edge'}/\n"
            f"max_queued_messages {queue_limit}\n"
            "log_dest stdout\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"connection cloud\naddress {CLOUD}:{cloud_port}\ntopic sensors/# out 1\n"
            "cleansession false\nbridge_protocol_version mqttv311\n"
            "restart_timeout 1 5\nkeepalive_interval 10\nnotifications false\n"
        )
        for side, thread, host, port in (
            ("cloud", cloud_thread, CLOUD, cloud_port),
            ("edge", edge_thread, "127.0.0.1", edge_port),
        ):
            ns = wan.cloud if side == "cloud" else wan.edge
            log = (root / f"{side}.log").open("w")
            wan.popen(ns, ["mosquitto", "-c", str(root / f"{side}.conf")], stdout=log, stderr=log)
            log.close()
            wait_port(thread, host, port)
        receiver = MqttReceiver(wan, cloud_port).start()
        devices = Devices(wan, edge_port, count=args.devices, rate=args.rate)
        try:
            return scenario(name, wan, devices, lambda: list(receiver.arrivals), args)
        finally:
            devices.close()
            receiver.close()
            if os.environ.get("UPLINK_BENCH_LOGS"):
                for side in ("edge", "cloud"):
                    print(f"--- mosquitto {side}:\n" + (root / f"{side}.log").read_text()[-3000:])


def headwater_run(args: argparse.Namespace, root: Path) -> Result:
    root.mkdir(parents=True)
    with Wan() as wan:
        lab = Lab(wan, root)
        try:
            receiver = _edge_and_receiver(lab)
            devices = Devices(wan, lab.mqtt_port, count=args.devices, rate=args.rate)
            lab.devices = devices
            return scenario("headwater uplink", wan, devices, lambda: list(receiver.arrivals), args)
        finally:
            lab.close()


def _edge_and_receiver(lab: Lab) -> Receiver:
    """The edge's ``headwater up`` with its Uplink (at its defaults) to a receiver in the cloud."""
    lab.uplink_backoff_max = "PT10S"  # the default
    receiver = lab.receiver.start(lab.cloud_thread, host=CLOUD)
    lab.start_edge(f"http://{CLOUD}:{receiver.port}/default/default", files_text=EDGE_UPLINK)
    return receiver


# -- the compressed long outage --------------------------------------------------------------


def long_outage(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """N readings in the edge's log while the link is down; then back, with live devices."""
    root.mkdir(parents=True)
    with Wan() as wan:
        lab = Lab(wan, root)
        try:
            wan.cut()
            _edge_and_receiver(lab)
            fill_started = time.monotonic()
            _fill(lab, args.backlog)
            fill_s = time.monotonic() - fill_started
            devices = Devices(wan, lab.mqtt_port, count=args.devices, rate=args.rate).start()
            lab.devices = devices
            time.sleep(2)
            wan.restore()
            restored = time.time()
            while time.time() - restored < DEADLINE:
                status = lab.uplink()
                print(
                    f"  {time.time() - restored:6.1f}s backlog {status['backlogEvents']:>8} "
                    f"sending {status['sendRate']:>8}/s",
                    flush=True,
                )
                if status["backlogEvents"] < args.rate:
                    break
                time.sleep(1)
            drained = time.time()
            time.sleep(5)
            devices.pause()
            live = [a for a in lab.receiver.arrivals if a.sent >= restored and a.arrived <= drained]
            after = [a for a in lab.receiver.arrivals if a.sent >= drained]
            return {
                "backlog": args.backlog,
                "fill_s": round(fill_s, 1),
                "drain_s": round(drained - restored, 1),
                "drain_rate": round(args.backlog / (drained - restored)),
                "live_latency_during_drain_s": pcts([a.latency for a in live]),
                "live_latency_after_s": pcts([a.latency for a in after]),
                "puback_during_drain_ms": pcts(
                    [lat for sent, lat in devices.ack_times if restored <= sent <= drained], 1000
                ),
            }
        finally:
            lab.close()


def _fill(lab: Lab, count: int) -> None:
    """Append ``count`` readings to the edge Broker through its ingress, in batches."""
    from headwater.cloudevents import CloudEvent, to_http_batch

    batch = 5000
    now = time.time()
    for start in range(0, count, batch):
        events = [
            CloudEvent(
                {
                    "specversion": "1.0",
                    "id": f"old-{i}",
                    "source": f"mqtt://site-7/old{i % 10}",
                    "type": "dev.headwater.telemetry",
                    "subject": f"old{i % 10}",
                    "datacontenttype": "application/json",
                },
                {"device": f"old{i % 10}", "seq": i // 10, "ts": now, "temperature": 20 + i % 7},
            )
            for i in range(start, min(count, start + batch))
        ]
        headers, body = to_http_batch(events)
        api(
            lab.edge_thread,
            f"http://127.0.0.1:{lab.edge_http}/default/default",
            None,
            body,
            headers,
        )


# -- the downlink -------------------------------------------------------------------------------


def downlink(root: Path, delay: float, commands: int = 20) -> dict[str, Any]:
    """Commands down a WAN with ``delay`` each way: latency to the device, bytes of idle pulls."""
    from datetime import UTC, datetime, timedelta

    from headwater.cloudevents import CloudEvent

    root.mkdir(parents=True)
    with Wan() as wan:
        lab = Lab(wan, root)
        try:
            wan.shape(delay=delay)
            lab.start_cloud()
            lab.start_edge()
            device = Devices(wan, lab.mqtt_port, count=1, rate=1.0)
            arrived: dict[str, float] = {}
            device.client.on_message = lambda c, u, m: arrived.setdefault(
                json.loads(m.payload)["id"], time.time()
            )
            device.client.on_connect = lambda c, *a: c.subscribe("devices/+/commands", qos=1)
            device.start()
            device.pause()  # no telemetry: the link carries the downlink alone
            lab.devices = device
            while not lab.status("cloud", "Edge", "site-7")["connected"]:
                time.sleep(0.2)
            time.sleep(5)
            pulls = lab.status("cloud", "Edge", "site-7")["pulls"]
            idle_from, idle_bytes = time.time(), wan.wire_bytes()
            time.sleep(45)
            idle_pulls = lab.status("cloud", "Edge", "site-7")["pulls"] - pulls
            idle = wan.wire_bytes() - idle_bytes
            idle_s = time.time() - idle_from
            sent: dict[str, float] = {}
            for i in range(commands):
                name = f"cmd-{i}"
                expires = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
                event = CloudEvent(
                    {
                        "specversion": "1.0",
                        "id": name,
                        "source": "/bench",
                        "subject": "d0",
                        "type": "dev.headwater.command",
                        "expiresat": expires,
                    },
                    {"id": name},
                )
                sent[name] = time.time()
                lab.send_to_cloud([event])
                time.sleep(0.5 + (i % 5) * 0.37)  # at different moments of a pull
            deadline = time.monotonic() + 30
            while len(arrived) < commands and time.monotonic() < deadline:
                time.sleep(0.1)
            latencies = [arrived[n] - sent[n] for n in sent if n in arrived]
            return {
                "one_way_delay_s": delay,
                "commands": commands,
                "arrived": len(latencies),
                "latency_s_p50": (pcts(latencies) or (0, 0))[0],
                "latency_s_max": round(max(latencies, default=0.0), 3),
                "idle_bytes_per_minute": round(idle / idle_s * 60),
                "idle_pulls_per_minute": round(idle_pulls / idle_s * 60, 1),
                "bytes_per_idle_pull": round(idle / max(idle_pulls, 1)),
            }
        finally:
            lab.close()


# -- main --------------------------------------------------------------------------------------


def _pair(figures: tuple[float, float] | None) -> str:
    return "-" if figures is None else f"{figures[0]}/{figures[1]}"


COLUMNS = (
    ("system", lambda r, rate: r.name),
    ("acked", lambda r, rate: r.acked),
    ("delivered", lambda r, rate: r.delivered),
    ("lost", lambda r, rate: r.lost),
    ("dups", lambda r, rate: r.duplicates),
    ("backlog", lambda r, rate: r.backlog),
    ("reconnect s", lambda r, rate: r.reconnect_s),
    ("drain s", lambda r, rate: r.drain_s),
    ("drain/s", lambda r, rate: r.drain_rate),
    ("x live", lambda r, rate: round(r.drain_rate / rate, 1)),
    ("B/event", lambda r, rate: round(r.bytes_per_event, 1)),
    ("PUBACK ms live", lambda r, rate: _pair(r.puback_before_ms)),
    ("PUBACK ms drain", lambda r, rate: _pair(r.puback_drain_ms)),
    ("live latency s drain", lambda r, rate: _pair(r.live_drain_s)),
)
"""The table's columns (p50/p99 where two figures share one)."""


def show(results: list[Result], rate: float) -> None:
    print(f"\nlive rate: {rate:g} readings/s (p50/p99 where a column has two figures)\n")
    rows = [[title for title, _ in COLUMNS]]
    rows += [[str(cell(r, rate)) for _, cell in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def targets(results: list[Result], rate: float) -> None:
    """The targets of issue 16, met or not, with the figures."""
    bridges = [r for r in results if r.name.startswith("mosquitto")]
    hw = next(r for r in results if r.name.startswith("headwater"))
    print("\ntargets (issue 16):")
    lost = ", ".join(f"{b.lost} ({b.name})" for b in bridges)
    met = hw.lost == 0 and any(b.lost for b in bridges)
    print(f"  lost: headwater {hw.lost}; {lost} -> {'met' if met else 'see the figures'}")
    ratio = hw.drain_rate / rate
    verdict = "met" if ratio >= 10 else "NOT met"
    print(f"  drain rate: {hw.drain_rate:.0f}/s = {ratio:.1f}x the live rate (>= 10x) -> {verdict}")
    for bridge in bridges:
        share = hw.bytes_per_event / bridge.bytes_per_event
        verdict = "met" if share <= 0.5 else "NOT met"
        print(
            f"  bytes/event: {hw.bytes_per_event:.1f} vs {bridge.bytes_per_event:.1f} "
            f"({bridge.name}) = {share:.2f}x (<= 0.5x) -> {verdict}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="readings/s, all devices")
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--before", type=float, default=20.0, help="seconds before the cut")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the link is cut")
    parser.add_argument("--after", type=float, default=20.0, help="seconds after it is back")
    parser.add_argument("--backlog", type=int, default=0, help="also the compressed long outage")
    parser.add_argument("--only", choices=["mosquitto", "headwater"], default=None)
    parser.add_argument(
        "--downlink", action="store_true", help="also: commands down a WAN of 300 ms each way"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/uplink.py needs root (network namespaces)")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as tmp:
        root = Path(tmp)
        if args.only != "headwater":
            for limit in (1000, 0):
                results.append(mosquitto_run(args, limit, root / f"mosquitto-{limit}"))
                print(results[-1], flush=True)
        if args.only != "mosquitto":
            results.append(headwater_run(args, root / "headwater"))
            print(results[-1], flush=True)
        show(results, args.rate)
        if args.only is None:
            targets(results, args.rate)
        if args.backlog:
            print("\ncompressed long outage (headwater):")
            print(json.dumps(long_outage(args, root / "long"), indent=2))
        if args.downlink:
            print("\ndownlink (headwater):")
            print(json.dumps(downlink(root / "downlink", delay=0.3), indent=2))


if __name__ == "__main__":
    main()
