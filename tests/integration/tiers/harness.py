"""Two tiers in one test: Headwater runtimes with their HTTP listener, and fake receivers.

How this works: a :class:`Tier` is a :class:`~headwater.runtime.Runtime` on
its own log with the admin API, the Broker ingress and the edges' pull
endpoint served on a loopback port, as ``headwater up`` serves them. It can
be stopped and started again on the same port (a cloud going away and coming
back). A :class:`Receiver` is a CloudEvents endpoint whose answers a test
scripts (refusals, outages, a Knative Broker that takes no batches), and that
records every event it accepted, in arrival order, with how it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from headwater.api import create_app
from headwater.cloudevents import BATCH_CONTENT_TYPE, CloudEvent, from_http
from headwater.eventing import Ingress
from headwater.log import EventLog, MemoryLog, SqliteLog
from headwater.runtime import Runtime

LOOPBACK = "127.0.0.1"


def reading(i: int, device: str = "d1", **extensions: Any) -> CloudEvent:
    """A telemetry event: ``seq`` in the data lets a test check order per device."""
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": f"{device}-{i}",
            "source": "/greenhouse",
            "subject": device,
            "type": "dev.headwater.telemetry",
            "datacontenttype": "application/json",
            **extensions,
        },
        {"seq": i, "temperature": 20 + i % 7, "humidity": 55},
    )


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait for state that other tasks change; fails the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


class Tier:
    """A Headwater runtime and its HTTP listener, which can go away and come back."""

    def __init__(self, log: EventLog | None = None, port: int = 0) -> None:
        self.runtime = Runtime(log if log is not None else MemoryLog())
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(self) -> None:
        app = create_app(self.runtime)
        Ingress(self.runtime.ingress_lookup).add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, self.port, reuse_address=True)
        await site.start()
        self.port = runner.addresses[0][1]
        self.runtime.listeners["http"] = self.url
        self._runner = runner

    async def unserve(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def apply(self, text: str) -> None:
        await self.runtime.apply_text(text, "test.yaml")

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.runtime.status((kind, "default", name))

    async def events(self, broker: str = "default") -> list[CloudEvent]:
        """Every event the Broker's stream holds, in order."""
        stream = self.runtime.broker("default", broker).stream
        log = self.runtime.log
        info = await log.info(stream)
        found: list[CloudEvent] = []
        if info.events == 0:
            return found
        from headwater.log import Start

        reader = log.reader(
            stream, f"test/{time.monotonic_ns()}", Start.at_offset(info.first_offset)
        )
        try:
            while len(found) < info.events:
                batch = await reader.next_batch(1000, timeout=1.0)
                if not batch:
                    break
                found += [entry.event for entry in batch]
        finally:
            await reader.close()
            await log.delete_consumer(stream, reader.consumer)
        return found

    async def close(self) -> None:
        await self.unserve()
        await self.runtime.close()


async def sqlite_tier(path: Path, port: int = 0) -> Tier:
    return Tier(await SqliteLog.open(path, durability="normal"), port)


BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
"""


def uplink_yaml(uri: str, **spec: Any) -> str:
    """An Uplink from Broker `default` to ``uri`` (spec fields as JSON-ish YAML)."""
    import json

    fields = {
        "broker": "default",
        "start": "earliest",
        "sink": {"uri": uri},
        "delivery": {"backoffDelay": "PT0.05S", "backoffMax": "PT0.2S", "timeout": "PT5S"},
        **spec,
    }
    return (
        "apiVersion: sources.headwater.dev/v1alpha1\nkind: Uplink\nmetadata: {name: up}\n"
        f"spec: {json.dumps(fields)}\n"
    )


Script = Callable[
    [web.Request, list[CloudEvent]], Awaitable[web.Response | None] | web.Response | None
]


@dataclass
class Receiver:
    """A CloudEvents HTTP endpoint that records what it accepted.

    ``script(request, events)`` may answer instead of the default 202 (return
    None to accept). ``batches=False`` plays a receiver without the batched
    mode (a Knative Broker): OPTIONS is not allowed and a batch is a 400.
    """

    script: Script | None = None
    batches: bool = True
    gzip: bool = True
    accepted: list[CloudEvent] = field(default_factory=list)
    requests: list[tuple[str, str, int]] = field(default_factory=list)
    """(content type, content encoding, events) of every POST."""
    port: int = 0
    tls: ssl.SSLContext | None = None
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{self.port}/default/default"

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/default/default", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, LOOPBACK, self.port, reuse_address=True, ssl_context=self.tls
        )
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method == "OPTIONS":
            if not self.batches:
                return web.Response(status=405)
            headers = {"Allow": "POST, OPTIONS", "Accept-Post": f"{BATCH_CONTENT_TYPE}, */*"}
            if self.gzip:
                headers["Accept-Encoding"] = "gzip"
            return web.Response(status=200, headers=headers)
        body = await request.read()
        if request.content_type == BATCH_CONTENT_TYPE and not self.batches:
            return web.Response(status=400, text="batches are not supported")
        try:
            decoded = from_http(request.headers.items(), body)
        except Exception as exc:
            return web.Response(status=400, text=f"bad event: {exc}")
        events = decoded if isinstance(decoded, list) else [decoded]
        self.requests.append(
            (request.content_type, request.headers.get("Content-Encoding", ""), len(events))
        )
        if self.script is not None:
            answer = self.script(request, events)
            if asyncio.iscoroutine(answer):
                answer = await answer
            if answer is not None:
                return answer  # type: ignore[return-value]
        self.accepted.extend(events)
        return web.Response(status=202)

    def ids(self) -> list[str]:
        return [event.id for event in self.accepted]


def check_order(events: Sequence[CloudEvent]) -> Counter[str]:
    """Assert that each device's first deliveries come in ``seq`` order; the duplicates per id."""
    seen: Counter[str] = Counter(event.id for event in events)
    last: dict[str, int] = defaultdict(lambda: -1)
    firsts: set[str] = set()
    for event in events:
        if event.id in firsts:
            continue
        firsts.add(event.id)
        device = str(event.subject)
        data = event.data
        seq = (orjson.loads(data) if isinstance(data, bytes) else data)["seq"]
        assert seq > last[device], f"{device}: {seq} after {last[device]}"
        last[device] = seq
    return Counter({i: n - 1 for i, n in seen.items() if n > 1})


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver) -> Any:
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def gunzip_if(body: bytes, encoding: str) -> bytes:
    return gzip.decompress(body) if encoding == "gzip" else body
