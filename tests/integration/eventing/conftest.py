"""Real HTTP servers on loopback for the eventing integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from headwater.cloudevents import CloudEvent, to_http
from tests.helpers import Answer, Receiver, Request

Behaviour = Callable[[CloudEvent, Receiver], Answer]


def accept(event: CloudEvent, receiver: Receiver) -> Answer:
    return 202, {}, b""


def reply_with(event: CloudEvent, mode: str = "binary") -> Answer:
    headers, body = to_http(event, "binary" if mode == "binary" else "structured")
    return 200, headers, body


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[StartReceiver]:
    """``await receiver(behaviour)`` starts a Receiver on an ephemeral loopback port;
    ``behaviour(event, receiver)`` answers each event."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(behaviour: Behaviour = accept) -> Receiver:
            r: Receiver = await stack.enter_async_context(Receiver.serving())

            def answer(request: Request) -> Answer:
                assert request.event is not None, f"not a CloudEvent: {request.body[:80]!r}"
                return behaviour(request.event, r)

            r.answer = answer
            return r

        yield start
