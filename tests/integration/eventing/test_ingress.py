from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp
import orjson
import pytest

from headwater.cloudevents import CloudEvent, to_http, to_http_batch
from headwater.eventing import Broker, Ingress, IngressServer, RecordingSink, Trigger
from headwater.log import EARLIEST, LogUnavailable, MemoryLog

pytestmark = pytest.mark.integration


class FlakyLog(MemoryLog):
    down = False

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        if self.down:
            raise LogUnavailable("disk on fire")
        return await super().append(stream, events)


@dataclass
class Setup:
    url: str
    broker: Broker
    log: FlakyLog
    ingress: Ingress
    http: aiohttp.ClientSession


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    async with FlakyLog() as log, Broker("default", "b", log, max_event_size=4096) as broker:
        brokers = {("default", "b"): broker}
        ingress = Ingress(lambda ns, name: brokers.get((ns, name)), max_batch_bytes=64 * 1024)
        async with IngressServer(ingress.app()) as server, aiohttp.ClientSession() as http:
            yield Setup(server.url + "/default/b", broker, log, ingress, http)


def event(i: int = 1, data: object = None, **attrs: object) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": str(i), "source": "/src", "type": "t", **attrs},
        {"n": i} if data is None else data,
    )


async def post(s: Setup, headers: dict[str, str], body: bytes, url: str | None = None) -> int:
    async with s.http.post(url or s.url, headers=headers, data=body) as response:
        await response.read()
        return response.status


async def stored(s: Setup) -> list[CloudEvent]:
    reader = s.log.reader(s.broker.stream, "check", EARLIEST)
    entries = await reader.next_batch(1000)
    await reader.close()
    return [entry.event for entry in entries]


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_accepts_binary_and_structured(setup: Setup, mode: str) -> None:
    original = event(1, subject="s", datacontenttype="application/json")
    headers, body = to_http(original, mode)  # type: ignore[arg-type]
    assert await post(setup, headers, body) == 202
    (got,) = await stored(setup)
    assert got.evolve({"knativebrokerttl": None}) == original


async def test_accepts_batches(setup: Setup) -> None:
    headers, body = to_http_batch([event(i) for i in range(5)])
    assert await post(setup, headers, body) == 202
    assert [e.id for e in await stored(setup)] == [str(i) for i in range(5)]


async def test_202_means_delivered_downstream(setup: Setup) -> None:
    sink = RecordingSink()
    await setup.broker.add_trigger(Trigger("t", sink))
    headers, body = to_http(event(7))
    assert await post(setup, headers, body) == 202
    (got,) = await sink.wait_for(1)
    assert got.id == "7"


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        pytest.param({"ce-id": "1", "ce-source": "/s", "ce-type": "t"}, b"", "specversion"),
        pytest.param({"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"}, b"", "id"),
        pytest.param(
            {"ce-specversion": "9.9", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
            b"",
            "specversion",
        ),
        pytest.param({"content-type": "application/cloudevents+json"}, b"{nope", "JSON"),
        pytest.param({"content-type": "application/cloudevents+json"}, b"[]", ""),
        pytest.param({"content-type": "application/cloudevents-batch+json"}, b"{}", ""),
        pytest.param({"content-type": "application/cloudevents+xml"}, b"<e/>", "format"),
        pytest.param({"content-type": "text/plain"}, b"hello", "specversion"),
    ],
)
async def test_invalid_events_get_400_with_reason(
    setup: Setup, headers: dict[str, str], body: bytes, reason: str
) -> None:
    async with setup.http.post(setup.url, headers=headers, data=body) as response:
        text = await response.text()
    assert response.status == 400, text
    assert reason in text
    assert await stored(setup) == []


async def test_unknown_broker_404_methods_405_options_200(setup: Setup) -> None:
    headers, body = to_http(event())
    assert await post(setup, headers, body, setup.url.replace("/b", "/nope")) == 404
    async with setup.http.get(setup.url) as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
    async with setup.http.put(setup.url, data=b"") as response:
        assert response.status == 405
    async with setup.http.options(setup.url) as response:
        assert response.status == 200
        assert "POST" in response.headers["Allow"]


async def test_too_large_is_413(setup: Setup) -> None:
    headers, body = to_http(event(data=b"x" * 5000, datacontenttype="application/octet-stream"))
    assert await post(setup, headers, body) == 413
    big = [event(i, data="x" * 5000, datacontenttype="text/plain") for i in range(2)]
    headers, body = to_http_batch(big)
    assert await post(setup, headers, body) == 413  # each event is over 4096 bytes
    assert await stored(setup) == []


async def test_log_unavailable_is_503_with_retry_after(setup: Setup) -> None:
    setup.log.down = True
    headers, body = to_http(event())
    async with setup.http.post(setup.url, headers=headers, data=body) as response:
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
    setup.log.down = False
    assert await post(setup, headers, body) == 202


# -- fuzzing --------------------------------------------------------------------------

VALID_HEADERS = {
    "ce-specversion": "1.0",
    "ce-id": "1",
    "ce-source": "/src",
    "ce-type": "t",
    "content-type": "application/json",
}
NASTY = [
    "",
    " ",
    "%",
    "%zz",
    "%C0%A0",
    '"',
    '"\\',
    "\x00",
    "\x7f",
    "é",
    "\udcff",
    "a" * 9000,
    "1.0",
    "0.3",
    "2026-13-45T99:99:99Z",
    "-1",
    "2147483648",
    "true",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    "application/cloudevents+json; charset=utf-16",
    "multipart/form-data; boundary=x",
]
NASTY_BODIES = [
    b"",
    b"{",
    b"[",
    b"null",
    b"[null]",
    b"[[]]",
    b'{"specversion": "1.0"}',
    b'{"specversion": "1.0", "id": "", "source": "", "type": ""}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data_base64": "!!"}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": 1, "data_base64": ""}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "time": "yesterday"}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "BAD": 1}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "x": {"nested": 1}}',
    b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "x": 1e400}',
    b"[" * 100_000,
    b"\xff\xfe\x00",
    orjson.dumps([{"specversion": "1.0"}] * 3),
]


def mutated_request(rng: random.Random) -> bytes:
    headers = dict(VALID_HEADERS)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        name = rng.choice([*VALID_HEADERS, "ce-time", "ce-dataschema", "ce-Ext", "ce-", "ce-x_y"])
        if roll < 0.3:
            headers.pop(name, None)
        else:
            headers[name] = rng.choice(NASTY)
    body = rng.choice(NASTY_BODIES) if rng.random() < 0.7 else rng.randbytes(rng.randint(0, 64))
    lines = [b"POST /default/b HTTP/1.1", b"Host: localhost", b"Connection: close"]
    for name, value in headers.items():
        lines.append(name.encode() + b": " + value.encode("utf-8", "surrogateescape"))
    lines.append(b"Content-Length: " + str(len(body)).encode())
    if rng.random() < 0.1:
        lines.append(rng.choice([b"Content-Length: 3", b"Transfer-Encoding: chunked", b": x"]))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def raw_status(port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        return int(line.split()[1])
    finally:
        writer.close()


async def test_fuzzed_requests_only_get_4xx_and_the_ingress_keeps_serving(setup: Setup) -> None:
    port = int(setup.url.split(":")[2].split("/")[0])
    rng = random.Random(5)
    statuses: dict[int, int] = {}
    for _ in range(600):
        status = await raw_status(port, mutated_request(rng))
        statuses[status] = statuses.get(status, 0) + 1
    assert all(400 <= s < 500 or s == 202 for s in statuses), statuses
    assert 500 not in setup.ingress.responses
    assert statuses.get(400, 0) > 300  # the fuzzer mostly produced invalid events
    headers, body = to_http(event(99))
    assert await post(setup, headers, body) == 202


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello
        b"GARBAGE\r\n\r\n",
        b"POST /default/b HTTP/9.9\r\n\r\n",
        b"POST /default/b HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /default/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /default/b HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n",
    ],
)
async def test_malformed_http_gets_400(setup: Setup, garbage: bytes) -> None:
    port = int(setup.url.split(":")[2].split("/")[0])
    assert 400 <= await raw_status(port, garbage) < 500
    headers, body = to_http(event())
    assert await post(setup, headers, body) == 202


async def test_saturated_broker_is_503_with_retry_after() -> None:
    class SlowLog(MemoryLog):
        async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
            await asyncio.sleep(0.2)
            return await super().append(stream, events)

    async with SlowLog() as log, Broker("default", "b", log, max_pending_events=4) as broker:
        ingress = Ingress(lambda ns, name: broker)
        async with IngressServer(ingress.app()) as server, aiohttp.ClientSession() as http:

            async def send(i: int) -> tuple[int, str | None]:
                headers, body = to_http(event(i))
                async with http.post(server.url + "/default/b", headers=headers, data=body) as r:
                    return r.status, r.headers.get("Retry-After")

            results = await asyncio.gather(*(send(i) for i in range(12)))
    assert sorted({status for status, _ in results}) == [202, 503]
    assert all(after == "1" for status, after in results if status == 503)
    assert sum(status == 202 for status, _ in results) == broker.stats.accepted


async def test_options_solicits_batches_and_says_which_request_codings_it_reads(
    setup: Setup,
) -> None:
    async with setup.http.options(setup.url) as response:
        assert response.status == 200
        accepted = {t.strip() for t in response.headers["Accept-Post"].split(",")}
        assert "application/cloudevents-batch+json" in accepted
        assert "application/cloudevents+json" in accepted
        assert "gzip" in response.headers["Accept-Encoding"]


async def test_a_gzipped_batch_is_read_and_its_decoded_size_is_bounded(setup: Setup) -> None:
    import gzip

    headers, body = to_http_batch([event(i) for i in range(50)])
    headers["Content-Encoding"] = "gzip"
    assert await post(setup, headers, gzip.compress(body)) == 202
    assert [e.id for e in await stored(setup)] == [str(i) for i in range(50)]
    # 64 KiB of batch limit: a small compressed body that inflates past it is refused.
    bomb = to_http_batch([event(i, data="x" * 4000) for i in range(40)])[1]
    assert len(gzip.compress(bomb)) < 4096
    assert await post(setup, headers, gzip.compress(bomb)) == 413
    assert len(await stored(setup)) == 50
