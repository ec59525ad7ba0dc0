"""HttpSink over the DeliveryTransport interface: any transport, the same meaning of responses."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from headwater.cloudevents import CloudEvent, to_http
from headwater.eventing import AiohttpTransport, DeliveryError, HttpSink, new_session
from headwater.eventing.transport import MAX_RESPONSE_BYTES, Response, TransportError
from tests.servers import free_port

EVENT = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, b"x")


class Scripted:
    """A transport answering what a test scripts, and keeping what it was asked."""

    def __init__(self, answer: Response | TransportError) -> None:
        self.answer = answer
        self.requests: list[tuple[str, dict[str, str], bytes, int]] = []
        self.closed = False

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, max_body: int
    ) -> Response:
        self.requests.append((url, dict(headers), body, max_body))
        if isinstance(self.answer, TransportError):
            raise self.answer
        return self.answer

    async def close(self) -> None:
        self.closed = True


async def test_the_request_is_the_binary_event_with_prefer_reply() -> None:
    transport = Scripted(Response(202, "Accepted", [], b""))
    sink = HttpSink("http://receiver/", transport=transport, headers={"X-Site": "north"})
    assert await sink.deliver(EVENT) is None
    ((url, headers, body, max_body),) = transport.requests
    assert (url, body, max_body) == ("http://receiver/", b"x", MAX_RESPONSE_BYTES)
    assert headers["ce-id"] == "1" and headers["prefer"] == "reply"
    assert headers["X-Site"] == "north"
    await sink.close()
    assert not transport.closed  # a transport given to a sink is its owner's to close


async def test_a_reply_comes_back_whatever_the_case_of_its_header_names() -> None:
    reply = CloudEvent({"specversion": "1.0", "id": "r", "source": "/r", "type": "reply"}, b"y")
    headers, body = to_http(reply, "binary")
    shouted = [(name.upper(), value) for name, value in headers.items()]
    sink = HttpSink("http://receiver/", transport=Scripted(Response(200, "OK", shouted, body)))
    assert await sink.deliver(EVENT) == reply


@pytest.mark.parametrize(
    ("answer", "status", "retryable"),
    [
        pytest.param(TransportError("reset by peer"), None, True, id="no-response"),
        pytest.param(Response(503, "Busy", [("Retry-After", "3")], b""), 503, True, id="503"),
        pytest.param(Response(400, "Bad", [], b"no"), 400, False, id="400"),
    ],
)
async def test_failures_are_delivery_errors(
    answer: Response | TransportError, status: int | None, retryable: bool
) -> None:
    sink = HttpSink("http://receiver/", transport=Scripted(answer))
    with pytest.raises(DeliveryError) as info:
        await sink.deliver(EVENT)
    assert (info.value.status, info.value.retryable) == (status, retryable)


async def test_aiohttp_errors_become_transport_errors() -> None:
    transport = AiohttpTransport(new_session(), owned=True)
    try:
        with pytest.raises(TransportError, match="ClientConnectorError"):
            await transport.post(f"http://127.0.0.1:{free_port()}/", {}, b"", 10)  # refused
    finally:
        await transport.close()
    assert transport.session.closed  # owned: closed with the transport
