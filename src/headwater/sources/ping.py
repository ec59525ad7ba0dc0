"""PingSource: emit a fixed event on a cron schedule (Knative's ``sources.knative.dev/v1``).

How this works: ``PingSchedule`` computes tick times with croniter in the
source's time zone; ``PingSourceRunner.run()`` sleeps until each tick and hands
one event per tick to ``emit`` (a Broker's or Channel's durable append). An
emit failure is logged and counted, and the tick is not retried: like Knative's
adapter, a ping is a heartbeat, not a message to queue. The event follows
Knative's: type ``dev.knative.sources.ping``, source
``/apis/v1/namespaces/{namespace}/pingsources/{name}``, ``time`` = the tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from croniter import croniter

from headwater.cloudevents import NO_DATA, CloudEvent

log = logging.getLogger(__name__)

PING_EVENT_TYPE = "dev.knative.sources.ping"


@dataclass(frozen=True, slots=True)
class PingSchedule:
    """A 5-field cron schedule in a time zone (UTC when none is given)."""

    cron: str
    timezone: str | None = None

    def next_after(self, moment: datetime) -> datetime:
        tz = ZoneInfo(self.timezone) if self.timezone else UTC
        nxt: datetime = croniter(self.cron, moment.astimezone(tz)).get_next(datetime)
        return nxt


class PingSourceRunner:
    """Runs one PingSource until cancelled."""

    def __init__(
        self,
        *,
        namespace: str,
        name: str,
        schedule: PingSchedule,
        emit: Callable[[CloudEvent], Awaitable[object]],
        data: bytes | None = None,
        content_type: str | None = None,
        extensions: Mapping[str, str] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.source = f"/apis/v1/namespaces/{namespace}/pingsources/{name}"
        self._schedule = schedule
        self._emit = emit
        self._data = data
        self._content_type = content_type
        self._extensions = dict(extensions or {})
        self._now = now
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def make_event(self, tick: datetime) -> CloudEvent:
        attributes: dict[str, object] = {
            **self._extensions,
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": self.source,
            "type": PING_EVENT_TYPE,
            "time": tick.astimezone(UTC),
        }
        if self._data is not None and self._content_type:
            attributes["datacontenttype"] = self._content_type
        return CloudEvent(attributes, self._data if self._data is not None else NO_DATA)

    async def tick(self, moment: datetime) -> None:
        """Emit the event of one tick; never raises (failures are counted)."""
        try:
            await self._emit(self.make_event(moment))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a ping must never stop the schedule
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("PingSource %s: could not emit: %s", self.source, self.last_error)
        else:
            self.sent += 1

    async def run(self) -> None:
        while True:
            tick = self._schedule.next_after(self._now())
            await asyncio.sleep(max(0.0, tick.timestamp() - time.time()))
            await self.tick(tick)
