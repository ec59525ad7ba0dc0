"""Event endpoints of the admin API: live tail (SSE), replay jobs, stream info.

How this works: a tail is a throw-away consumer of a Broker's stream (named
``tail/<random>``, starting at ``latest`` unless asked otherwise) whose
entries are filtered with CESQL and written as server-sent events, one
structured-mode CloudEvent per ``data:`` line; the consumer is deleted when
the client goes away. A replay is a job: a new consumer named ``replay/<id>``
reads from the requested start up to the stream's last offset at the moment
the job was created and delivers each event to a destination under a
DeliverySpec (retries, backoff), reporting progress until it is done. Nothing
here touches the Trigger cursors: replay never re-delivers to subscribers
that did not ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from headwater import cesql
from headwater.api.app import RUNTIME_KEY, error, json_response
from headwater.cloudevents import to_json
from headwater.eventing import Deliverer, DeliverySpec, DeliveryStats, Outcome, Sink
from headwater.log import LogError, Start
from headwater.resources import Destination
from headwater.runtime import Runtime

log = logging.getLogger(__name__)

TAIL_BATCH = 256
TAIL_KEEPALIVE = 15.0
"""Seconds between SSE comments on a quiet stream, so proxies keep the connection."""

MAX_REPLAY_JOBS = 64
"""Finished replay jobs kept for status queries; the oldest finished go first."""

REPLAY_DELIVERY = DeliverySpec(retry=5, backoff_policy="exponential", backoff_delay=0.2)
"""Replay retries a failing destination a few times, then counts the event as failed."""

JOBS_KEY: web.AppKey[dict[str, ReplayJob]] = web.AppKey("replay_jobs", dict)


def _broker_stream(runtime: Runtime, namespace: str, name: str) -> str | None:
    broker = runtime.ingress_lookup(namespace, name)
    return broker.stream if broker is not None else None


def _compile_filter(text: str | None) -> cesql.Expression | None:
    return cesql.compile(text) if text else None


def _start(runtime: Runtime, text: str) -> Start:
    return runtime.start_position(text)


MAX_FILTER_BYTES = 64 * 1024
"""The largest filter the check accepts; real filters are a line or two."""


async def check_filter(request: web.Request) -> web.Response:
    """Whether a CESQL expression compiles; 200 either way, with the parse error if not.

    The dashboard asks before it opens a tail, so that a typo is shown inline
    without a failed request (the tail itself still answers 400 for it).
    """
    if request.content_length is not None and request.content_length > MAX_FILTER_BYTES:
        return error(413, f"request body over {MAX_FILTER_BYTES} bytes")
    try:
        body = await request.json()
    except ValueError:
        return error(400, 'send a JSON object: {"filter": "..."}')
    text = body.get("filter") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return error(400, "`filter` must be a string")
    try:
        cesql.compile(text)
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
        expression = _compile_filter(request.query.get("filter"))
    except cesql.ParseError as exc:
        return error(400, f"invalid filter: {exc}")
    try:
        start = _start(runtime, request.query.get("start", "latest"))
    except ValueError as exc:
        return error(400, str(exc))
    consumer = f"tail/{uuid.uuid4().hex}"
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    reader = runtime.log.reader(stream, consumer, start)
    try:
        await response.write(b": tailing " + stream.encode() + b"\n\n")
        while True:
            batch = await reader.next_batch(TAIL_BATCH, timeout=TAIL_KEEPALIVE)
            if not batch:
                await response.write(b": keepalive\n\n")
                continue
            chunks = []
            for entry in batch:
                if expression is None or expression.matches(entry.event):
                    chunks.append(b"id: %d\ndata: %s\n\n" % (entry.offset, to_json(entry.event)))
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


@dataclass
class ReplayJob:
    id: str
    stream: str
    start: str
    destination: str
    until: int
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    first: int | None = None
    position: int = 0
    done: bool = False
    error: str | None = None
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        total = self.until - (self.first or self.until) + 1 if self.first else 0
        return {
            "id": self.id,
            "stream": self.stream,
            "start": self.start,
            "destination": self.destination,
            "untilOffset": self.until,
            "position": self.position,
            "total": max(total, 0),
            "delivered": self.stats.delivered,
            "failed": self.stats.dropped,
            "done": self.done,
            "error": self.error,
        }


async def _run_replay(runtime: Runtime, job: ReplayJob, start: Start, sink: Sink) -> None:
    deliverer = Deliverer(sink, REPLAY_DELIVERY, destination=job.destination, stats=job.stats)
    consumer = f"replay/{job.id}"
    reader = runtime.log.reader(job.stream, consumer, start)
    try:
        while job.position < job.until:
            batch = await reader.next_batch(TAIL_BATCH, timeout=1.0)
            if not batch:
                info = await runtime.log.info(job.stream)
                if info.last_offset <= job.position or info.first_offset > job.until:
                    break  # nothing more to replay in range (e.g. retention dropped it)
                continue
            for entry in batch:
                if entry.offset > job.until:
                    job.position = job.until
                    break
                if job.first is None:
                    job.first = entry.offset
                outcome = await deliverer.deliver(entry.event)
                if outcome is not Outcome.DELIVERED:
                    log.warning("replay %s: event %s not delivered", job.id, entry.offset)
                job.position = entry.offset
                await reader.ack(entry.offset)
    except LogError as exc:
        job.error = str(exc)
    finally:
        job.done = True
        await reader.close()
        with contextlib.suppress(LogError):
            await runtime.log.delete_consumer(job.stream, consumer)


async def start_replay(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    try:
        body = await request.json()
    except ValueError:
        return error(400, "send a JSON object")
    if not isinstance(body, dict):
        return error(400, "send a JSON object")
    namespace = body.get("namespace", "default")
    name = body.get("broker")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return error(400, "`broker` (and optional `namespace`) must be strings")
    stream = _broker_stream(runtime, namespace, name)
    if stream is None:
        return error(404, f"no running Broker {name!r} in namespace {namespace!r}")
    start_text = body.get("start", "earliest")
    try:
        start = _start(runtime, str(start_text))
        destination = Destination.model_validate(body.get("destination"))
        sink, uri = runtime.resolve_with_uri(destination, namespace)
    except ValueError as exc:
        return error(400, str(exc).splitlines()[0] if str(exc) else "invalid request")
    except LookupError as exc:
        return error(400, str(exc))
    info = await runtime.log.info(stream)
    job = ReplayJob(uuid.uuid4().hex[:12], stream, str(start_text), uri, info.last_offset)
    jobs = request.app[JOBS_KEY]
    _forget_finished(jobs)
    jobs[job.id] = job
    job.task = asyncio.create_task(_run_replay(runtime, job, start, sink), name=f"replay:{job.id}")
    return json_response(job.status(), 202)


def _forget_finished(jobs: dict[str, ReplayJob]) -> None:
    finished = [k for k, j in jobs.items() if j.done]
    while len(jobs) >= MAX_REPLAY_JOBS and finished:
        del jobs[finished.pop(0)]


async def replay_status(request: web.Request) -> web.Response:
    job = request.app[JOBS_KEY].get(request.match_info["id"])
    if job is None:
        return error(404, f"no replay job {request.match_info['id']!r}")
    return json_response(job.status())


async def stream_info(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    stream = _broker_stream(runtime, namespace, name)
    if stream is None:
        return error(404, f"no running Broker {name!r} in namespace {namespace!r}")
    info = await runtime.log.info(stream)
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


async def _cancel_jobs(app: web.Application) -> None:
    for job in app[JOBS_KEY].values():
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job.task


def add_routes(app: web.Application) -> None:
    app[JOBS_KEY] = {}
    app.on_shutdown.append(_cancel_jobs)
    app.router.add_get("/api/v1/brokers/{namespace}/{name}/events", tail)
    app.router.add_post("/api/v1/filters/check", check_filter)
    app.router.add_get("/api/v1/brokers/{namespace}/{name}/stream", stream_info)
    app.router.add_post("/api/v1/replays", start_replay)
    app.router.add_get("/api/v1/replays/{id}", replay_status)
