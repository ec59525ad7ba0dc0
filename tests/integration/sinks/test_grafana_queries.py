"""The Grafana dashboard's queries return the demo's readings from a real influxd."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ruamel.yaml import YAML

from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from tests.servers import InfluxServer

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


async def test_dashboard_queries_return_what_the_demo_sink_wrote(
    influxd: InfluxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFLUXDB_URL", influxd.url)
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{influxd.url}/query", data={"q": "CREATE DATABASE headwater"}
        ) as response:
            assert response.status == 200
        runtime = Runtime()
        try:
            await runtime.apply_text(BROKER, "broker.yaml")
            await runtime.apply_text((GRAFANA / "influxdb-sink.yaml").read_text(), "sink.yaml")
            events = [
                CloudEvent(
                    {
                        "specversion": "1.0",
                        "id": str(i),
                        "source": "mqtt://gw/sensors",
                        "type": "dev.headwater.telemetry",
                        "subject": f"greenhouse-{i % 2}",
                    },
                    {"temperature": 20 + i / 10, "humidity": 40 + i, "battery": 3.7 - i / 100},
                )
                for i in range(10)
            ]
            await runtime.broker("default", "default").accept(events)
            key = ("InfluxDBSink", "default", "influxdb")
            for _ in range(250):  # up to 5 s for the Trigger to deliver
                if runtime.status(key).get("pointsWritten") == 10:
                    break
                await asyncio.sleep(0.02)
            assert runtime.status(key)["pointsWritten"] == 10
        finally:
            await runtime.close()

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
