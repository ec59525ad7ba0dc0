"""The Grafana files work: InfluxQL panels on a real influxd, the PromQL panel on a real
prometheus configured by deploy/grafana/prometheus.yml, units as the simulator sends."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from headwater.sources.simulator import Climate
from tests.helpers import wait_until
from tests.servers import InfluxServer, PrometheusServer, find_executable

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[3] / "deploy" / "grafana"
BROKER = "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: default}\n"


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "headwater-telemetry.json").read_text())  # type: ignore[no-any-return]


def influx_queries(board: dict[str, Any]) -> list[str]:
    return [
        target["query"]
        for panel in board["panels"]
        for target in panel["targets"]
        if target["datasource"]["uid"] == "headwater-influxdb"
    ]


def test_panels_use_the_provisioned_datasources() -> None:
    provisioned = YAML(typ="safe").load(GRAFANA / "provisioning" / "datasources" / "headwater.yaml")
    uids = {source["uid"] for source in provisioned["datasources"]}
    board = dashboard()
    used = {panel["datasource"]["uid"] for panel in board["panels"]}
    used |= {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]}
    assert used == uids
    assert len(influx_queries(board)) == 6


async def influxql(session: aiohttp.ClientSession, url: str, q: str) -> list[dict[str, Any]]:
    async with session.get(f"{url}/query", params={"db": "headwater", "q": q}) as response:
        body = await response.json()
    result = body["results"][0]
    assert "error" not in result, f"{q}: {result['error']}"
    return result.get("series", [])  # type: ignore[no-any-return]


def test_battery_panels_show_the_percentage_the_simulator_sends() -> None:
    board = dashboard()
    battery = [p for p in board["panels"] if p["title"].startswith("Battery")]
    assert len(battery) == 2
    for panel in battery:
        defaults = panel["fieldConfig"]["defaults"]
        assert (defaults["unit"], defaults["min"], defaults["max"]) == ("percent", 0, 100)
    climate = Climate("sim-1", seed=3)
    levels = [float(climate.reading(1_767_225_600.0 + i)["battery"]) for i in range(100)]  # type: ignore[arg-type]
    assert all(0 <= level <= 100 for level in levels) and levels[0] > 99


async def test_dashboard_queries_return_what_the_demo_sink_wrote(
    influxd: InfluxServer,
    headwater: tuple[Runtime, str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """On an influxd without the database: the sink creates it (as `make run` needs)."""
    monkeypatch.setenv("INFLUXDB_URL", influxd.url)
    runtime, address = headwater
    async with aiohttp.ClientSession() as session:
        await runtime.apply_text(BROKER, "broker.yaml")
        await runtime.apply_text((GRAFANA / "influxdb-sink.yaml").read_text(), "sink.yaml")
        now = time.time()
        events = [
            CloudEvent(
                {
                    "specversion": "1.0",
                    "id": str(i),
                    "source": "mqtt://greenhouse/sim",
                    "type": "dev.headwater.telemetry",
                    "subject": f"greenhouse-{i % 2}",
                },
                Climate(f"greenhouse-{i % 2}", seed=i % 2).reading(now),
            )
            for i in range(10)
        ]
        await runtime.broker("default", "default").accept(events)
        key = ("InfluxDBSink", "default", "influxdb")
        await wait_until(lambda: runtime.status(key).get("pointsWritten") == 10)

        board = dashboard()
        variable = board["templating"]["list"][0]["query"]
        (tags,) = await influxql(session, influxd.url, variable)
        assert [value for _, value in tags["values"]] == ["greenhouse-0", "greenhouse-1"]
        for query in influx_queries(board):
            concrete = (
                query.replace("$timeFilter", "time > now() - 1h")
                .replace("$__interval", "10s")
                .replace("$device", ".*")
            )
            series = await influxql(session, influxd.url, concrete)
            assert {s["tags"]["subject"] for s in series} == {"greenhouse-0", "greenhouse-1"}, query

        # The Prometheus panel, from a prometheus that runs deploy/grafana/prometheus.yml.
        config = YAML(typ="safe").load(GRAFANA / "prometheus.yml")
        [job] = config["scrape_configs"]
        assert job["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]  # `make run`'s port
        job["static_configs"] = [{"targets": [address]}]
        config["global"]["scrape_interval"] = "1s"
        prometheus = PrometheusServer(tmp_path / "prometheus", [address], config=config)
        prometheus.start()
        try:
            expressions = [
                t["expr"]
                for p in board["panels"]
                for t in p["targets"]
                if t["datasource"]["uid"] == "headwater-prometheus"
            ]
            assert expressions
            for expr in expressions:
                await promql(session, prometheus.url, expr)  # valid, and answered
            written = await promql(
                session, prometheus.url, "sum by (name) (headwater_influxdb_points_written_total)"
            )
            assert {r["metric"]["name"]: r["value"][1] for r in written} == {"influxdb": "10"}
        finally:
            prometheus.stop()


SCRAPE_WAIT = 30.0
"""Seconds for prometheus to start, scrape Headwater and answer."""


async def promql(session: aiohttp.ClientSession, url: str, expr: str) -> list[dict[str, Any]]:
    """The result of ``expr`` once prometheus has scraped something for it."""
    async with asyncio.timeout(SCRAPE_WAIT):
        while True:
            async with session.get(f"{url}/api/v1/query", params={"query": expr}) as response:
                body = await response.json() if response.status == 200 else {}
            if body.get("status") == "success" and body["data"]["result"]:
                return body["data"]["result"]  # type: ignore[no-any-return]
            assert body.get("errorType") != "bad_data", f"{expr}: {body.get('error')}"
            await asyncio.sleep(0.25)


def test_the_prometheus_config_is_valid(tmp_path: Path) -> None:
    checked = subprocess.run(
        [
            find_executable("promtool", "/usr/bin/promtool"),
            "check",
            "config",
            "--syntax-only",
            str(GRAFANA / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
