"""Real HTTP servers on loopback for the eventing integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDict

from headwater.cloudevents import CloudEvent, from_http, to_http
from headwater.eventing import IngressServer

Answer = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[CloudEvent, "Receiver"], Answer]


def accept(event: CloudEvent, receiver: Receiver) -> Answer:
    return 202, {}, b""


@dataclass
class Receiver:
    """An HTTP CloudEvents receiver: records what it accepted and how it was sent."""

    behaviour: Behaviour = accept
    accepted: list[CloudEvent] = field(default_factory=list)
    attempts: int = 0
    requests: list[CIMultiDict[str]] = field(default_factory=list)
    peers: set[object] = field(default_factory=set)
    url: str = ""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts += 1
        self.requests.append(request.headers.copy())
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        event = from_http(request.headers.items(), body)
        assert isinstance(event, CloudEvent)
        status, headers, payload = self.behaviour(event, self)
        if 200 <= status < 300:
            async with self.changed:
                self.accepted.append(event)
                self.changed.notify_all()
        return web.Response(status=status, headers=headers, body=payload)

    async def wait_for(self, count: int, within: float = 20.0) -> list[CloudEvent]:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: len(self.accepted) >= count)
        return self.accepted


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a counter that is updated just after the receiver saw the request."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def reply_with(event: CloudEvent, mode: str = "binary") -> Answer:
    headers, body = to_http(event, "binary" if mode == "binary" else "structured")
    return 200, headers, body


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def receiver() -> AsyncIterator[StartReceiver]:
    """``await receiver(behaviour)`` starts a Receiver on an ephemeral loopback port."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(behaviour: Behaviour = accept) -> Receiver:
            r = Receiver(behaviour)
            app = web.Application()
            app.router.add_post("/", r.handle)
            server = await stack.enter_async_context(IngressServer(app))
            r.url = server.url + "/"
            return r

        yield start
