"""Event endpoints of the admin API: live tail (SSE), replay jobs, stream info.

How this works: a tail is a throw-away consumer of a Broker's stream (named
``tail/<random>``, starting at ``latest`` unless asked otherwise) whose
entries are filtered with CESQL and written as server-sent events, one
structured-mode CloudEvent per ``data:`` line; the consumer is deleted when
the client goes away. ``POST /api/v1/replays`` starts a replay
(:mod:`headwater.runtime.replay`: a job of the runtime's, from the requested
start up to the stream's last offset at that moment, to a destination, with
retries) and answers 202 with its record; ``/api/v1/replays/{id}`` follows it
and cancels it (:mod:`headwater.api.jobs`). Nothing here touches the Trigger
cursors: replay never re-delivers to subscribers that did not ask.

A tail's filter that reads an attribute none of the first events has
(``temprature > 23``) would match nothing, silently: the tail says so once,
as an ``event: warning`` with a suggestion (AbsentAttributes).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import uuid

from aiohttp import web

from headwater import cesql
from headwater.api.http import RUNTIME_KEY, error, json_response, read_json
from headwater.api.jobs import add_job_routes, json_object, max_failures
from headwater.cloudevents import CloudEvent, to_json
from headwater.log import LogError
from headwater.resources import Destination
from headwater.runtime import Runtime
from headwater.runtime.replay import READ_BATCH, new_replay, run_replay, start_position

log = logging.getLogger(__name__)

TAIL_WARN_AFTER = 10
"""Events a tail reads before it warns that its filter reads an attribute none
of them had: enough not to warn when the first event is of another kind, few
enough to say it while someone is still watching."""
TAIL_KEEPALIVE = 15.0
"""Seconds between SSE comments on a quiet stream, so proxies keep the connection."""


def _broker_stream(runtime: Runtime, namespace: str, name: str) -> str | None:
    broker = runtime.ingress_lookup(namespace, name)
    return broker.stream if broker is not None else None


async def _compile_filter(text: str | None) -> cesql.Expression | None:
    # Compiling is bounded (cesql.parser.MAX_LENGTH: about 0.1 s at most) but
    # runs in a thread all the same, so that no request stalls the event loop.
    return await asyncio.to_thread(cesql.compile, text) if text else None


MAX_FILTER_BYTES = 64 * 1024
"""The largest body the filter check reads, however it is sent (chunked or
not); real filters are a line or two, and CESQL refuses expressions longer
than this anyway (cesql.MAX_LENGTH)."""


async def check_filter(request: web.Request) -> web.Response:
    """Whether a CESQL expression compiles; 200 either way, with the parse error if not.

    The dashboard asks before it opens a tail, so that a typo is shown inline
    without a failed request (the tail itself still answers 400 for it).
    """
    try:
        body = await read_json(request, MAX_FILTER_BYTES)
    except ValueError:
        return error(400, 'send a JSON object: {"filter": "..."}')
    text = body.get("filter") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return error(400, "`filter` must be a string")
    try:
        await _compile_filter(text)
    except cesql.ParseError as exc:
        return json_response(
            {"valid": False, "error": str(exc), "line": exc.line, "column": exc.column}
        )
    return json_response({"valid": True, "error": None, "line": None, "column": None})


async def tail(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    stream = _broker_stream(runtime, namespace, name)
    if stream is None:
        return error(404, f"no running Broker {name!r} in namespace {namespace!r}")
    try:
        expression = await _compile_filter(request.query.get("filter"))
    except cesql.ParseError as exc:
        return error(400, f"invalid filter: {exc}")
    try:
        start = start_position(request.query.get("start", "latest"))
    except ValueError as exc:
        return error(400, str(exc))
    consumer = f"tail/{uuid.uuid4().hex}"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    reader = runtime.log.reader(stream, consumer, start)
    absent = AbsentAttributes(expression.attributes) if expression else None
    try:
        await response.write(b": tailing " + stream.encode() + b"\n\n")
        while True:
            batch = await reader.next_batch(READ_BATCH, timeout=TAIL_KEEPALIVE)
            if not batch:
                await response.write(b": keepalive\n\n")
                continue
            chunks = []
            for entry in batch:
                if expression is None or expression.matches(entry.event):
                    chunks.append(b"id: %d\ndata: %s\n\n" % (entry.offset, to_json(entry.event)))
                if absent is not None and (warning := absent.observe(entry.event)) is not None:
                    chunks.append(b"event: warning\ndata: %s\n\n" % warning.encode())
                await reader.ack(entry.offset)
            if chunks:
                await response.write(b"".join(chunks))
    except (ConnectionResetError, LogError) as exc:
        log.debug("tail of %s ended: %s", stream, exc)
    finally:
        await reader.close()
        with contextlib.suppress(LogError):
            await runtime.log.delete_consumer(stream, consumer)
    return response


class AbsentAttributes:
    """Which attributes a filter reads that no event seen so far has; a warning, once."""

    MAX_NAMES = 1024
    """Attribute names remembered for suggestions (events may carry many extensions)."""

    def __init__(self, read: frozenset[str]) -> None:
        self.absent = set(read)
        self.names: set[str] = set()
        self.events = 0
        self.done = not read

    def observe(self, event: CloudEvent) -> str | None:
        """The warning to send after ``event``, at most once per tail."""
        if self.done:
            return None
        self.absent.difference_update([name for name in self.absent if name in event])
        if len(self.names) < self.MAX_NAMES:
            self.names.update(event)
        self.events += 1
        if not self.absent or self.events < TAIL_WARN_AFTER:
            self.done = not self.absent
            return None
        self.done = True
        return "; ".join(self._say(name) for name in sorted(self.absent))

    def _say(self, name: str) -> str:
        # As `headwater cesql` reports it: a MissingAttributeError, which makes
        # a filter false (spec.md 3.2, 1.2).
        text = (
            f"none of the first {self.events} events has the attribute {name!r}: "
            "the filter cannot match them (MissingAttributeError)"
        )
        close = difflib.get_close_matches(name, self.names, n=1)
        return text + (f"; did you mean {close[0]!r}?" if close else "")


async def start_replay(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    namespace = body.get("namespace", "default")
    name = body.get("broker")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return error(400, "`broker` (and optional `namespace`) must be strings")
    stream = _broker_stream(runtime, namespace, name)
    if stream is None:
        return error(404, f"no running Broker {name!r} in namespace {namespace!r}")
    start_text = str(body.get("start", "earliest"))
    try:
        start = start_position(start_text)
        limit = max_failures(body)
        destination = Destination.model_validate(body.get("destination"))
        sink, uri = runtime.destinations.resolve(destination, namespace)
    except ValueError as exc:
        return error(400, str(exc).splitlines()[0] if str(exc) else "invalid request")
    except LookupError as exc:
        return error(400, str(exc))
    try:
        job = await new_replay(runtime.log, stream, start_text, start, uri, max_failures=limit)
    except LogError as exc:
        return error(503, f"the event log cannot be read now: {exc}")
    runtime.replays.start(job, run_replay(runtime.log, job, start, sink))
    return json_response(job.status(), 202)


async def stream_info(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    stream = _broker_stream(runtime, namespace, name)
    if stream is None:
        return error(404, f"no running Broker {name!r} in namespace {namespace!r}")
    try:
        info = await runtime.log.info(stream)
    except LogError as exc:
        return error(503, f"the event log cannot be read now: {exc}")
    return json_response(
        {
            "stream": info.name,
            "firstOffset": info.first_offset,
            "lastOffset": info.last_offset,
            "events": info.events,
            "bytes": info.bytes,
            "dropped": info.dropped,
            "consumers": [
                {"name": c.name, "position": c.position, "lag": c.lag} for c in info.consumers
            ],
        }
    )


def add_routes(app: web.Application, runtime: Runtime) -> None:
    app.router.add_get("/api/v1/brokers/{namespace}/{name}/events", tail)
    app.router.add_post("/api/v1/filters/check", check_filter)
    app.router.add_get("/api/v1/brokers/{namespace}/{name}/stream", stream_info)
    app.router.add_post("/api/v1/replays", start_replay)
    add_job_routes(app, "/api/v1/replays", runtime.replays)
