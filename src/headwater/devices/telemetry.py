"""Telemetry for the dashboard: each device's latest values and the last hour of each number.

How this works: a :class:`TelemetryTracker` reads every running Broker's stream
with a consumer of its own (``dashboard/devices``, recreated at each start,
beginning an hour back, or at most :data:`MAX_BACKFILL` events back). An
event belongs to a device when it names one: the ``device`` extension (a
topic capture of an MQTT source), else a string ``device`` in its JSON data,
else its ``subject``. Each number at the top level of its JSON data (or one
level down, as ``outer.inner``), or the whole data when it is a number, is a
field. A series keeps one point per :data:`BUCKET_SECONDS` (the latest value
in it) for :data:`WINDOW_SECONDS`; devices and fields are capped, so memory is
bounded whatever the devices send: 16 bytes a point, at most twice a window's
worth before a trim, under 40 MiB at the caps.

The tracker starts when the dashboard asks for telemetry and stops with the
application, or after :data:`IDLE_STOP` seconds without anyone asking.
The admin API serves it (:mod:`headwater.api.telemetry`): ``GET
/api/v1/telemetry`` lists devices, ``/api/v1/telemetry/series?device=``
gives a device's points, and ``GET /api/v1/telemetry/events`` pushes, once a
second, what changed since the client's listing, as server-sent events.
A device here is any name events carry, registered or not; the registry
(:mod:`headwater.devices.registry`) knows which of them are devices it manages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, Final

import orjson

from headwater.cloudevents import CloudEvent, is_json_content_type
from headwater.log import EventLog, LogError, Start

log = logging.getLogger(__name__)

WINDOW_SECONDS: Final = 3600.0
"""History kept per series: the dashboard charts the last hour."""

BUCKET_SECONDS: Final = 5.0
"""One point per this many seconds per series (the latest value within it):
720 points an hour, plenty for a chart a few hundred pixels wide."""

MAX_DEVICES: Final = 200
"""Devices tracked at most; later ones are counted in ``untracked`` and not kept."""

MAX_FIELDS: Final = 8
"""Numeric fields kept per device (the first seen); the rest are ignored."""

MAX_BACKFILL: Final = 50_000
"""Events read back from each stream at start, at most (a busy hour can hold
millions; a few seconds of reading is what a dashboard user will wait)."""

IGNORED_FIELDS: Final = frozenset({"seq", "sequence", "ts", "time", "timestamp", "id"})
"""Numbers that count or date readings rather than measure anything."""

IGNORED_TYPES: Final = (
    "dev.headwater.device.",
    "dev.headwater.twin.",
    "dev.headwater.command.",
)
"""Event types (prefixes) that are about devices, not readings from them: the
registry's own records (connects, twin changes, finished commands)."""

PUSH_INTERVAL: Final = 1.0
"""Seconds between pushes of changes to a live client."""

IDLE_STOP: Final = 600.0
"""Seconds without a request or a connected client after which tracking stops
(reading every event costs CPU for nobody); the next request starts it again,
rebuilding the last hour from the log."""

READ_BATCH: Final = 512
SYNC_INTERVAL: Final = 2.0
"""Seconds between checks for Brokers that appeared or went away."""

CONSUMER: Final = "dashboard/devices"


class Series:
    """One field's points, oldest first; a point per bucket, at most a window's worth."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times = array("d")
        self.values = array("d")

    def add(self, t: float, value: float) -> bool:
        """Record a sample; False when it is older than the newest bucket (ignored)."""
        bucket = t - t % BUCKET_SECONDS
        times = self.times
        if times and bucket <= times[-1]:
            if bucket < times[-1]:
                return False
            self.values[-1] = value
            return True
        times.append(bucket)
        self.values.append(value)
        limit = int(WINDOW_SECONDS / BUCKET_SECONDS)
        if len(times) > 2 * limit:  # trim in bulk: amortised O(1) per sample
            del times[:-limit]
            del self.values[:-limit]
        return True

    def points(self, since: float) -> tuple[list[float], list[float]]:
        times = self.times
        lo = 0
        hi = len(times)
        while lo < hi:  # the first bucket at or after `since`
            mid = (lo + hi) // 2
            if times[mid] < since:
                lo = mid + 1
            else:
                hi = mid
        return times[lo:].tolist(), self.values[lo:].tolist()


class SeenDevice:
    __slots__ = ("fields", "name", "updated", "values", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: dict[str, Series] = {}
        self.values: dict[str, float] = {}
        self.updated = 0.0
        self.version = 0

    def summary(self) -> dict[str, Any]:
        return {"device": self.name, "updated": self.updated, "values": dict(self.values)}


def device_of(event: CloudEvent, data: Any) -> str | None:
    name = event.get("device")
    if isinstance(name, str) and name:
        return name
    if isinstance(data, dict) and isinstance(data.get("device"), str) and data["device"]:
        return str(data["device"])
    return event.subject or None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def numeric_fields(event: CloudEvent, data: Any) -> Iterator[tuple[str, float]]:
    whole = _number(data)
    if whole is not None:
        metric = event.get("metric")
        yield (metric if isinstance(metric, str) and metric else "value"), whole
        return
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        if key in IGNORED_FIELDS:
            continue
        number = _number(value)
        if number is not None:
            yield key, number
        elif isinstance(value, dict):
            for inner, deeper in value.items():
                number = _number(deeper)
                if number is not None and inner not in IGNORED_FIELDS:
                    yield f"{key}.{inner}", number


def json_data(event: CloudEvent) -> Any:
    data = event.data
    if isinstance(data, bytes | str) and is_json_content_type(event.datacontenttype):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
    return data


def event_time(event: CloudEvent, received: float) -> float:
    text = event.time
    if text:
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
    return received


class TelemetryTracker:
    """Latest values and recent series per device, fed from the Brokers' streams.

    ``streams`` names the streams to read now (the running Brokers'), asked
    every :data:`SYNC_INTERVAL` seconds; ``node``: this node's name in a mesh.
    """

    def __init__(
        self, log: EventLog, streams: Callable[[], set[str]], *, node: str | None = None
    ) -> None:
        self._log = log
        self._streams = streams
        # In a mesh every node's dashboard reads every event: a cursor per node
        # (a shared one would split the events between the nodes).
        self._consumer = CONSUMER if node is None else f"{CONSUMER}/{node}"
        self.devices: dict[str, SeenDevice] = {}
        self.untracked = 0
        self.version = 0
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._sync: asyncio.Task[None] | None = None
        self.last_used = time.monotonic()
        self.closing = asyncio.Event()
        """Set when the application stops: live clients are let go at once."""

    # -- taking events -----------------------------------------------------------

    def ingest(self, event: CloudEvent, received: float) -> None:
        if event.type.startswith(IGNORED_TYPES):
            return
        data = json_data(event)
        name = device_of(event, data)
        if name is None:
            return
        samples = list(numeric_fields(event, data))
        t = event_time(event, received)
        if not samples or t < received - WINDOW_SECONDS:
            return
        device = self.devices.get(name)
        if device is None:
            if len(self.devices) >= MAX_DEVICES:
                self.untracked += 1
                return
            device = self.devices[name] = SeenDevice(name)
        changed = False
        for field, value in samples:
            series = device.fields.get(field)
            if series is None:
                if len(device.fields) >= MAX_FIELDS:
                    continue
                series = device.fields[field] = Series()
            if series.add(t, value):
                device.values[field] = value
                changed = True
        if changed:
            device.updated = max(device.updated, t)
            self.version += 1
            device.version = self.version

    # -- reading the streams ---------------------------------------------------------

    def start(self) -> None:
        """Start tracking, if not running; every use calls it (it keeps tracking alive)."""
        self.last_used = time.monotonic()
        if self._sync is None and not self.closing.is_set():
            # Owned and cancelled in stop(), which the application's cleanup calls.
            self._sync = asyncio.create_task(self._synchronise(), name="devices:sync")

    async def stop(self) -> None:
        self.closing.set()
        tasks = [t for t in (self._sync, *self._readers.values()) if t is not None]
        self._sync = None
        self._readers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _synchronise(self) -> None:
        while True:
            if time.monotonic() - self.last_used > IDLE_STOP:
                log.debug("device tracking idle for %.0fs: stopping", IDLE_STOP)
                readers = list(self._readers.values())
                self._readers.clear()
                self._sync = None
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                return
            wanted = self._streams()
            for stream, task in list(self._readers.items()):
                if task.done():  # failed: log why, and start it again below
                    del self._readers[stream]
                    if not task.cancelled() and task.exception() is not None:
                        log.error("device tracking of %s failed", stream, exc_info=task.exception())
            for stream in set(self._readers) - wanted:
                self._readers.pop(stream).cancel()
            for stream in wanted - set(self._readers):
                self._readers[stream] = asyncio.create_task(
                    self._read(stream), name=f"devices:{stream}"
                )
            await asyncio.sleep(SYNC_INTERVAL)

    async def _read(self, stream: str) -> None:
        log_ = self._log
        try:
            # A fresh cursor each time: the history is rebuilt from the log.
            with contextlib.suppress(LogError):
                await log_.delete_consumer(stream, self._consumer)
            info = await log_.info(stream)
            if info.events > MAX_BACKFILL:
                start = Start.at_offset(info.last_offset - MAX_BACKFILL + 1)
            else:
                start = Start.at_time(time.time() - WINDOW_SECONDS)
            async with log_.reader(stream, self._consumer, start) as reader:
                while True:
                    batch = await reader.next_batch(READ_BATCH, timeout=1.0)
                    received = time.time()
                    for entry in batch:
                        self.ingest(entry.event, received)
                        await reader.ack(entry.offset)
        except LogError as exc:
            # The Broker went away (or the log did): the next sync starts again.
            log.debug("device tracking of %s stopped: %s", stream, exc)
        finally:
            with contextlib.suppress(LogError):
                await log_.delete_consumer(stream, self._consumer)

    # -- the API's view ------------------------------------------------------------------

    def changes(self, since: int) -> list[dict[str, Any]]:
        """Devices changed after version ``since``: latest values and their newest points."""
        return [
            {
                **device.summary(),
                "points": {
                    field: [series.times[-1], series.values[-1]]
                    for field, series in device.fields.items()
                    if series.times
                },
            }
            for device in self.devices.values()
            if device.version > since
        ]
