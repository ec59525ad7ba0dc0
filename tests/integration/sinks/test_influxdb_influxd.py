"""InfluxDBSink against a real influxd 1.x: what was delivered is what a query returns."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import re
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from headwater.cloudevents import CloudEvent, from_http
from headwater.eventing import DeliveryError
from headwater.runtime import Runtime
from headwater.sinks.influx_target import InfluxTarget
from headwater.sinks.influxdb import InfluxDBSink
from headwater.sinks.lineprotocol import PointMapping
from tests.servers import InfluxServer

pytestmark = pytest.mark.integration

_databases = itertools.count()


async def query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"}) as response,
    ):
        body = await response.json()
    return body["results"][0].get("series", [])  # type: ignore[no-any-return]


async def new_database(url: str) -> str:
    name = f"test{next(_databases)}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/query", data={"q": f'CREATE DATABASE "{name}"'}) as response,
    ):
        assert response.status == 200
    return name


def telemetry(i: int, data: object, **extra: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "mqtt://gw/sensors",
            "type": "dev.headwater.telemetry",
            "subject": f"greenhouse {i % 3}",
            "time": f"2026-11-28T12:00:{i % 60:02d}.{i:09d}Z",
            "datacontenttype": "application/json",
            **extra,
        },
        data,
    )


async def test_points_read_back_with_types_tags_and_nanosecond_times(
    influxd: InfluxServer,
) -> None:
    db = await new_database(influxd.url)
    mapping = PointMapping.compile(
        tags=["subject", "zone"],
        fields={"t": "temperature", "n": "count", "ok": "ok", "note": "note"},
        integers=True,
    )
    note = 'say "hi", \\ x=1 y'
    events = [
        telemetry(
            i,
            {"temperature": 20 + i / 4, "count": i, "ok": i % 2 == 0, "note": note},
            zone="north,east",
        )
        for i in range(300)
    ]
    async with InfluxDBSink(InfluxTarget(influxd.url, database=db), mapping) as sink:
        results = await asyncio.gather(*(sink.deliver(e) for e in events))
    assert results == [None] * 300
    assert sink.writes < 300  # batched
    series = await query(
        influxd.url, db, 'SELECT t, n, ok, note FROM "dev.headwater.telemetry" GROUP BY *'
    )
    assert {s["tags"]["subject"] for s in series} == {
        "greenhouse 0",
        "greenhouse 1",
        "greenhouse 2",
    }
    assert {s["tags"]["zone"] for s in series} == {"north,east"}
    rows = {row[0]: row[1:] for s in series for row in s["values"]}
    assert len(rows) == 300
    noon = 1795867200_000000000
    assert rows[noon] == [20.0, 0, True, note]
    assert rows[noon + 1_000_000_000 + 1] == [20.25, 1, False, note]
    assert rows[noon + 59_000_000_000 + 299] == [20 + 299 / 4, 299, False, note]
    types = await query(influxd.url, db, 'SHOW FIELD KEYS FROM "dev.headwater.telemetry"')
    assert dict(map(tuple, types[0]["values"])) == {  # type: ignore[arg-type]
        "n": "integer",
        "note": "string",
        "ok": "boolean",
        "t": "float",
    }


async def test_field_type_conflict_fails_only_the_offending_events(influxd: InfluxServer) -> None:
    db = await new_database(influxd.url)
    mapping = PointMapping.compile(measurement="m", tags=["subject"], fields={"v": "v"})
    target = InfluxTarget(influxd.url, database=db)
    async with InfluxDBSink(target, mapping, batch_size=100, flush_interval=0.2) as sink:
        await sink.deliver(telemetry(0, {"v": 1.0}))  # the field is a float from now on
        events = [
            telemetry(i, {"v": "broken" if i in (17, 71) else float(i)}) for i in range(1, 100)
        ]
        results = await asyncio.gather(*(sink.deliver(e) for e in events), return_exceptions=True)
    failed = {i + 1: r for i, r in enumerate(results) if r is not None}
    assert set(failed) == {17, 71}
    error = failed[17]
    assert isinstance(error, DeliveryError) and error.status == 400 and not error.retryable
    assert "field type conflict" in error.reason
    assert 'line: m,subject=greenhouse\\ 2 v="broken"' in error.reason
    count = await query(influxd.url, db, "SELECT count(v) FROM m")
    assert count[0]["values"][0][1] == 98


async def test_missing_database_is_retryable_not_lost(influxd: InfluxServer) -> None:
    """With createDatabase: false, a missing database is said once, and writes wait for it."""
    mapping = PointMapping.compile(measurement="m")
    target = InfluxTarget(influxd.url, database="never-created", create_database=False)
    async with InfluxDBSink(target, mapping, flush_interval=0) as sink:
        with pytest.raises(DeliveryError) as raised:
            await sink.deliver(telemetry(1, {"v": 1.0}))
        problem = sink.status()["problem"]
    # 404 "database not found": Knative retries 404, and creating it fixes the write.
    assert raised.value.status == 404 and raised.value.retryable
    assert "database not found" in raised.value.reason
    assert problem == (
        "database 'never-created' does not exist and `createDatabase: false` says not to "
        'create it: create it (CREATE DATABASE "never-created")'
    )


TRICKY = " ,=\"\\'=#{}[]éλ☁️\\\\"
IN_MEASUREMENT = re.compile(r'\\(?:[, ="]|\Z)')
IN_KEY = re.compile(r"\\(?:[, =]|\Z)")


@pytest.mark.parametrize(
    ("measurement", "unwritable"),
    [
        pytest.param(None, IN_MEASUREMENT, id="text-in-measurement-tag-field"),
        pytest.param("fixed", IN_KEY, id="text-in-tag-and-field"),
    ],
)
async def test_tricky_text_reads_back_exactly_or_is_refused(
    influxd: InfluxServer, measurement: str | None, unwritable: re.Pattern[str]
) -> None:
    """Measurements, tag values, field keys and string fields full of line protocol's
    special characters come back from InfluxDB exactly as they were sent; what line
    protocol cannot carry is refused, not mangled."""
    db = await new_database(influxd.url)
    rng = random.Random(9)
    texts = [
        "".join(rng.choice(TRICKY + "ab") for _ in range(rng.randint(1, 12))) for _ in range(80)
    ]
    events = [
        CloudEvent(
            {
                "specversion": "1.0",
                "id": str(i),
                "source": "/fuzz",
                "type": f"m{i}{text}",
                "label": f"x{text}",
                "time": f"2026-11-28T12:00:00.{i:09d}Z",
            },
            {f"k{text}": text},
        )
        for i, text in enumerate(texts)
    ]
    mapping = PointMapping.compile(measurement=measurement, tags=["label"])
    async with InfluxDBSink(InfluxTarget(influxd.url, database=db), mapping) as sink:
        results = await asyncio.gather(*(sink.deliver(e) for e in events), return_exceptions=True)
    refused = {i for i, r in enumerate(results) if isinstance(r, DeliveryError)}
    assert all(not results[i].retryable for i in refused)  # type: ignore[union-attr]
    assert refused == {i for i, t in enumerate(texts) if unwritable.search(t)}
    assert 10 < len(refused) < 60  # both kinds are exercised
    series = await query(influxd.url, db, "SELECT * FROM /.*/ GROUP BY label")
    got = {
        (s["name"], s["tags"]["label"], column, value)
        for s in series
        for row in s["values"]
        for column, value in zip(s["columns"][1:], row[1:], strict=True)
        if value is not None
    }
    written = [(i, t) for i, t in enumerate(texts) if i not in refused]
    assert got == {(measurement or f"m{i}{t}", f"x{t}", f"k{t}", t) for i, t in written}


async def test_through_a_trigger_refused_points_are_dead_lettered_with_influxdb_error(
    influxd: InfluxServer,
) -> None:
    db = await new_database(influxd.url)
    dead: list[CloudEvent] = []

    async def dead_letter(request: web.Request) -> web.Response:
        dead.append(from_http(request.headers.items(), await request.read()))  # type: ignore[arg-type]
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/", dead_letter)
    mesh = f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: InfluxDBSink
metadata: {{name: influx}}
spec:
  url: {influxd.url}
  database: {db}
  mapping: {{measurement: m, tags: [subject], fields: {{v: v}}}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: to-influx, annotations: {{headwater.dev/delivery-order: ordered}}}}
spec:
  broker: default
  delivery:
    retry: 2
    backoffDelay: PT0.01S
    deadLetterSink: {{uri: DLS}}
  subscriber:
    ref: {{apiVersion: sinks.headwater.dev/v1alpha1, kind: InfluxDBSink, name: influx}}
"""
    runtime = Runtime()
    async with TestServer(app, host="127.0.0.1") as server:
        try:
            await runtime.apply_text(mesh.replace("DLS", str(server.make_url("/"))), "m.yaml")
            broker = runtime.broker("default", "default")
            await broker.accept([telemetry(1, {"v": 1.5}), telemetry(2, {"v": "text"})])
            await broker.accept([telemetry(3, {"v": 2.5})])
            key = ("InfluxDBSink", "default", "influx")
            for _ in range(250):  # up to 5 s
                if dead and runtime.status(key)["pointsWritten"] == 2:
                    break
                await asyncio.sleep(0.02)
            status = runtime.status(key)
        finally:
            await runtime.close()
    assert status["pointsWritten"] == 2
    (letter,) = dead
    assert letter.id == "2" and json.loads(letter.data_bytes()) == {"v": "text"}
    assert letter["knativeerrorcode"] == "400"
    assert "field type conflict" in base64.b64decode(letter["knativeerrordata"]).decode()
    assert status["pointsFailed"] == 1  # a 400 is not retried: straight to the dead letter
    count = await query(influxd.url, db, "SELECT count(v) FROM m")
    assert count[0]["values"][0][1] == 2


async def test_on_an_empty_influxdb_the_database_is_created_and_written(
    influxd: InfluxServer,
) -> None:
    """What `make run` meets on a fresh InfluxDB 1.x: no database yet."""
    name = f"fresh{next(_databases)}"
    async with InfluxDBSink(
        InfluxTarget(influxd.url, database=name), PointMapping.compile()
    ) as sink:
        assert await sink.deliver(telemetry(1, {"temperature": 21.5})) is None
    assert sink.status()["problem"] is None
    [series] = await query(influxd.url, name, 'SELECT "temperature" FROM "dev.headwater.telemetry"')
    assert series["values"][0][1] == 21.5
