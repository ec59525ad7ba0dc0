"""The batching InfluxDBSink against a scripted InfluxDB HTTP API on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.sinks.influx_target import InfluxTarget
from headwater.sinks.influxdb import InfluxDBSink
from headwater.sinks.lineprotocol import PointMapping
from tests.helpers import WAIT, wait_until

MAPPING = PointMapping.compile(measurement="m", tags=["subject"], fields={"v": "v"})

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class FakeInflux:
    """Records each write; ``answer`` decides the response from the body's lines."""

    answer: Callable[[list[str]], Answer] = lambda lines: (204, {}, b"")
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    writes: list[list[str]] = field(default_factory=list)
    requests: list[web.Request] = field(default_factory=list)
    url: str = ""
    # The target's own API: 1.x /query (CREATE DATABASE, SHOW DATABASES), 2.x buckets.
    databases: set[str] = field(default_factory=lambda: {"db"})
    may_create: bool = True
    buckets: set[str] = field(default_factory=set)
    queries: list[str] = field(default_factory=list)
    arrived: int = 0
    """Writes that reached the server (held at the gate while it is closed)."""

    async def query(self, request: web.Request) -> web.Response:
        q = (await request.post()).get("q") or request.query.get("q", "")
        assert isinstance(q, str)
        self.queries.append(q)
        if q.startswith("CREATE DATABASE"):
            if not self.may_create:
                return web.json_response(
                    {"error": "error authorizing query: user not authorized"}, status=403
                )
            self.databases.add(q.split('"')[1])
            return web.json_response({"results": [{"statement_id": 0}]})
        values = [[name] for name in sorted(self.databases)]
        return web.json_response(
            {"results": [{"series": [{"name": "databases", "values": values}]}]}
        )

    async def list_buckets(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Token t0k":
            return web.json_response(
                {"code": "unauthorized", "message": "unauthorized"}, status=401
            )
        name = request.query.get("name")
        return web.json_response(
            {"buckets": [{"name": name, "orgID": "1"}] if name in self.buckets else []}
        )

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.gate.wait()
        lines = (await request.text()).split("\n")
        self.writes.append(lines)
        self.requests.append(request)
        status, headers, body = self.answer(lines)
        return web.Response(status=status, headers=headers, body=body)


@pytest.fixture
async def influx() -> AsyncIterator[FakeInflux]:
    fake = FakeInflux()
    fake.gate.set()
    app = web.Application()
    app.router.add_post("/write", fake.handle)
    app.router.add_post("/api/v2/write", fake.handle)
    app.router.add_route("*", "/query", fake.query)
    app.router.add_get("/api/v2/buckets", fake.list_buckets)
    async with TestServer(app, host="127.0.0.1") as server:
        fake.url = str(server.make_url("")).rstrip("/")
        yield fake


async def idle() -> None:
    """Let every task that can run do so (a few turns of the loop, no clock)."""
    for _ in range(20):
        await asyncio.sleep(0)


def event(i: int, v: object = 1.5) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "/t",
            "type": "t",
            "subject": f"d{i}",
            "time": f"2026-11-28T12:00:00.{i:09d}Z",
        },
        {"v": v},
    )


def sink_for(fake: FakeInflux, **options: object) -> InfluxDBSink:
    return InfluxDBSink(InfluxTarget(fake.url, database="db"), MAPPING, **options)  # type: ignore[arg-type]


async def deliver_all(sink: InfluxDBSink, events: list[CloudEvent]) -> list[object]:
    return await asyncio.gather(*(sink.deliver(e) for e in events), return_exceptions=True)


async def test_concurrent_deliveries_share_one_write(influx: FakeInflux) -> None:
    async with sink_for(influx, batch_size=1000, flush_interval=0.05) as sink:
        results = await deliver_all(sink, [event(i) for i in range(500)])
    assert results == [None] * 500
    assert len(influx.writes) == 1
    assert influx.writes[0][0] == "m,subject=d0 v=1.5 1795867200000000000"
    assert sorted(influx.writes[0]) == sorted(
        f"m,subject=d{i} v=1.5 {1795867200000000000 + i}" for i in range(500)
    )
    request = influx.requests[0]
    assert request.query["db"] == "db" and request.query["precision"] == "n"
    assert sink.points_written == 500 and sink.buffered == 0


async def test_batches_are_cut_at_batch_size(influx: FakeInflux) -> None:
    async with sink_for(influx, batch_size=100, flush_interval=5) as sink:
        results = await asyncio.wait_for(deliver_all(sink, [event(i) for i in range(250)]), WAIT)
    # Two full batches left at once; the last 50 as soon as no write was in flight.
    assert results == [None] * 250
    assert [len(w) for w in influx.writes] == [100, 100, 50]


async def test_while_a_write_is_in_flight_batches_wait_the_interval(influx: FakeInflux) -> None:
    influx.gate.clear()
    loop = asyncio.get_running_loop()
    async with sink_for(influx, flush_interval=0.2) as sink:
        first = asyncio.ensure_future(sink.deliver(event(0)))
        await wait_until(lambda: influx.arrived == 1)  # its write is in flight (held)
        started = loop.time()
        later = [asyncio.ensure_future(sink.deliver(event(i))) for i in range(1, 6)]
        await wait_until(lambda: sink.buffered == 6)
        assert influx.arrived == 1  # still gathering: no second write yet
        await wait_until(lambda: influx.arrived == 2)  # the interval passed: it goes
        assert loop.time() - started >= 0.2
        influx.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *later), WAIT)
    assert sorted(len(w) for w in influx.writes) == [1, 5]


async def test_a_delivery_returns_only_once_its_write_is_answered(influx: FakeInflux) -> None:
    influx.gate.clear()
    async with sink_for(influx, flush_interval=0) as sink:
        pending = asyncio.ensure_future(sink.deliver(event(1)))
        await wait_until(lambda: influx.arrived == 1)  # written, not answered yet
        assert not pending.done()
        influx.gate.set()
        assert await asyncio.wait_for(pending, WAIT) is None


async def test_buffer_bound_holds_further_deliveries_back(influx: FakeInflux) -> None:
    influx.gate.clear()
    async with sink_for(influx, batch_size=10, max_buffered=10, flush_interval=0) as sink:
        first = [asyncio.ensure_future(sink.deliver(event(i))) for i in range(10)]
        await wait_until(lambda: influx.arrived == 1)  # the batch of ten is in flight
        late = asyncio.ensure_future(sink.deliver(event(10)))
        await idle()  # the late delivery ran as far as it can
        assert sink.buffered == 10 and not late.done()
        influx.gate.set()
        assert await asyncio.wait_for(asyncio.gather(*first, late), WAIT) == [None] * 11
    assert [len(w) for w in influx.writes] == [10, 1]


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after"),
    [
        pytest.param(500, {}, True, None, id="500"),
        pytest.param(503, {"Retry-After": "7"}, True, 7.0, id="503-retry-after"),
        pytest.param(429, {}, True, None, id="429"),
        pytest.param(401, {}, False, None, id="401"),
    ],
)
async def test_write_failures_fail_every_delivery_in_the_batch(
    influx: FakeInflux, status: int, headers: dict[str, str], retryable: bool, retry_after: object
) -> None:
    influx.answer = lambda lines: (status, headers, b'{"error":"nope"}')
    async with sink_for(influx, flush_interval=0.02) as sink:
        results = await deliver_all(sink, [event(i) for i in range(20)])
    assert len(influx.writes) == 1  # no narrowing: the batch's content is not to blame
    for result in results:
        assert isinstance(result, DeliveryError)
        assert (result.status, result.retryable, result.retry_after) == (
            status,
            retryable,
            retry_after,
        )
        assert result.reason == f"InfluxDB {status}: nope"
    assert sink.points_failed == 20 and sink.last_error == f"InfluxDB {status}: nope"


async def test_a_refused_line_fails_only_its_own_delivery(influx: FakeInflux) -> None:
    def partial(lines: list[str]) -> Answer:
        bad = [line for line in lines if 'v="' in line]
        if not bad:
            return 204, {}, b""
        message = f'partial write: field type conflict: input field "v" dropped={len(bad)}'
        return 400, {}, b'{"error":"%s"}' % message.replace('"', '\\"').encode()

    influx.answer = partial
    events = [event(i, "text" if i in (5, 40) else 1.0) for i in range(64)]
    async with sink_for(influx, batch_size=64, flush_interval=1) as sink:
        results = await deliver_all(sink, events)
    failed = {i for i, r in enumerate(results) if r is not None}
    assert failed == {5, 40}
    error = results[5]
    assert isinstance(error, DeliveryError)
    assert error.status == 400 and not error.retryable
    assert 'field type conflict: input field "v"' in error.reason
    assert error.reason.endswith('line: m,subject=d5 v="text" 1795867200000000005')
    # Halving: 1 + 2 + 4 + ... writes, far fewer than one per point.
    assert len(influx.writes) < 30


async def test_an_event_that_is_no_point_fails_without_retry(influx: FakeInflux) -> None:
    async with sink_for(influx) as sink:
        with pytest.raises(DeliveryError) as raised:
            await sink.deliver(event(1, v=None))
    assert raised.value.status is None and not raised.value.retryable
    assert "no field" in raised.value.reason
    assert influx.writes == []


async def test_unreachable_and_slow_influxdb_are_retryable(influx: FakeInflux) -> None:
    influx.gate.clear()
    async with sink_for(influx, flush_interval=0, write_timeout=0.1) as sink:
        with pytest.raises(DeliveryError) as slow:
            await sink.deliver(event(1))
    assert slow.value.retryable and slow.value.status is None
    assert "timed out" in slow.value.reason
    closed = InfluxDBSink(InfluxTarget("http://127.0.0.1:9", database="db"), MAPPING)
    async with closed:
        with pytest.raises(DeliveryError) as refused:
            await closed.deliver(event(1))
    assert refused.value.retryable and refused.value.status is None


async def test_v1_auth_is_basic_and_never_in_url_or_repr(influx: FakeInflux) -> None:
    target = InfluxTarget(
        influx.url, database="db", retention_policy="week", username="u", password="s3cret"
    )
    async with InfluxDBSink(target, MAPPING, flush_interval=0) as sink:
        await sink.deliver(event(1))
        assert "s3cret" not in repr(sink) and "s3cret" not in str(sink.status())
    request = influx.requests[0]
    assert request.headers["Authorization"] == "Basic dTpzM2NyZXQ="
    assert request.query["rp"] == "week" and "s3cret" not in str(request.url)


async def test_v2_writes_to_api_v2_with_token(influx: FakeInflux) -> None:
    mapping = PointMapping.compile(measurement="m", tags=[], precision="ms")
    target = InfluxTarget(influx.url, org="acme", bucket="telemetry", token="tok")
    async with InfluxDBSink(target, mapping, flush_interval=0) as sink:
        await sink.deliver(event(1))
        assert "tok" not in repr(sink)
    request = influx.requests[0]
    assert request.path == "/api/v2/write"
    assert dict(request.query) == {"org": "acme", "bucket": "telemetry", "precision": "ms"}
    assert request.headers["Authorization"] == "Token tok"
    assert influx.writes == [["m v=1.5 1795867200000"]]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="no-database-or-bucket"),
        pytest.param({"database": "a", "bucket": "b", "org": "o"}, id="both"),
        pytest.param({"bucket": "b"}, id="bucket-without-org"),
    ],
)
def test_target_needs_exactly_one_api(options: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="InfluxDB"):
        InfluxTarget("http://localhost:8086", **options)


def test_redacted_url_hides_userinfo() -> None:
    target = InfluxTarget("http://u:pw@localhost:8086/", database="d")
    assert target.redacted_url == "http://localhost:8086/"
    assert "pw" not in repr(target)


async def test_deliver_before_start_or_after_close_is_retryable(influx: FakeInflux) -> None:
    sink = sink_for(influx)
    with pytest.raises(DeliveryError, match="not running"):
        await sink.deliver(event(1))
    async with sink:
        pass
    with pytest.raises(DeliveryError, match="not running"):
        await sink.deliver(event(1))


async def test_close_writes_what_is_buffered(influx: FakeInflux) -> None:
    influx.gate.clear()
    sink = sink_for(influx, flush_interval=60)
    await sink.start()
    first = asyncio.ensure_future(sink.deliver(event(0)))
    await wait_until(lambda: influx.arrived == 1)  # in flight: the next points wait
    pending = [asyncio.ensure_future(sink.deliver(event(i))) for i in range(1, 4)]
    await wait_until(lambda: sink.buffered == 4)
    closing = asyncio.ensure_future(sink.close())
    await idle()  # closing, waiting for the write in flight
    influx.gate.set()
    await asyncio.wait_for(closing, WAIT)
    assert [p.result() for p in (first, *pending)] == [None] * 4
    assert sorted(len(w) for w in influx.writes) == [1, 3]


async def test_deliveries_waiting_for_room_at_close_are_retryable(influx: FakeInflux) -> None:
    influx.gate.clear()
    sink = sink_for(influx, batch_size=2, max_buffered=2, flush_interval=0)
    await sink.start()
    written = [asyncio.ensure_future(sink.deliver(event(i))) for i in range(2)]
    await wait_until(lambda: influx.arrived == 1)
    waiting = asyncio.ensure_future(sink.deliver(event(2)))
    await idle()  # waiting for room
    closing = asyncio.ensure_future(sink.close())
    influx.gate.set()
    await asyncio.wait_for(closing, WAIT)
    assert [w.result() for w in written] == [None, None]
    with pytest.raises(DeliveryError, match="closing") as raised:
        await asyncio.wait_for(waiting, WAIT)
    assert raised.value.retryable


async def test_v2_error_messages_are_reported(influx: FakeInflux) -> None:
    influx.answer = lambda lines: (
        422,
        {},
        b'{"code":"unprocessable entity","message":"failure writing points: outside retention"}',
    )
    target = InfluxTarget(influx.url, org="acme", bucket="b", token="t")
    async with InfluxDBSink(target, MAPPING, flush_interval=0) as sink:
        with pytest.raises(DeliveryError) as raised:
            await sink.deliver(event(1))
    assert raised.value.status == 422 and not raised.value.retryable
    assert raised.value.reason == (
        "InfluxDB 422: failure writing points: outside retention; line: m,subject=d1 v=1.5 "
        "1795867200000000001"
    )


async def test_a_cancelled_flusher_leaves_no_delivery_waiting(influx: FakeInflux) -> None:
    influx.gate.clear()
    sink = sink_for(influx, flush_interval=0)
    await sink.start()
    pending = asyncio.ensure_future(sink.deliver(event(1)))
    await wait_until(lambda: influx.arrived == 1)
    assert sink._flusher is not None
    sink._flusher.cancel()
    with pytest.raises(DeliveryError, match="cancelled") as raised:
        await asyncio.wait_for(pending, WAIT)
    assert raised.value.retryable
    influx.gate.set()
    await asyncio.wait_for(sink.close(), WAIT)


# -- the target: a 1.x database is created, a 2.x bucket is checked --------------------


async def test_a_missing_database_is_created_before_the_first_write(influx: FakeInflux) -> None:
    influx.databases = set()
    async with sink_for(influx) as sink:
        assert await sink.deliver(event(1)) is None
    assert influx.queries == ['CREATE DATABASE "db"']
    assert sink.status()["problem"] is None


async def test_a_database_that_cannot_be_created_is_one_clear_problem(
    influx: FakeInflux, caplog: pytest.LogCaptureFixture
) -> None:
    influx.databases, influx.may_create = set(), False
    influx.answer = lambda lines: (404, {}, b'{"error":"database not found: \\"db\\""}')
    async with sink_for(influx) as sink:
        results = await deliver_all(sink, [event(i) for i in range(20)])
        problem = sink.status()["problem"]
    assert all(isinstance(r, DeliveryError) and r.status == 404 for r in results)
    assert isinstance(problem, str)
    assert problem.startswith("database 'db' does not exist and cannot be created (InfluxDB 403")
    assert 'create it (CREATE DATABASE "db") or let this user create it' in problem
    lines = [r.getMessage() for r in caplog.records if "does not exist" in r.getMessage()]
    assert len(lines) == 1 and lines[0].endswith("writes fail until this is fixed")


async def test_create_database_false_only_checks(influx: FakeInflux) -> None:
    influx.databases = set()
    target = InfluxTarget(influx.url, database="db", create_database=False)
    async with InfluxDBSink(target, MAPPING) as sink:
        problem = await sink.prepare()
    assert set(influx.queries) == {"SHOW DATABASES"}  # at start, and asked again
    assert problem is not None and "`createDatabase: false` says not to create it" in problem


@pytest.mark.parametrize(
    ("buckets", "token", "expected"),
    [
        pytest.param({"sensors"}, "t0k", None, id="there"),
        pytest.param(
            set(),
            "t0k",
            "bucket 'sensors' of org 'acme' does not exist: create it (influx bucket create "
            "--name sensors --org acme) or fix `bucket`",
            id="missing",
        ),
        pytest.param(
            {"sensors"},
            "wrong",
            "InfluxDB refused the token (401: unauthorized): check `tokenEnv`",
            id="token",
        ),
    ],
)
async def test_a_v2_bucket_is_checked_at_start(
    influx: FakeInflux, buckets: set[str], token: str, expected: str | None
) -> None:
    influx.buckets = buckets
    target = InfluxTarget(influx.url, org="acme", bucket="sensors", token=token)
    async with InfluxDBSink(target, MAPPING) as sink:
        problem = await sink.prepare()
    assert problem == expected
    assert sink.status()["problem"] == problem
