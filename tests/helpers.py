"""What many tests share: waiting for a condition, and an HTTP CloudEvents receiver.

``wait_until`` (in a coroutine) and ``wait_until_blocking`` (in a thread or a
synchronous test) poll state that has no event of their own to await (a
counter another task or process updates) until it holds, and fail with what
was awaited after ``within`` seconds: a bound generous enough for a loaded
machine, never a measure of speed.

:class:`Receiver` is a subscriber on an ephemeral loopback port that records
every request (headers, body, the CloudEvent in it, the peer) and answers
what the test sets: a ``status`` (a web server's HTML for errors), or an
``answer`` function (which may wait); ``hold`` keeps requests waiting until
``release``. It serves in the test's event loop (``async with
Receiver.serving() as r``) or on a thread of its own for a Headwater in
another process and a synchronous test (``with Receiver.in_thread() as r``);
either way ``await r.wait_for(n)`` and ``r.wait_for_blocking(n)`` return once
``n`` requests were answered with a 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from headwater.cloudevents import CloudEvent, from_http

WAIT = 30.0
"""Seconds a test waits for what it expects before it fails."""

POLL = 0.01
"""Seconds between two looks at polled state."""

LOOPBACK = "127.0.0.1"


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = WAIT, what: str = ""
) -> None:
    """Return once ``condition()`` (a function or a coroutine function) is true."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:g} s: {what or condition}")
        await asyncio.sleep(POLL)


def wait_until_blocking(
    condition: Callable[[], Any], within: float = WAIT, what: str = "", every: float = POLL
) -> Any:
    """Return ``condition()``'s value once it is true (blocking: threads, processes);
    ``every``: seconds between two looks, for a condition that is costly to ask."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within:g} s: {what or condition}")
        time.sleep(every)


@dataclass(frozen=True)
class Request:
    """One request a :class:`Receiver` was sent."""

    method: str
    path: str
    headers: CIMultiDict[str]
    body: bytes
    peer: Any
    event: CloudEvent | None
    """The CloudEvent in it (None if it is not one, or a batch)."""

    @property
    def id(self) -> str:
        return self.headers.get("ce-id") or (self.event.id if self.event is not None else "")


Answer = tuple[int, dict[str, str], bytes]
AnswerFn = Callable[[Request], Answer | Awaitable[Answer]]


@dataclass(eq=False)
class Receiver:
    """An HTTP CloudEvents subscriber; see the module docstring."""

    status: int = 202
    error_body: bytes = b"<html>not now</html>"
    """What a ``status`` of 300 and above is answered with (as a web server would: HTML)."""
    answer: AnswerFn | None = None
    ssl_context: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    """Every request, in the order they arrived."""
    accepted: list[CloudEvent] = field(default_factory=list)
    """The events of the requests answered with a 2xx."""
    url: str = ""
    port: int = 0
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)
    _released: threading.Event = field(default_factory=threading.Event)
    _held: bool = False

    # -- what the test sets ------------------------------------------------------------

    def hold(self) -> None:
        """Keep each request that arrives from now on waiting until :meth:`release`."""
        self._released.clear()
        self._held = True

    def release(self) -> None:
        self._held = False
        self._released.set()

    # -- what the test reads -----------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """The ``ce-id`` of every request, in order (failed attempts included)."""
        with self._lock:
            return [r.id for r in self.requests]

    @property
    def accepted_ids(self) -> list[str]:
        with self._lock:
            return [e.id for e in self.accepted]

    async def wait_for(self, count: int, within: float = WAIT) -> list[CloudEvent]:
        """The accepted events once there are ``count`` (fails after ``within``)."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        with self._lock:
            self._waiters.append((loop, changed))
        try:
            async with asyncio.timeout(within):
                while len(self.accepted) < count:
                    await changed.wait()
                    changed.clear()
        except TimeoutError:
            raise AssertionError(
                f"{len(self.accepted)} of {count} events within {within:g} s"
            ) from None
        finally:
            with self._lock:
                self._waiters.remove((loop, changed))
        with self._lock:
            return list(self.accepted)

    def wait_for_blocking(self, count: int, within: float = WAIT) -> list[CloudEvent]:
        """As :meth:`wait_for`, blocking (for a synchronous test)."""
        with self._lock:
            reached = self._lock.wait_for(lambda: len(self.accepted) >= count, within)
            assert reached, f"{len(self.accepted)} of {count} events within {within:g} s"
            return list(self.accepted)

    def wait_for_requests(self, count: int, within: float = WAIT) -> list[str]:
        """The ids of every request once ``count`` arrived, answered or not (blocking)."""
        with self._lock:
            reached = self._lock.wait_for(lambda: len(self.requests) >= count, within)
            assert reached, f"{len(self.requests)} of {count} requests within {within:g} s"
            return [r.id for r in self.requests]

    # -- serving -----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            decoded = from_http(request.headers.items(), body)
        except Exception:  # not a CloudEvent (InvalidEvent, or garbage): recorded all the same
            decoded = None
        received = Request(
            request.method,
            request.path,
            request.headers.copy(),
            body,
            request.transport.get_extra_info("peername") if request.transport else None,
            decoded if isinstance(decoded, CloudEvent) else None,
        )
        self._record(received, accepted=False)
        if self._held:
            await asyncio.get_running_loop().run_in_executor(None, self._released.wait, WAIT * 2)
        if self.answer is not None:
            answer = self.answer(received)
            status, headers, payload = await answer if inspect.isawaitable(answer) else answer
        else:
            status = self.status
            headers = {} if status < 300 else {"Content-Type": "text/html"}
            payload = b"" if status < 300 else self.error_body
        if 200 <= status < 300 and received.event is not None:
            self._record(received, accepted=True)
        return web.Response(status=status, headers=headers, body=payload)

    def _record(self, request: Request, *, accepted: bool) -> None:
        with self._lock:
            if accepted:
                assert request.event is not None
                self.accepted.append(request.event)
            else:
                self.requests.append(request)
            self._lock.notify_all()
            waiters = list(self._waiters)
        for loop, changed in waiters:
            loop.call_soon_threadsafe(changed.set)

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = runner.addresses[0][1]
        scheme = "https" if self.ssl_context is not None else "http"
        self.url = f"{scheme}://{LOOPBACK}:{self.port}/"
        return runner

    @classmethod
    @contextlib.asynccontextmanager
    async def serving(cls, **options: Any) -> AsyncIterator[Receiver]:
        """A receiver in the running event loop, stopped on leaving."""
        receiver = cls(**options)
        runner = await receiver._start()
        try:
            yield receiver
        finally:
            receiver.release()
            await runner.cleanup()

    @classmethod
    @contextlib.contextmanager
    def in_thread(cls, **options: Any) -> Iterator[Receiver]:
        """A receiver with an event loop on a thread of its own, stopped on leaving."""
        receiver = cls(**options)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="receiver", daemon=True)
        thread.start()
        try:
            runner = asyncio.run_coroutine_threadsafe(receiver._start(), loop).result(WAIT)
            try:
                yield receiver
            finally:
                receiver.release()
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(WAIT)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(WAIT)
            loop.close()
