"""The durable ingest path: a device's publish as a stored CloudEvent, against the broker alone.

How this works: the load generator of ``benchmarks/mqtt_broker.py`` (raw
sockets, pre-encoded MQTT 3.1.1 packets, N publishers each paired with a
subscriber of its topic, closed loop: a publisher stays at most a window ahead
of its subscriber and of its acks) runs against each system in turn, all in
one run, alternated so that load on the machine hits every system alike:

* ``mosquitto``: Debian's mosquitto, persistence off (the peer).
* ``library``: the bare :class:`~headwater.mqtt.broker.MqttBroker`.
* ``up-plain``: ``headwater up`` as users run it, with an MqttBrokerSource
  whose topics match nothing: Headwater as a plain broker.
* ``up-memory``: every publish becomes a CloudEvent on an InMemoryChannel
  (mapped, not stored): the cost of mapping without the log.
* ``up-normal`` / ``up-fsync``: every publish becomes a CloudEvent durably
  appended to a Broker (``--durability normal`` / ``fsync``, the default)
  before its PUBACK and before it is routed to the subscriber.

msgs/s is what the subscribers received per second; CPU is the broker
process's user+system time per delivered message (from /proc), so the cost of
each stage is the difference between two rows: ``up-plain - library`` is what
``headwater up`` adds around the broker, ``up-memory - up-plain`` the mapping
to CloudEvents, ``up-normal - up-memory`` the append, ``up-fsync - up-normal``
the disk sync. Ratios are printed against ``up-plain`` (the targets: durable
QoS 1 at 0.6x with ``normal``, 0.5x with ``fsync``) and against Mosquitto.

Run: ``.venv/bin/python benchmarks/ingest.py`` (about 5 minutes);
``--rounds 5`` for the five runs a stability claim needs; ``--baseline DIR``
adds the ``up-*`` systems of another checkout (``git worktree add DIR REV``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mqtt_broker as lg  # the load generator (same directory)

SYSTEMS = ("mosquitto", "library", "up-plain", "up-memory", "up-normal", "up-fsync")
SCENARIOS = ((1, 0), (1, 1), (20, 0), (20, 1))

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: messaging.knative.dev/v1
kind: InMemoryChannel
metadata: {{name: scratch}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{port: {port}}}]
  topics: [{topics}]
  deviceEvents: false
{extra}  mapping:
    topicPattern: "bench/{{device}}"
    type: dev.headwater.bench
  sink:
    ref: {sink}
"""
SINKS = {
    "up-plain": (
        '"nothing/#"',
        "{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}",
    ),
    "up-memory": (
        '"#"',
        "{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: scratch}",
    ),
    "up-normal": ('"#"', "{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}"),
    "up-fsync": ('"#"', "{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}"),
}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children so far (the HTTP worker
    is a child of ``headwater up``; it idles here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def system(kind: str, baseline: str | None) -> Iterator[tuple[int, int]]:
    name, _, base = kind.partition("@")
    if name in ("mosquitto", "library"):
        inner = "headwater" if name == "library" else name
        if base:
            lg.BASELINE_SRC = str(Path(baseline or ".").resolve() / "src")
            inner = "headwater@base"
        with lg.broker_process(inner) as pid_port:
            yield pid_port
        return
    port = lg.free_port()
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    topics, sink = SINKS[name]
    # As the Mosquitto of the run: no subscriber's queue drops (an older checkout
    # without the setting keeps its default).
    extra = "" if base else "  maxQueuedMessages: 10000000\n"
    (tmp / "mesh.yaml").write_text(MESH.format(port=port, topics=topics, sink=sink, extra=extra))
    durability = "normal" if name in ("up-normal", "up-memory", "up-plain") else "fsync"
    env = dict(os.environ)
    if base:
        assert baseline is not None
        env["PYTHONPATH"] = str(Path(baseline).resolve() / "src")
    cmd = [sys.executable, "-m", "headwater.cli", "up", "-f", str(tmp / "mesh.yaml")]
    cmd += ["--http-port", "0", "--data-dir", str(tmp / "data"), "--durability", durability]
    cmd += ["--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        lg.wait_port(port, 30)
        yield proc.pid, port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


@dataclass
class Row:
    system: str
    scenario: str
    rate: float
    cpu_us: float
    lost: int
    p50_ms: float
    p99_ms: float
    rss_mb: float


def measure(kind: str, clients: int, qos: int, baseline: str | None) -> Row:
    with system(kind, baseline) as (pid, port):
        cpu0 = cpu_seconds(pid)
        result = lg.run_scenario(kind, pid, port, clients, qos)
        cpu = cpu_seconds(pid) - cpu0
    per = cpu / max(result.delivered, 1) * 1e6
    return Row(
        kind,
        result.scenario,
        result.rate,
        per,
        result.lost,
        result.p50_ms,
        result.p99_ms,
        result.rss_mb,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--baseline", help="another checkout; adds its up-* systems as @base")
    parser.add_argument("--duration", type=float, default=lg.DURATION)
    args = parser.parse_args()
    lg.DURATION = args.duration
    systems = args.systems.split(",")
    if args.baseline:
        systems += [f"{s}@base" for s in systems if s != "mosquitto"]
    rows: dict[tuple[str, str], list[Row]] = {}
    for round_ in range(args.rounds):
        for clients, qos in SCENARIOS:
            for kind in systems:
                row = measure(kind, clients, qos, args.baseline)
                rows.setdefault((kind, row.scenario), []).append(row)
                print(
                    f"round {round_ + 1} {kind:16s} {row.scenario:14s} {row.rate:9,.0f} msgs/s "
                    f"{row.cpu_us:6.1f} us/msg  lost {row.lost:6,d}  p50 {row.p50_ms:7.2f} ms  "
                    f"p99 {row.p99_ms:7.2f} ms  peak RSS {row.rss_mb:6.1f} MB",
                    flush=True,
                )
    report(rows, systems)


def report(rows: dict[tuple[str, str], list[Row]], systems: list[str]) -> None:
    scenarios = sorted({s for _, s in rows}, key=lambda s: (int(s.split("->")[0]), s))
    print("\nmedian of the rounds (msgs/s, CPU us per message):")
    for scenario in scenarios:
        print(f"  {scenario}")
        med: dict[str, tuple[float, float]] = {}
        for kind in systems:
            got = rows.get((kind, scenario))
            if not got:
                continue
            med[kind] = (
                statistics.median(r.rate for r in got),
                statistics.median(r.cpu_us for r in got),
            )
        plain = med.get("up-plain", (0.0, 0.0))[0]
        mosq = med.get("mosquitto", (0.0, 0.0))[0]
        for kind, (rate, cpu) in med.items():
            extra = []
            if plain and kind.startswith("up-") and kind != "up-plain":
                extra.append(f"{rate / plain:4.2f}x up-plain")
            if mosq and kind != "mosquitto":
                extra.append(f"{rate / mosq:4.2f}x mosquitto")
            rates = " / ".join(f"{r.rate:,.0f}" for r in rows[(kind, scenario)])
            print(f"    {kind:16s} {rate:9,.0f} msgs/s {cpu:6.1f} us/msg  {'  '.join(extra)}")
            if len(rows[(kind, scenario)]) > 1:
                print(f"    {'':16s} runs: {rates}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    started = time.monotonic()
    main()
    print(f"\n({time.monotonic() - started:.0f} s)")
