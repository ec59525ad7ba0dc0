"""HTTP deliveries made by a worker process, so that the client work uses a second core.

How this works: an HTTP delivery cost the event loop more than anything
else an event goes through (aiohttp's client request and response handling,
about 70 us of CPU; 60% of the event loop in ``benchmarks/mqtt_to_http.py``,
measured with py-spy), and Headwater is one process under the GIL.
:class:`HttpWorker` starts a child Python process running :func:`main` and
hands it each request over the child's stdin; the child makes the requests
with :class:`~headwater.eventing._http1.Http1Client` (pooled keep-alive
connections, httptools' parser: about 17 us of CPU per POST where aiohttp's
client took 75-95 us) and writes the responses back on its stdout. The
event loop's own cost per delivery falls to about 5-10 us.

Requests and responses are frames: ``struct "!II"`` (head length, body
length), an orjson head, the body. A request's head is
``[id, url, [[name, value], ...]]``; ``[id]`` cancels request ``id`` (its
attempt timed out, or the delivery was cancelled: the worker cancels the
request and closes its connection, as an in-process timeout would). A response's head is
``[id, status, reason, [[name, value], ...]]``, with status 0 when no
response came (the reason says why). Frames written in one pass of the
event loop go out in one write.

What is not done in the worker: everything that decides what a response
means (replies, retries, dead letters) stays with the sink and the
Deliverer. When the worker exits, every request in flight fails as "no
response" (retryable: the event may or may not have arrived, as with a
connection reset) and the next request starts a new worker. The worker
ends when its stdin closes, so it never outlives Headwater.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import sys
from collections.abc import Mapping
from typing import Any, Final, cast

import orjson

from headwater.eventing._http1 import Http1Client
from headwater.eventing.transport import MAX_RESPONSE_BYTES, Response, TransportError

log = logging.getLogger(__name__)

__all__ = ["HttpWorker", "WorkerGone"]

_LENGTHS: Final = struct.Struct("!II")
STOP_TIMEOUT: Final = 5.0
"""Seconds the worker gets to finish its requests once told to stop."""


class WorkerGone(TransportError):
    """The request had no response: the worker could not be started or exited."""


def _frame(head: object, body: bytes) -> bytes:
    encoded = orjson.dumps(head)
    return _LENGTHS.pack(len(encoded), len(body)) + encoded + body


class _Frames:
    """Splits a byte stream into (head, body) frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[Any, bytes]] = []
        start = 0
        size = _LENGTHS.size
        end = len(buffer)
        while end - start >= size:
            head_len, body_len = _LENGTHS.unpack_from(buffer, start)
            body_at = start + size + head_len
            if end < body_at + body_len:
                break
            head = orjson.loads(buffer[start + size : body_at])
            frames.append((head, bytes(buffer[body_at : body_at + body_len])))
            start = body_at + body_len
        del buffer[:start]
        return frames


class _Writer:
    """Coalesces the frames written in one pass of the loop into one write."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self._pending: list[bytes] = []

    def write(self, frame: bytes) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(frame)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if not self.transport.is_closing():
            self.transport.write(b"".join(pending))


# -- the parent's side ----------------------------------------------------------------


class _Responses(asyncio.SubprocessProtocol):
    def __init__(self, worker: HttpWorker) -> None:
        self.worker = worker
        self.frames = _Frames()
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.worker._responses(self.frames.feed(data))
        else:  # the worker's stderr: its own log lines, e.g. a crash
            for line in data.decode(errors="replace").splitlines():
                log.warning("http worker: %s", line)

    def process_exited(self) -> None:
        self.worker._gone(self)
        if not self.exited.done():
            self.exited.set_result(None)


class HttpWorker:
    """POSTs through a worker process; started on first use, restarted after an exit.

    A :class:`~headwater.eventing.transport.DeliveryTransport` as it stands."""

    def __init__(self, pool_size: int | None = None) -> None:
        self.pool_size = pool_size
        self._transport: asyncio.SubprocessTransport | None = None
        self._protocol: _Responses | None = None
        self._writer: _Writer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[Response]] = {}
        self._next_id = 0
        self._closed = False
        self.restarts = 0

    async def post(
        self, url: str, headers: Mapping[str, str], body: bytes, max_body: int = MAX_RESPONSE_BYTES
    ) -> Response:
        """The response to a POST of ``body`` (its body cut a little over ``max_body``, as
        :meth:`Http1Client.post` does); raises :class:`WorkerGone` without one."""
        writer = self._writer
        if writer is None:
            writer = await self._start()
        request_id = self._next_id = self._next_id + 1
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        writer.write(_frame([request_id, url, list(headers.items()), max_body], body))
        try:
            return await future
        except asyncio.CancelledError:
            if writer is self._writer:
                writer.write(_frame([request_id], b""))
            raise
        finally:
            self._waiting.pop(request_id, None)

    async def start(self) -> None:
        """Start the worker now rather than at the first request (which would wait for it)."""
        if self._writer is None:
            await self._start()

    async def _start(self) -> _Writer:
        if self._closed:
            raise WorkerGone("the HTTP worker is stopped")
        if self._starting is None:
            self._starting = asyncio.create_task(self._spawn())
        starting = self._starting
        try:
            await asyncio.shield(starting)
        finally:
            if starting.done():
                self._starting = None
        if self._writer is None:
            raise WorkerGone("the HTTP worker exited at start")
        return self._writer

    async def _spawn(self) -> None:
        # -c, not -m: this module is imported by the package before it could run as __main__.
        code = f"from headwater.eventing.http_worker import main; main({self.pool_size!r})"
        argv = [sys.executable, "-c", code]
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Responses(self), *argv, stdin=-1, stdout=-1, stderr=-1
            )
        except OSError as exc:
            raise WorkerGone(f"the HTTP worker could not start: {exc}") from exc
        # uvloop's pipe transports are not asyncio.WriteTransport subclasses.
        stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        self._transport, self._protocol = transport, protocol
        self._writer = _Writer(stdin)
        log.debug("http worker started (pid %s)", transport.get_pid())

    def _responses(self, frames: list[tuple[Any, bytes]]) -> None:
        waiting = self._waiting
        for (request_id, status, reason, headers), body in frames:
            future = waiting.get(request_id)
            if future is None or future.done():
                continue  # its attempt timed out or was cancelled meanwhile
            if status:
                pairs = [(name, value) for name, value in headers]
                future.set_result(Response(status, reason, pairs, body))
            else:
                future.set_exception(WorkerGone(reason))

    def _gone(self, protocol: _Responses) -> None:
        if protocol is not self._protocol:
            return
        code = self._transport.get_returncode() if self._transport is not None else None
        self._transport = self._protocol = self._writer = None
        waiting = list(self._waiting.values())
        self._waiting.clear()
        if not self._closed:
            self.restarts += 1
            log.error("http worker exited (code %s); %d requests failed", code, len(waiting))
        for future in waiting:
            if not future.done():
                future.set_exception(WorkerGone(f"the HTTP worker exited (code {code})"))

    async def close(self) -> None:
        """Let the worker finish what it is doing (up to a few seconds), then stop it."""
        self._closed = True
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await self._starting
        transport, protocol = self._transport, self._protocol
        if transport is None or protocol is None:
            return
        stdin = transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()  # EOF: the worker answers what it has, then exits
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await protocol.exited
        except TimeoutError:
            transport.kill()
            await protocol.exited
        transport.close()


# -- the worker's side ----------------------------------------------------------------


class _Requests(asyncio.Protocol):
    def __init__(self, serve: Any) -> None:
        self.frames = _Frames()
        self.serve = serve
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        for head, body in self.frames.feed(data):
            self.serve(head, body)

    def eof_received(self) -> bool:
        if not self.eof.done():
            self.eof.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


async def _serve(pool_size: int | None) -> None:
    loop = asyncio.get_running_loop()
    client = Http1Client() if pool_size is None else Http1Client(pool_size)
    write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, sys.stdout.buffer)
    writer = _Writer(write_transport)
    tasks: dict[int, asyncio.Task[None]] = {}

    async def request(
        request_id: int, url: str, headers: dict[str, str], body: bytes, max_body: int
    ) -> None:
        try:
            status, reason, response_headers, payload = await client.post(
                url, headers, body, max_body
            )
            # Framed here too: whatever cannot be framed is answered as a failure.
            frame = _frame([request_id, status, reason, response_headers], payload)
        except Exception as exc:  # refused, reset, malformed HTTP, a bad URL: no response
            reason = f"{type(exc).__name__}: {exc}".encode(errors="replace").decode()
            frame = _frame([request_id, 0, reason, []], b"")
        finally:
            tasks.pop(request_id, None)
        writer.write(frame)

    def serve(head: list[Any], body: bytes) -> None:
        if len(head) == 1:  # a cancellation
            task = tasks.get(head[0])
            if task is not None:
                task.cancel()
            return
        request_id, url, headers, max_body = head
        tasks[request_id] = loop.create_task(
            request(request_id, url, dict(headers), body, max_body)
        )

    protocol = _Requests(serve)
    await loop.connect_read_pipe(lambda: protocol, sys.stdin.buffer)
    await protocol.eof
    if tasks:
        await asyncio.wait(list(tasks.values()), timeout=STOP_TIMEOUT)
    await client.close()
    await asyncio.sleep(0)  # the last responses' flush
    write_transport.close()


def main(pool_size: int | None = None) -> None:
    """The worker process: serve requests from stdin until it closes."""
    import signal

    import uvloop

    # Its life is its parent's: it ends when its stdin closes (the parent stopped
    # it, or died). Ctrl-C in a terminal, or a service manager signalling the
    # whole group, must not end it while the parent drains its deliveries.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    uvloop.run(_serve(pool_size))
