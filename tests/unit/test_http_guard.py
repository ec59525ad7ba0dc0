"""The HTTP listener's guard: timeouts, the connection cap, bounded bodies, quiet peers."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from headwater.eventing.ingress import is_ingress_request
from headwater.http_guard import (
    BodyTooLarge,
    ConnectionGuard,
    GuardedSite,
    HttpLimits,
    PeerAborted,
    PeerLogger,
    _writing,
    fit_to_open_files,
    guard_app,
    metric_families,
    peer_log,
    raise_open_files_limit,
    read_body,
)
from tests.helpers import wait_until

EOF_WAIT = 30.0
"""How long a test waits for the server to close a connection before failing:
the event is what is awaited, this only keeps a broken guard from hanging."""


@dataclass
class Served:
    port: int
    guard: ConnectionGuard
    release: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: list[str] = field(default_factory=list)

    async def connect(self, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        if data:
            writer.write(data)
            await writer.drain()
        return reader, writer

    async def get(self, path: str) -> bytes:
        """A whole GET (Connection: close): the answer, headers and body."""
        reader, writer = await self.connect(
            f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        try:
            return await asyncio.wait_for(reader.read(), EOF_WAIT)
        finally:
            writer.close()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), EOF_WAIT)


BIG = 32 * 1024 * 1024  # more than the loopback's socket buffers hold


@asynccontextmanager
async def serve(
    limits: HttpLimits, clock: Callable[[], float] | None = None
) -> AsyncIterator[Served]:
    app = web.Application()
    guard = guard_app(app, limits, data_plane=is_ingress_request, clock=clock)
    served = Served(0, guard)

    async def hold(request: web.Request) -> web.Response:
        await served.release.wait()
        return web.Response(text="released")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ingress(request: web.Request) -> web.Response:
        # As Headwater's handlers do (the Broker ingress, the admin API).
        try:
            body = await read_body(request, 1024 * 1024)
        except BodyTooLarge as exc:
            return web.Response(status=413, text=str(exc))
        except PeerAborted as exc:
            served.aborted.append(str(exc))
            return web.Response(status=400, text=str(exc))
        return web.Response(status=202, text=str(len(body)))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("a bug of ours")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * BIG)

    app.router.add_get("/api/hold", hold)
    app.router.add_get("/api/ok", ok)
    app.router.add_get("/api/boom", boom)
    app.router.add_get("/api/big", big)
    app.router.add_post("/{namespace}/{name}", ingress)
    runner = web.AppRunner(app, access_log=None, logger=PeerLogger(), shutdown_timeout=0.1)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, guard)
    await site.start()
    served.port = runner.addresses[0][1]
    try:
        yield served
    finally:
        served.release.set()
        await runner.cleanup()


LONG = 60.0  # a timeout that must not fire during a test


async def test_partial_headers_get_408_and_are_closed() -> None:
    async with serve(HttpLimits(header_timeout=0.3, body_timeout=LONG, idle_timeout=LONG)) as s:
        reader, writer = await s.connect(b"POST /default/default HTTP/1.1\r\nHost: t\r\nContent-Le")
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert answer.endswith(b"the request headers took too long\n")
        writer.close()
        # A connection that says nothing at all is closed the same way.
        silent, writer = await s.connect()
        assert (await until_closed(silent)).startswith(b"HTTP/1.1 408")
        writer.close()
        assert s.guard.closed["header-timeout"] == 2


@pytest.mark.parametrize(
    "request_start",
    [
        pytest.param(b"Content-Length: 1000\r\n\r\n{", id="content-length-never-filled"),
        pytest.param(
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", id="chunked-without-last-chunk"
        ),
    ],
)
async def test_a_stalled_body_is_cut_off(request_start: bytes) -> None:
    async with serve(HttpLimits(header_timeout=LONG, body_timeout=0.3, idle_timeout=LONG)) as s:
        reader, writer = await s.connect(
            b"POST /default/default HTTP/1.1\r\nHost: t\r\n" + request_start
        )
        assert await until_closed(reader) == b""
        writer.close()
        assert s.guard.closed["body-timeout"] == 1
        # The handler learnt that its body will not come, and no "aborted" line
        # doubles the guard's own.
        await wait_until(lambda: bool(s.aborted))
        assert s.aborted[0].startswith("the request body ended after")


async def test_a_body_that_keeps_moving_is_not_cut_off() -> None:
    # The body timeout is between two reads, not for the whole transfer.
    async with serve(HttpLimits(header_timeout=LONG, body_timeout=2.0, idle_timeout=LONG)) as s:
        reader, writer = await s.connect(
            b"POST /default/default HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\n\r\n"
        )
        for _ in range(30):  # 3 s in all, longer than the timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)
        status = await asyncio.wait_for(reader.readline(), EOF_WAIT)
        assert status.startswith(b"HTTP/1.1 202")
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed() -> None:
    async with serve(HttpLimits(header_timeout=LONG, body_timeout=LONG, idle_timeout=0.3)) as s:
        reader, writer = await s.connect(b"GET /api/ok HTTP/1.1\r\nHost: t\r\n\r\n")
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
        writer.close()
        assert s.guard.closed["idle-timeout"] == 1


async def test_at_the_cap_the_connection_waiting_longest_makes_room() -> None:
    async with serve(HttpLimits(max_connections=4, header_timeout=LONG)) as s:
        waiting = [await s.connect() for _ in range(4)]
        await wait_until(lambda: s.guard.open_connections == 4)
        # A fifth: the first idle one is closed for it, and it is served.
        assert (await s.get("/api/ok")).endswith(b"ok")
        assert await until_closed(waiting[0][0]) == b""
        assert s.guard.closed["evicted"] == 1
        for _, writer in waiting:
            writer.close()


async def test_a_response_still_going_out_is_neither_idle_nor_evicted() -> None:
    now = [0.0]
    limits = HttpLimits(max_connections=2, header_timeout=LONG, idle_timeout=1.0)
    async with serve(limits, clock=lambda: now[0]) as s:
        reader, writer = await s.connect(b"GET /api/big HTTP/1.1\r\nHost: t\r\n\r\n")
        # The handler is done, the response not read: the connection waits to send.
        await wait_until(lambda: bool(s.guard._waiting) and all(map(_writing, s.guard._waiting)))
        s.guard.sweep()  # starts the idle clock
        now[0] += 10 * limits.idle_timeout
        s.guard.sweep()
        assert s.guard.closed["idle-timeout"] == 0
        # At the cap, a new connection takes the slot of the idle one, not of
        # the one still receiving its response.
        idle_reader, idle_writer = await s.connect()
        await wait_until(lambda: s.guard.open_connections == 2)
        assert (await s.get("/api/ok")).endswith(b"ok")
        assert await until_closed(idle_reader) == b""
        assert s.guard.closed["evicted"] == 1
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), EOF_WAIT)
        assert head.startswith(b"HTTP/1.1 200")
        body = await asyncio.wait_for(reader.readexactly(BIG), EOF_WAIT)
        assert len(body) == BIG
        for w in (writer, idle_writer):
            w.close()


async def test_at_the_cap_with_every_connection_in_a_request_new_ones_get_503() -> None:
    async with serve(HttpLimits(max_connections=3)) as s:
        held = [await s.connect(b"GET /api/hold HTTP/1.1\r\nHost: t\r\n\r\n") for _ in range(3)]
        await wait_until(lambda: s.guard.open_connections == 3 and not s.guard._waiting)
        refused, writer = await s.connect()
        answer = await until_closed(refused)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"Retry-After: 1\r\n" in answer
        assert answer.endswith(b"Headwater has 3 HTTP connections open, its limit\n")
        writer.close()
        s.release.set()
        for reader, writer in held:
            assert (await asyncio.wait_for(reader.readline(), EOF_WAIT)).startswith(b"HTTP/1.1 200")
            writer.close()


async def test_data_plane_requests_leave_room_for_the_admin_api() -> None:
    limits = HttpLimits(max_connections=8, body_timeout=LONG)
    assert limits.data_plane_connections == 7
    async with serve(limits) as s:
        stalled = [
            await s.connect(b"POST /ns/b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{")
            for _ in range(7)
        ]
        await wait_until(lambda: s.guard.data_plane_requests == 7)
        reader, writer = await s.connect(
            b"POST /ns/b HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
        )
        answer = await until_closed(reader)
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in answer
        writer.close()
        # The admin API still answers.
        assert (await s.get("/api/ok")).endswith(b"ok")
        for _, writer in stalled:
            writer.close()


async def test_a_chunked_body_is_held_to_the_limit_on_the_bytes_read() -> None:
    async with serve(HttpLimits()) as s:
        reader, writer = await s.connect(
            b"POST /ns/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        try:
            for _ in range(17):  # 1,114,112 bytes: past the handler's 1 MiB
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        except ConnectionError:
            pass  # the server may have stopped reading and closed: that is the point
        status = await asyncio.wait_for(reader.readline(), EOF_WAIT)
        writer.close()
    assert status.startswith(b"HTTP/1.1 413")


async def test_many_aborted_uploads_make_one_line_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = peer_log.total("aborted")
    async with serve(HttpLimits()) as s:
        for _ in range(100):
            _, writer = await s.connect(
                b"POST /ns/b HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"{" * 500
            )
            writer.close()
            await writer.wait_closed()
        await wait_until(lambda: len(s.aborted) == 100)
    assert peer_log.total("aborted") - before == 100
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in records if r.exc_info], "no tracebacks for a peer's doing"
    aborted = [r for r in records if "request body ended" in r.getMessage()]
    assert len(aborted) <= 1
    assert not [r for r in records if r.levelno >= logging.ERROR]


async def test_malformed_requests_make_one_line_and_a_count_but_bugs_keep_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    before = peer_log.total("malformed")
    async with serve(HttpLimits()) as s:
        for garbage in (
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            b"\x16\x03\x01\x00\xa5\x01\r\n\r\n",
        ) * 20:
            reader, writer = await s.connect(garbage)
            assert (await until_closed(reader)).startswith(b"HTTP/1.")  # 400 with a reason
            writer.close()
        assert b"500 Internal Server Error" in await s.get("/api/boom")
    assert peer_log.total("malformed") - before == 40
    peer_lines = [r for r in caplog.records if "malformed request" in r.getMessage()]
    assert len(peer_lines) <= 1 and not any(r.exc_info for r in peer_lines)
    [bug] = [r for r in caplog.records if r.exc_info and r.levelno == logging.ERROR]
    assert "a bug of ours" in str(bug.exc_info[1])  # type: ignore[index]


def test_the_counts_are_metrics() -> None:
    peer_log.warning("aborted", "counted")
    families = {f.name: f for f in metric_families()}
    samples = {s.labels["kind"]: s.value for s in families["headwater_http_peer_errors"].samples}
    assert samples["aborted"] >= 1


def test_the_cli_defaults_are_the_guards() -> None:
    from headwater.cli.up import up

    defaults = {p.name: p.default for p in up.params}
    limits = HttpLimits()
    assert defaults["http_max_connections"] == limits.max_connections
    assert defaults["http_header_timeout"] == limits.header_timeout
    assert defaults["http_body_timeout"] == limits.body_timeout
    assert defaults["http_idle_timeout"] == limits.idle_timeout


def test_the_cap_never_takes_more_than_an_eighth_of_the_open_files(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # MQTT may take three quarters of the descriptors; the last eighth is for
    # the log, deliveries and child processes.
    assert fit_to_open_files(HttpLimits(max_connections=1024), 1024 * 1024).max_connections == 1024
    fitted = fit_to_open_files(HttpLimits(max_connections=1024, body_timeout=5.0), 4096)
    assert (fitted.max_connections, fitted.body_timeout) == (512, 5.0)
    assert "is more than an eighth of the open-files limit (4096): using 512" in caplog.text


def test_the_open_files_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        raised = raise_open_files_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised
        assert raised == (hard if hard != resource.RLIM_INFINITY else 1024 * 1024)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
