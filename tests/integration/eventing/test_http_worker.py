"""The HTTP worker process: requests, cancellation, a crash, a restart and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from headwater.eventing.http_worker import HttpWorker, WorkerGone
from tests.helpers import wait_until

pytestmark = pytest.mark.integration


class Slow:
    """A server whose POST / answers 204 after ``delay`` s; records starts and ends."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = 0
        self.finished = 0
        self.cancelled = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.started += 1
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:  # the client went away (aiohttp cancels the handler)
            self.cancelled += 1
            raise
        self.finished += 1
        return web.Response(status=204)


@pytest.fixture
async def slow() -> AsyncIterator[Slow]:
    server = Slow(delay=30.0)
    app = web.Application(handler_args={"handler_cancellation": True})
    app.router.add_post("/", server.handle)
    async with _serving(app) as base:
        server.url = f"{base}/"
        yield server


@pytest.fixture
async def worker() -> AsyncIterator[HttpWorker]:
    w = HttpWorker()
    yield w
    await w.close()


async def test_a_response_comes_back_whole(worker: HttpWorker) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=201, reason="Made", body=body[::-1], headers={"X-N": "1"})

    app = web.Application()
    app.router.add_post("/echo", echo)
    async with _serving(app) as base:
        response = await worker.post(f"{base}/echo", {"x-a": "b"}, b"\x00abc\xff")
    assert (response.status, response.reason, response.body) == (201, "Made", b"\xffcba\x00")
    assert ("X-N", "1") in response.headers


async def test_no_server_is_no_response(worker: HttpWorker) -> None:
    with pytest.raises(WorkerGone, match=r"cannot connect to 127\.0\.0\.1:9"):
        await worker.post("http://127.0.0.1:9/", {}, b"")


async def test_a_cancelled_request_is_cancelled_in_the_worker(
    worker: HttpWorker, slow: Slow
) -> None:
    attempt = asyncio.create_task(worker.post(slow.url, {}, b"x"))
    await wait_until(lambda: slow.started == 1)
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    # The worker dropped the connection, which cancels the server's handler.
    await wait_until(lambda: slow.cancelled == 1)
    assert slow.finished == 0


async def test_a_crash_fails_what_was_in_flight_and_the_next_request_restarts_it(
    worker: HttpWorker, slow: Slow
) -> None:
    attempts = [asyncio.create_task(worker.post(slow.url, {}, b"")) for _ in range(3)]
    await wait_until(lambda: slow.started == 3)
    assert worker._transport is not None
    os.kill(worker._transport.get_pid(), signal.SIGKILL)
    for attempt in attempts:
        with pytest.raises(WorkerGone, match="exited"):
            await attempt
    assert worker.restarts == 1
    slow.delay = 0
    assert (await worker.post(slow.url, {}, b"")).status == 204  # a new worker


async def test_close_lets_requests_under_way_finish(worker: HttpWorker, slow: Slow) -> None:
    slow.delay = 0.3
    attempt = asyncio.create_task(worker.post(slow.url, {}, b""))
    await wait_until(lambda: slow.started == 1)
    await worker.close()
    assert (await attempt).status == 204
    assert worker._transport is None and worker.restarts == 0
    with pytest.raises(WorkerGone, match="stopped"):
        await worker.post(slow.url, {}, b"")


async def test_many_concurrent_requests_each_get_their_own_response(worker: HttpWorker) -> None:
    async def numbered(request: web.Request) -> web.Response:
        await asyncio.sleep(0.001 * (int(request.headers["n"]) % 7))
        return web.Response(status=200, body=request.headers["n"].encode())

    app = web.Application()
    app.router.add_post("/", numbered)
    async with _serving(app) as base:
        responses = await asyncio.gather(
            *(worker.post(f"{base}/", {"n": str(i)}, b"") for i in range(500))
        )
    assert [r.body for r in responses] == [str(i).encode() for i in range(500)]


@contextlib.asynccontextmanager
async def _serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on an ephemeral loopback port; yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_start_runs_the_process_before_the_first_request(worker: HttpWorker) -> None:
    await worker.start()
    transport = worker._transport
    assert transport is not None and transport.get_returncode() is None
    await worker.start()  # already running: the same process
    assert worker._transport is transport
