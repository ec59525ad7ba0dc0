"""PrometheusSink on a running Headwater's /metrics, scraped by a real prometheus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from tests.helpers import wait_until
from tests.servers import PrometheusServer

pytestmark = pytest.mark.integration

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: PrometheusSink
metadata: {name: greenhouse}
spec:
  staleness: PT1M
  metrics:
    - name: greenhouse_temperature_celsius
      help: Air temperature per device.
      value: reading.celsius
      labels: {device: subject, zone: zone}
    - name: greenhouse_readings
      type: counter
      labels: {device: subject}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-prometheus}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.telemetry}}
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: PrometheusSink, name: greenhouse}
"""

SCRAPE_WAIT = 30.0
"""Seconds for prometheus to start, scrape (every second) and answer a query."""


def reading(i: int, device: str, celsius: float) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "mqtt://gw/sensors",
            "type": "dev.headwater.telemetry",
            "subject": device,
            "zone": "north",
            "datacontenttype": "application/json",
        },
        {"reading": {"celsius": celsius}},
    )


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Any]:
    servers: list[PrometheusServer] = []

    def start(target: str) -> PrometheusServer:
        server = PrometheusServer(tmp_path / "prometheus", [target])
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


async def query_until(
    url: str, promql: str, expected: dict[str, float], label: str = "device"
) -> dict[str, float]:
    """Poll the query API until it returns ``expected`` (label value -> value) or time runs out."""
    seen: dict[str, float] = {}
    async with aiohttp.ClientSession() as session, asyncio.timeout(SCRAPE_WAIT):
        while True:
            async with session.get(f"{url}/api/v1/query", params={"query": promql}) as response:
                # 503 until the TSDB is ready
                body = await response.json() if response.status == 200 else {}
            if body.get("status") == "success":
                seen = {r["metric"][label]: float(r["value"][1]) for r in body["data"]["result"]}
                if seen == expected:
                    return seen
            await asyncio.sleep(0.25)


async def test_prometheus_scrapes_gauges_and_counters(
    headwater: tuple[Runtime, str], prometheus_for: Any
) -> None:
    runtime, address = headwater
    await runtime.apply_text(MESH, "mesh.yaml")
    broker = runtime.broker("default", "default")
    await broker.accept([reading(1, "s1", 20.5), reading(2, "s2", 18.0), reading(3, "s1", 21.25)])
    sink = runtime.reconciler.component(("PrometheusSink", "default", "greenhouse"))
    await wait_until(lambda: sink.status()["received"] == 3, what="three events delivered")  # type: ignore[union-attr]

    prometheus = prometheus_for(address)
    assert await query_until(
        prometheus.url, 'greenhouse_temperature_celsius{zone="north"}', {"s1": 21.25, "s2": 18.0}
    )
    assert await query_until(prometheus.url, "greenhouse_readings_total", {"s1": 2.0, "s2": 1.0})


async def test_own_port_serves_the_metrics_alone(headwater: tuple[Runtime, str]) -> None:
    runtime, address = headwater
    own = MESH.replace("  staleness: PT1M\n", "  staleness: PT1M\n  port: 0\n  host: 127.0.0.1\n")
    await runtime.apply_text(own, "mesh.yaml")
    component: Any = runtime.reconciler.component(("PrometheusSink", "default", "greenhouse"))
    await component.sink.deliver(reading(1, "s7", 30.5))
    async with aiohttp.ClientSession() as session:
        async with session.get(component.status()["metricsUrl"]) as response:
            own_text = await response.text()
        async with session.get(f"http://{address}/metrics") as response:
            main_text = await response.text()
    assert 'greenhouse_temperature_celsius{device="s7",zone="north"} 30.5' in own_text
    assert "greenhouse_temperature_celsius" not in main_text


async def test_a_device_that_stops_reporting_disappears_from_prometheus(
    headwater: tuple[Runtime, str], prometheus_for: Any
) -> None:
    runtime, address = headwater
    await runtime.apply_text(MESH.replace("staleness: PT1M", "staleness: PT2S"), "mesh.yaml")
    component: Any = runtime.reconciler.component(("PrometheusSink", "default", "greenhouse"))
    prometheus = prometheus_for(address)
    query = 'greenhouse_temperature_celsius{zone="north"}'

    async def keep_reporting() -> None:
        for i in range(200):  # s2 reports every 0.2 s for at most 40 s (cancelled sooner)
            await component.sink.deliver(reading(i, "s2", 18.0))
            await asyncio.sleep(0.2)

    await query_until(prometheus.url, "up", {"headwater": 1.0}, label="job")  # scraping
    await component.sink.deliver(reading(0, "s1", 21.0))  # s1 reports once, then never
    reporter = asyncio.create_task(keep_reporting())
    try:
        await query_until(prometheus.url, query, {"s1": 21.0, "s2": 18.0})
        # Two seconds later s1 is gone from /metrics; Prometheus marks it stale.
        await query_until(prometheus.url, query, {"s2": 18.0})
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
