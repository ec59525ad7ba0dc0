"""Telemetry into a real influxd: the batching InfluxDBSink against one write per event.

How this works: Debian's ``influxd`` (1.x) is started on a free loopback port
with a temporary config and data dir. The same telemetry events (a JSON
payload of three readings per device, ``time`` set, subject = device) are
delivered (a) through :class:`~headwater.sinks.influxdb.InfluxDBSink` by
``--concurrency`` concurrent deliveries (what a Trigger with that
``headwater.dev/max-inflight`` does), each acknowledged only once its point is
written, and (b) by a naive client that POSTs one line per event over a
keep-alive session, awaiting each write (what a hand-written forwarder does).
Both write to their own database; each count is checked with ``SELECT
count()`` afterwards, so a point/s figure is for points InfluxDB holds. A
third figure (not part of the ratio) is the whole delivery path: events
appended to a Broker (memory log), a Trigger with the default in-flight limit
delivering them to an InfluxDBSink resource.

    .venv/bin/python benchmarks/influx_sink.py [--events 200000] [--naive-events 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from headwater.sinks.influx_target import InfluxTarget
from headwater.sinks.influxdb import InfluxDBSink
from headwater.sinks.lineprotocol import PointMapping
from tests.servers import InfluxServer

DEVICES = 100


def telemetry(count: int, start_ns: int) -> list[CloudEvent]:
    events = []
    for i in range(count):
        device = f"sensor-{i % DEVICES}"
        ns = start_ns + i * 1000
        seconds, nanos = divmod(ns, 1_000_000_000)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"
        events.append(
            CloudEvent(
                {
                    "specversion": "1.0",
                    "id": str(i),
                    "source": "mqtt://gateway/sensors",
                    "type": "dev.headwater.telemetry",
                    "subject": device,
                    "time": stamp,
                    "datacontenttype": "application/json",
                },
                b'{"temperature": %.2f, "humidity": %d, "battery": %.3f}'
                % (20 + (i % 50) / 10, 40 + i % 20, 3.7 - (i % 100) / 1000),
            )
        )
    return events


MAPPING = PointMapping.compile(
    measurement="telemetry",
    tags=("subject",),
    fields={"temperature": "temperature", "humidity": "humidity", "battery": "battery"},
)


async def create_db(session: aiohttp.ClientSession, url: str, name: str) -> None:
    async with session.post(f"{url}/query", data={"q": f'CREATE DATABASE "{name}"'}) as r:
        r.raise_for_status()


async def count(session: aiohttp.ClientSession, url: str, db: str) -> int:
    query = {"db": db, "q": "SELECT count(temperature) FROM telemetry"}
    async with session.get(f"{url}/query", params=query) as response:
        body = await response.json()
    series = body["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def run_sink(url: str, events: list[CloudEvent], concurrency: int, batch: int) -> float:
    target = InfluxTarget(url, database="sink")
    async with InfluxDBSink(target, MAPPING, batch_size=batch) as sink:
        queue = iter(events)

        async def worker() -> None:
            for event in queue:
                await sink.deliver(event)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return time.perf_counter() - started


TRIGGER_MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: InfluxDBSink
metadata: {name: influx}
spec:
  url: URL
  database: trigger
  mapping:
    measurement: telemetry
    tags: [subject]
    fields: {temperature: temperature, humidity: humidity, battery: battery}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: to-influx
  annotations: {headwater.dev/max-inflight: "INFLIGHT"}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: InfluxDBSink, name: influx}
"""


async def run_trigger(url: str, events: list[CloudEvent], inflight: int) -> float:
    """Broker (memory log) -> Trigger -> InfluxDBSink: the whole delivery path."""
    runtime = Runtime()
    try:
        mesh = TRIGGER_MESH.replace("URL", url).replace("INFLIGHT", str(inflight))
        await runtime.apply_text(mesh, "bench.yaml")
        broker = runtime.broker("default", "default")
        key = ("InfluxDBSink", "default", "influx")
        started = time.perf_counter()
        for i in range(0, len(events), 1000):
            await broker.accept(events[i : i + 1000])
        deadline = started + 120
        while runtime.status(key)["pointsWritten"] < len(events):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the Trigger delivered only {runtime.status(key)}")
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        await runtime.close()


async def run_naive(url: str, events: list[CloudEvent]) -> float:
    write = f"{url}/write?db=naive&precision=n"
    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        for event in events:
            line = MAPPING.line(event, time.time_ns()).encode()
            async with session.post(write, data=line) as response:
                if response.status != 204:
                    raise RuntimeError(await response.text())
        return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, InfluxServer(Path(tmp)) as influx:
        url = influx.url
        async with aiohttp.ClientSession() as session:
            for db in ("sink", "naive", "trigger"):
                await create_db(session, url, db)
            start_ns = time.time_ns() - 3600 * 1_000_000_000
            sink_events = telemetry(args.events, start_ns)
            naive_events = telemetry(args.naive_events, start_ns)
            sink_s = await run_sink(url, sink_events, args.concurrency, args.batch)
            naive_s = await run_naive(url, naive_events)
            trigger_events = sink_events[: args.trigger_events]
            trigger_s = await run_trigger(url, trigger_events, args.trigger_inflight)
            sink_n = await count(session, url, "sink")
            naive_n = await count(session, url, "naive")
            trigger_n = await count(session, url, "trigger")
    expected = (args.events, args.naive_events, len(trigger_events))
    if (sink_n, naive_n, trigger_n) != expected:
        raise SystemExit(f"points missing: {(sink_n, naive_n, trigger_n)} of {expected}")
    sink_rate = args.events / sink_s
    naive_rate = args.naive_events / naive_s
    print(f"influxd {url}: {args.events} points via InfluxDBSink, {args.naive_events} naive")
    print(f"  naive one write per event : {naive_rate:>10,.0f} points/s")
    print(
        f"  InfluxDBSink (batch {args.batch}, {args.concurrency} in flight): "
        f"{sink_rate:>10,.0f} points/s"
    )
    print(f"  ratio: {sink_rate / naive_rate:.1f}x")
    print(
        f"  Broker -> Trigger (max-inflight {args.trigger_inflight}) -> InfluxDBSink: "
        f"{len(trigger_events) / trigger_s:>10,.0f} points/s ({len(trigger_events)} events)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--naive-events", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--trigger-events", type=int, default=50_000)
    parser.add_argument("--trigger-inflight", type=int, default=100)
    asyncio.run(main(parser.parse_args()))
