"""The InfluxDBSink and PrometheusSink kinds: YAML validation and the running components."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from headwater.api import create_app
from headwater.cloudevents import CloudEvent
from headwater.resources import ConfigError, load_text
from headwater.runtime import Runtime

INFLUX = """\
apiVersion: sinks.headwater.dev/v1alpha1
kind: InfluxDBSink
metadata: {name: influx}
spec:
  url: URL
  database: telemetry
  username: writer
  passwordEnv: INFLUX_TEST_PASSWORD
  flushInterval: PT0.001S
  mapping:
    measurement: climate
    tags: [subject]
    fields:
      t: reading.celsius
"""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(("reading.celsius", "'reading[0'"), "JMESPath", id="bad-jmespath"),
        pytest.param(("database: telemetry", "bucket: b"), "org", id="bucket-without-org"),
        pytest.param(("PT0.001S", "soon"), "ISO 8601", id="bad-duration"),
        pytest.param(("measurement: climate", "measurement: 'a\\\\'"), "backslash", id="name"),
        pytest.param(("url: http://localhost:8086", "url: ftp://x"), "http", id="url"),
    ],
)
def test_invalid_influxdb_sinks_are_refused_with_the_field(
    change: tuple[str, str], message: str
) -> None:
    text = INFLUX.replace("URL", "http://localhost:8086").replace(*change)
    with pytest.raises(ConfigError, match=message):
        load_text(text, "influx.yaml")


def test_invalid_prometheus_sinks_are_refused() -> None:
    text = (
        "apiVersion: sinks.headwater.dev/v1alpha1\nkind: PrometheusSink\nmetadata: {name: p}\n"
        "spec:\n  metrics:\n    - {name: a, value: v}\n    - {name: a, value: w}\n"
    )
    with pytest.raises(ConfigError, match="unique"):
        load_text(text, "p.yaml")
    with pytest.raises(ConfigError, match="metric name"):
        load_text(text.replace("{name: a, value: w}", "{name: 'b-c', value: w}"), "p.yaml")


@pytest.fixture
async def influx_url() -> AsyncIterator[tuple[str, list[web.Request]]]:
    requests: list[web.Request] = []

    async def write(request: web.Request) -> web.Response:
        await request.read()
        requests.append(request)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/write", write)
    async with TestServer(app, host="127.0.0.1") as server:
        yield str(server.make_url("")), requests


async def test_running_influxdb_sink_writes_and_reports_without_secrets(
    influx_url: tuple[str, list[web.Request]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, requests = influx_url
    monkeypatch.setenv("INFLUX_TEST_PASSWORD", "hunter2")
    runtime = Runtime()
    async with TestClient(TestServer(create_app(runtime))) as client:
        await runtime.apply_text(INFLUX.replace("URL", url), "influx.yaml")
        component: Any = runtime.reconciler.component(("InfluxDBSink", "default", "influx"))
        event = CloudEvent(
            {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "subject": "s1"},
            {"reading": {"celsius": 21.5}},
        )
        assert await component.sink.deliver(event) is None
        status = runtime.status(("InfluxDBSink", "default", "influx"))
        metrics = await (await client.get("/metrics")).text()
    await runtime.close()
    assert requests[0].headers["Authorization"].startswith("Basic ")
    assert requests[0].query["db"] == "telemetry"
    assert status["pointsWritten"] == 1 and "hunter2" not in repr(status)
    assert 'headwater_influxdb_points_written_total{name="influx",namespace="default"} 1.0' in (
        metrics
    )


def test_create_database_can_be_turned_off() -> None:
    text = INFLUX.replace("URL", "http://localhost:8086")
    [on] = load_text(text, "influx.yaml")
    [off] = load_text(
        text.replace("  database: telemetry\n", "  database: telemetry\n  createDatabase: false\n"),
        "influx.yaml",
    )
    assert on.resource.spec.target(resolve_secrets=False).create_database  # type: ignore[attr-defined]
    assert not off.resource.spec.target(resolve_secrets=False).create_database  # type: ignore[attr-defined]
