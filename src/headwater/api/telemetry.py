"""Telemetry for the dashboard over HTTP: devices seen in events, their latest values and series.

How this works: thin handlers over :class:`~headwater.devices.telemetry.TelemetryTracker`
(which reads the Brokers' streams; see there). ``GET /api/v1/telemetry``
lists devices, ``/api/v1/telemetry/series?device=`` gives a device's points,
and ``GET /api/v1/telemetry/events`` pushes, once a second, what changed
since the client's listing, as server-sent events. The registry's devices
are :mod:`headwater.api.devices`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time

import orjson
from aiohttp import web

from headwater.api.http import error, json_response
from headwater.devices.telemetry import (
    BUCKET_SECONDS,
    PUSH_INTERVAL,
    WINDOW_SECONDS,
    TelemetryTracker,
)
from headwater.runtime import Runtime

TRACKER_KEY: web.AppKey[TelemetryTracker] = web.AppKey("telemetry_tracker")


def _tracker(request: web.Request) -> TelemetryTracker:
    tracker = request.app[TRACKER_KEY]
    tracker.start()
    return tracker


async def list_devices(request: web.Request) -> web.Response:
    tracker = _tracker(request)
    devices = sorted(tracker.devices.values(), key=lambda d: d.name)
    return json_response(
        {
            "devices": [{**d.summary(), "fields": sorted(d.fields)} for d in devices],
            "untracked": tracker.untracked,
            "windowSeconds": WINDOW_SECONDS,
            "bucketSeconds": BUCKET_SECONDS,
            "version": tracker.version,
        }
    )


async def device_series(request: web.Request) -> web.Response:
    tracker = _tracker(request)
    name = request.query.get("device")
    if not name:
        return error(400, "say which device: ?device=NAME")
    device = tracker.devices.get(name)
    if device is None:
        return error(404, f"no device {name!r} in the last hour")
    text = request.query.get("since")
    now = time.time()
    since = now - WINDOW_SECONDS
    if text is not None:
        try:
            since = float(text)
        except ValueError:
            return error(400, f"`since` must be seconds since the epoch, not {text!r}")
        if not math.isfinite(since):
            return error(400, f"`since` must be a finite number, not {text!r}")
    series = {}
    for field, points in sorted(device.fields.items()):
        times, values = points.points(since)
        series[field] = {"t": times, "v": values}
    return json_response({**device.summary(), "series": series})


async def device_events(request: web.Request) -> web.StreamResponse:
    """Changes after ``since`` (the ``version`` of the client's listing; default: now)."""
    tracker = _tracker(request)
    text = request.query.get("since")
    seen = tracker.version
    if text is not None:
        if not (text.isascii() and text.isdigit()):
            return error(400, f"`since` must be a version from the device list, not {text!r}")
        seen = min(int(text), tracker.version)
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    try:
        await response.write(b": devices\n\n")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tracker.closing.wait(), PUSH_INTERVAL)
            if tracker.closing.is_set():
                break
            tracker.start()  # a connected client keeps tracking alive
            changed = tracker.changes(seen)
            seen = tracker.version
            if changed:
                body = orjson.dumps({"devices": changed, "untracked": tracker.untracked})
                await response.write(b"data: " + body + b"\n\n")
            else:
                await response.write(b": keepalive\n\n")
    except ConnectionResetError:
        pass
    return response


async def _stop_tracker(app: web.Application) -> None:
    await app[TRACKER_KEY].stop()


def broker_streams(runtime: Runtime) -> set[str]:
    """The streams of the running Brokers: what the tracker reads."""
    streams = set()
    for resource in runtime.resources("Broker"):
        broker = runtime.ingress_lookup(resource.namespace, resource.name)
        if broker is not None:
            streams.add(broker.stream)
    return streams


def add_routes(app: web.Application, runtime: Runtime) -> None:
    app[TRACKER_KEY] = TelemetryTracker(
        runtime.log, functools.partial(broker_streams, runtime), node=runtime.node
    )
    app.on_shutdown.append(_stop_tracker)
    app.router.add_get("/api/v1/telemetry", list_devices)
    app.router.add_get("/api/v1/telemetry/events", device_events)
    app.router.add_get("/api/v1/telemetry/series", device_series)
