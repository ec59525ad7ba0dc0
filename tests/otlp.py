"""A real OTLP/HTTP trace receiver for tests, decoding what the exporter sends.

How this works: an aiohttp server on a loopback ephemeral port answers
``POST /v1/traces`` as an OpenTelemetry Collector does (OTLP/HTTP,
``application/x-protobuf``, gzip or deflate Content-Encoding): it decodes
the body as an ``ExportTraceServiceRequest`` with ``opentelemetry-proto`` and
answers an ``ExportTraceServiceResponse``. What it received is kept as
:class:`ReceivedSpan` values (ids in hex, attributes as Python values).
Anything else gets the status a collector gives: 404 for another path,
415 for another content type, 400 for a body that is not the message.

``async with OtlpReceiver() as otlp`` serves on the test's loop;
:func:`threaded_receiver` serves from a thread of its own, for a test that
runs ``headwater up`` as a process and waits synchronously.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Self

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

WAIT: Final = 30.0
"""Seconds a test waits for spans to arrive."""

KINDS: Final = dict(
    enumerate(("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"))
)


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start: int
    end: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: int  # 0 unset, 1 ok, 2 error
    status_message: str
    trace_state: str
    resource: dict[str, Any] = field(default_factory=dict)
    flags: int = 0

    @property
    def parent_is_remote(self) -> bool:
        """OTLP's SPAN_FLAGS_CONTEXT_IS_REMOTE (bit 9) and its "known" bit (8)."""
        return self.flags & 0x300 == 0x300


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which) if which else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class OtlpReceiver:
    """Collects the spans of every export request; ``spans`` in arrival order."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.refused: list[int] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def url(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``--otlp-endpoint`` take it."""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path != "/v1/traces" or request.method != "POST":
            self.refused.append(404)
            return web.Response(status=404, text="only POST /v1/traces")
        if request.content_type != "application/x-protobuf":
            self.refused.append(415)
            return web.Response(status=415, text=f"unsupported {request.content_type}")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            message = ExportTraceServiceRequest.FromString(body)
        except (DecodeError, OSError, zlib.error) as exc:
            self.refused.append(400)
            return web.Response(status=400, text=f"not an ExportTraceServiceRequest: {exc}")
        received = [
            ReceivedSpan(
                trace_id=span.trace_id.hex(),
                span_id=span.span_id.hex(),
                parent_span_id=span.parent_span_id.hex(),
                name=span.name,
                kind=KINDS.get(span.kind, str(span.kind)),
                start=span.start_time_unix_nano,
                end=span.end_time_unix_nano,
                attributes=_attributes(span.attributes),
                events=[(e.name, _attributes(e.attributes)) for e in span.events],
                status=span.status.code,
                status_message=span.status.message,
                trace_state=span.trace_state,
                resource=_attributes(resource_spans.resource.attributes),
                flags=span.flags,
            )
            for resource_spans in message.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        assert self._changed is not None
        async with self._changed:
            self.requests += 1
            self.spans.extend(received)
            self._changed.notify_all()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in self.spans if span.trace_id == trace_id]

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], within: float = WAIT
    ) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds (``TimeoutError`` after ``within``)."""
        assert self._changed is not None
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self.spans))
        return list(self.spans)

    def wait_for_sync(
        self, predicate: Callable[[list[ReceivedSpan]], bool], within: float = WAIT
    ) -> list[ReceivedSpan]:
        """:meth:`wait_for` from another thread than the receiver's."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self.wait_for(predicate, within), self._loop)
        return future.result(within + 5)


@contextmanager
def threaded_receiver() -> Iterator[OtlpReceiver]:
    """An :class:`OtlpReceiver` serving from a thread with its own event loop."""
    receiver = OtlpReceiver()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with receiver:
            started.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert started.wait(WAIT), "the OTLP receiver did not start"
    try:
        yield receiver
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(WAIT)
        loop.close()


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [
        s for s in spans if s.parent_span_id == parent.span_id and s.trace_id == parent.trace_id
    ]


def one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, [s.name for s in spans])
    return found[0]
