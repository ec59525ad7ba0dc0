from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import AiohttpTransport, DeliveryError, HttpSink, new_session
from headwater.eventing._http1 import Http1Client
from headwater.eventing.http_worker import HttpWorker
from tests.helpers import Answer, Receiver

from .conftest import StartReceiver, reply_with

pytestmark = pytest.mark.integration

Client = HttpWorker | Http1Client | None  # None: the sink's own aiohttp session


@pytest.fixture(params=["aiohttp", "http1", "worker"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """Every test runs three times: the sink's own aiohttp session, an in-process
    Http1Client (``headwater up --no-http-worker``), and an HttpWorker process."""
    if request.param == "aiohttp":
        yield None
        return
    made: HttpWorker | Http1Client = HttpWorker() if request.param == "worker" else Http1Client()
    yield made
    await made.close()


def event(i: int = 1, **attrs: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": str(i),
            "source": "/test",
            "type": "t",
            "datacontenttype": "application/json",
            **attrs,
        },
        {"n": i},
    )


async def test_binary_mode_with_prefer_reply(client: Client, receiver: StartReceiver) -> None:
    r = await receiver()
    async with HttpSink(r.url, transport=client) as sink:
        assert await sink.deliver(event(1, subject="a b")) is None
    (request,) = r.requests
    headers = request.headers
    assert headers["ce-id"] == "1"
    assert headers["Prefer"] == "reply"
    assert headers["Content-Type"] == "application/json"
    assert r.accepted == [event(1, subject="a b")]


async def test_structured_mode(client: Client, receiver: StartReceiver) -> None:
    r = await receiver()
    async with HttpSink(r.url, transport=client, format="json") as sink:
        await sink.deliver(event(2))
    assert r.requests[0].headers["Content-Type"] == "application/cloudevents+json"
    assert r.accepted == [event(2)]


async def test_event_without_content_type_gains_none(
    client: Client, receiver: StartReceiver
) -> None:
    bare = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, b"raw")
    r = await receiver()
    async with HttpSink(r.url, transport=client) as sink:
        await sink.deliver(bare)
    assert "Content-Type" not in r.requests[0].headers
    assert r.accepted == [bare]


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_200_with_event_is_a_reply(
    client: Client, receiver: StartReceiver, mode: str
) -> None:
    answer = CloudEvent(
        {
            "specversion": "1.0",
            "id": "r",
            "source": "/r",
            "type": "reply",
            "datacontenttype": "text/plain",
        },
        "x",
    )
    r = await receiver(lambda e, _: reply_with(answer, mode))
    async with HttpSink(r.url, transport=client) as sink:
        assert await sink.deliver(event()) == answer


async def test_202_is_never_a_reply(client: Client, receiver: StartReceiver) -> None:
    answer = CloudEvent({"specversion": "1.0", "id": "r", "source": "/r", "type": "reply"})

    def accepted_with_event(e: CloudEvent, _: Receiver) -> Answer:
        _, headers, body = reply_with(answer)
        return 202, headers, body

    r = await receiver(accepted_with_event)
    async with HttpSink(r.url, transport=client) as sink:
        assert await sink.deliver(event()) is None


async def test_200_without_event_is_no_reply(client: Client, receiver: StartReceiver) -> None:
    r = await receiver(lambda e, _: (200, {"Content-Type": "text/plain"}, b"thanks"))
    async with HttpSink(r.url, transport=client) as sink:
        assert await sink.deliver(event()) is None


async def test_invalid_reply_is_a_non_retryable_failure(
    client: Client, receiver: StartReceiver
) -> None:
    r = await receiver(lambda e, _: (200, {"ce-specversion": "1.0", "ce-id": "x"}, b""))
    async with HttpSink(r.url, transport=client) as sink:
        with pytest.raises(DeliveryError) as info:
            await sink.deliver(event())
    assert not info.value.retryable
    assert "invalid reply" in str(info.value)


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(400, False), (403, False), (404, True), (409, True), (429, True), (500, True), (503, True)],
)
async def test_error_statuses(
    client: Client, receiver: StartReceiver, status: int, retryable: bool
) -> None:
    r = await receiver(lambda e, _: (status, {"Retry-After": "7"}, b"why"))
    async with HttpSink(r.url, transport=client) as sink:
        with pytest.raises(DeliveryError) as info:
            await sink.deliver(event())
    assert (info.value.status, info.value.retryable, info.value.body) == (status, retryable, b"why")
    assert info.value.retry_after == 7.0


async def test_redirect_is_not_followed_nor_retried(
    client: Client, receiver: StartReceiver
) -> None:
    r = await receiver(lambda e, _: (307, {"Location": "http://127.0.0.1:9/"}, b""))
    async with HttpSink(r.url, transport=client) as sink:
        with pytest.raises(DeliveryError) as info:
            await sink.deliver(event())
    assert (info.value.status, info.value.retryable) == (307, False)


async def test_connection_refused_is_retryable(client: Client) -> None:
    async with HttpSink("http://127.0.0.1:9/", transport=client) as sink:
        with pytest.raises(DeliveryError) as info:
            await sink.deliver(event())
    assert info.value.status is None and info.value.retryable


async def test_connections_are_pooled_and_kept_alive(receiver: StartReceiver) -> None:
    r = await receiver()
    async with new_session(pool_size=4) as session:
        sink = HttpSink(r.url, transport=AiohttpTransport(session))
        for batch in range(5):
            await asyncio.gather(*(sink.deliver(event(batch * 20 + i)) for i in range(20)))
    assert len(r.accepted) == 100
    assert (
        len({request.peer for request in r.requests}) <= 4
    )  # 100 requests over at most 4 connections


async def test_large_reply_arriving_in_many_chunks(client: Client, receiver: StartReceiver) -> None:
    answer = CloudEvent(
        {
            "specversion": "1.0",
            "id": "r",
            "source": "/r",
            "type": "big",
            "datacontenttype": "text/plain",
        },
        "y" * 300_000,
    )
    r = await receiver(lambda e, _: reply_with(answer))
    async with HttpSink(r.url, transport=client) as sink:
        assert await sink.deliver(event()) == answer


async def test_oversized_reply_is_refused(client: Client, receiver: StartReceiver) -> None:
    answer = CloudEvent(
        {
            "specversion": "1.0",
            "id": "r",
            "source": "/r",
            "type": "big",
            "datacontenttype": "text/plain",
        },
        "y" * 2_000_000,
    )
    r = await receiver(lambda e, _: reply_with(answer))
    async with HttpSink(r.url, transport=client) as sink:
        with pytest.raises(DeliveryError, match="too large"):
            await sink.deliver(event())
