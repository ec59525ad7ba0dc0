"""What a Broker and a Channel share: a stream in the log, durable accept, dispatchers.

How this works: ``accept`` appends to the stream and returns once the log
says the events are durable (the only moment an ingress may answer 202).
Each attached Trigger or Subscription runs its own :class:`Dispatcher` in a
supervised task: a dispatcher that fails (the log went away) is restarted
with backoff, and stopping the fan-out cancels every dispatcher, leaving
their unfinished events unacknowledged for the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

from headwater import tracing
from headwater.backoff import Backoff
from headwater.cloudevents import CloudEvent
from headwater.eventing.delivery import (
    Deliverer,
    DeliverySpec,
    DeliveryStats,
    ReplyHandler,
    effective_delivery,
)
from headwater.eventing.dispatcher import DEFAULT_MAX_INFLIGHT, Dispatcher, Ordering
from headwater.eventing.filters import MATCH_ALL, EventFilter
from headwater.eventing.sink import Sink
from headwater.log import DEFAULT_MAX_EVENT_SIZE, LATEST, EventLog, Start, StreamConfig
from headwater.tracing.flows import Ingest, untraced

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING_EVENTS: Final = 10_000
"""Events inside appends that have not returned yet. A SQLite group commit of
this many small events takes tens of milliseconds; past it the log is not
keeping up, and callers get :class:`Saturated` (HTTP 503 with Retry-After)
instead of queueing without bound in memory."""

SATURATED_RETRY_AFTER: Final = 1
"""Seconds a saturated producer is asked to wait (the Retry-After value)."""

READY_TIMEOUT: Final = 5.0
"""How long adding a Trigger/Subscription waits for its cursor to open."""

RESTART_DELAY: Final = (0.1, 5.0)
"""Backoff bounds (seconds) for restarting a dispatcher that failed."""


class Saturated(Exception):
    """Too many events are waiting to be stored; try again after ``retry_after`` seconds."""

    def __init__(self, what: str, retry_after: int = SATURATED_RETRY_AFTER) -> None:
        self.retry_after = retry_after
        super().__init__(f"{what} is saturated; retry after {retry_after}s")


@dataclass(slots=True, eq=False)
class FanoutStats:
    """Counters of a Broker or Channel (its Triggers/Subscriptions have their own)."""

    accepted: int = 0
    saturated: int = 0
    #: Appends that waited for room (a source's backpressure) instead of refusing.
    waited: int = 0
    ttl_dropped: int = 0
    rejected: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "saturated": self.saturated,
            "waited": self.waited,
            "ttlDropped": self.ttl_dropped,
            "rejected": self.rejected,
        }


class Member:
    """What a Trigger and a Subscription share: a subscriber and how to deliver to it.

    ``delivery`` None means "use the Broker's (Channel's)". ``start`` applies
    only when the member's cursor does not exist yet: one created later
    starts at ``LATEST`` unless asked to replay.
    """

    kind: ClassVar[str] = "member"

    def __init__(
        self,
        name: str,
        subscriber: Sink,
        *,
        namespace: str = "default",
        subscriber_uri: str | None = None,
        delivery: DeliverySpec | None = None,
        ordering: Ordering = "unordered",
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        start: Start = LATEST,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.subscriber = subscriber
        self.subscriber_uri = subscriber_uri or getattr(subscriber, "url", None) or repr(subscriber)
        self.delivery = delivery
        self.ordering: Ordering = ordering
        self.max_inflight = max_inflight
        self.start = start
        self.stats = DeliveryStats()

    @property
    def consumer(self) -> str:
        """The durable cursor's name in the Broker's (Channel's) stream."""
        return f"{self.kind}/{self.namespace}/{self.name}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.namespace}/{self.name} -> {self.subscriber_uri})"


M = TypeVar("M", bound=Member)


class Fanout(Generic[M]):
    """A stream plus its dispatchers. Use ``async with`` (or ``start``/``stop``)."""

    kind: str = "fanout"

    def __init__(
        self,
        namespace: str,
        name: str,
        log: EventLog,
        *,
        delivery: DeliverySpec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
        stream: str | None = None,
        retention: StreamConfig | None = None,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.log = log
        self.delivery = delivery
        self.max_event_size = max_event_size
        self.max_pending_events = max_pending_events
        self.stream = stream or f"{self.kind}/{namespace}/{name}"
        self.retention = retention or StreamConfig()
        self.stats = FanoutStats()
        self._pending = 0
        #: Resolved when an append finishes while appends wait for room.
        self._room: asyncio.Future[None] | None = None
        self._members: dict[str, M] = {}
        self._dispatchers: dict[str, Dispatcher] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.namespace}/{self.name})"

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Create the stream if needed and start every dispatcher (once; again after ``stop``)."""
        if self._started:
            return
        await self.log.create_stream(self.stream, self.stream_config())
        self._started = True
        for key, dispatcher in self._dispatchers.items():
            self._launch(key, dispatcher)

    def stream_config(self) -> StreamConfig:
        """The stream's retention, with this fan-out's event size limit."""
        return replace(self.retention, max_event_size=self.max_event_size)

    async def set_retention(self, retention: StreamConfig) -> None:
        """Apply new retention limits to the running stream."""
        self.retention = retention
        if self._started:
            await self.log.create_stream(self.stream, self.stream_config())

    async def drain(self, grace: float) -> bool:
        """Let every dispatcher finish its deliveries under way (up to ``grace`` s).

        Nothing new is read meanwhile; :meth:`stop` afterwards commits cursors.
        Returns whether every dispatcher settled in time.
        """
        dispatchers = list(self._dispatchers.values())
        if not dispatchers:
            return True
        results = await asyncio.gather(*(d.drain(grace) for d in dispatchers))
        return all(results)

    def unfinished(self) -> int:
        """Deliveries under way (or waiting their turn) over every dispatcher."""
        return sum(d.unfinished for d in self._dispatchers.values())

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await _finished(tasks)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- accepting ----------------------------------------------------------------

    async def _append(self, events: Sequence[CloudEvent], *, wait: bool = False) -> list[int]:
        """Append ``events``; past ``max_pending_events`` raise :class:`Saturated`, or
        with ``wait``, wait until appends under way have made room (backpressure:
        an MQTT source stops reading its devices rather than refusing them)."""
        count = len(events)
        if not count:
            return []
        while self._pending and self._pending + count > self.max_pending_events:
            if not wait:
                self.stats.saturated += 1
                raise Saturated(repr(self))
            self.stats.waited += 1
            room = self._room
            if room is None:
                room = self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(room)
        self._pending += count
        ingest: Ingest | None = None
        if tracing.tracer is not None:
            # Events that came without a trace context (a PingSource's, an
            # external broker's) start a trace here; the ingresses gave theirs one.
            events, ingest = untraced(tracing.tracer, events, self.stream)
        try:
            offsets = await self.log.append(self.stream, events)
        except Exception as exc:
            if ingest is not None:
                ingest.end(exc)
            raise
        finally:
            self._pending -= count
            room = self._room
            if room is not None:
                self._room = None
                if not room.done():
                    room.set_result(None)  # every waiter looks again
        if ingest is not None:
            ingest.end()
        self.stats.accepted += len(offsets)
        return offsets

    # -- dispatchers --------------------------------------------------------------

    async def _add(
        self, member: M, on_reply: ReplyHandler | None, event_filter: EventFilter = MATCH_ALL
    ) -> Dispatcher:
        if member.namespace != self.namespace:
            raise ValueError(f"{member!r} is not in the namespace of {self!r}")
        previous = self._members.get(member.name)
        if previous is not None and previous.consumer == member.consumer:
            # An update in place (say, a new filter): same cursor, counters go on.
            member.stats = previous.stats
        deliverer = Deliverer(
            member.subscriber,
            effective_delivery(member.delivery, self.delivery),
            destination=member.subscriber_uri,
            name=f"{type(member).__name__} {member.namespace}/{member.name}",
            stats=member.stats,
            on_reply=on_reply,
        )
        dispatcher = Dispatcher(
            log=self.log,
            stream=self.stream,
            consumer=member.consumer,
            deliverer=deliverer,
            event_filter=event_filter,
            ordering=member.ordering,
            max_inflight=member.max_inflight,
            start=member.start,
        )
        key = member.consumer
        await self._detach(key)
        self._members[member.name] = member
        self._dispatchers[key] = dispatcher
        if self._started:
            self._launch(key, dispatcher)
            # Pin a LATEST cursor before returning, so that what the caller sends
            # next is delivered; bounded, since the log may be down right now.
            try:
                async with asyncio.timeout(READY_TIMEOUT):
                    await dispatcher.wait_ready()
            except TimeoutError:
                log.warning("%s: cursor not open after %gs; starting anyway", key, READY_TIMEOUT)
        return dispatcher

    async def forget_cursor(self, consumer: str) -> None:
        """Delete a member's durable cursor (its member was removed already): one of the
        same name made later starts where its ``start`` says, not where this one was."""
        await self.log.delete_consumer(self.stream, consumer)

    async def _remove(self, name: str, *, forget_cursor: bool) -> None:
        member = self._members.pop(name, None)
        if member is None:
            return
        await self._detach(member.consumer)
        if forget_cursor:
            await self.forget_cursor(member.consumer)

    async def _detach(self, key: str) -> Dispatcher | None:
        dispatcher = self._dispatchers.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
            await _finished([task])
        return dispatcher

    def _launch(self, key: str, dispatcher: Dispatcher) -> None:
        # Owned, named and awaited in stop()/_detach(): each dispatcher lives as
        # long as its Trigger/Subscription, not as long as any caller's scope.
        self._tasks[key] = asyncio.create_task(self._supervise(dispatcher), name=key)

    async def _supervise(self, dispatcher: Dispatcher) -> None:
        delays = Backoff(*RESTART_DELAY)
        while True:
            try:
                await dispatcher.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                dispatcher.stats.failed(f"dispatcher failed: {exc}")
                delay = delays.next()
                log.exception(
                    "%s: dispatcher failed; restarting in %.1fs", dispatcher.consumer, delay
                )
                await asyncio.sleep(delay)

    def dispatchers(self) -> dict[str, Dispatcher]:
        return dict(self._dispatchers)

    def status(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            **self.stats.snapshot(),
            "pending": self._pending,
            "dispatchers": {key: d.status() for key, d in self._dispatchers.items()},
        }


async def _finished(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Wait for cancelled tasks to end. Unlike suppressing CancelledError around
    ``await task``, this lets a cancellation of the caller itself propagate."""
    if tasks:
        await asyncio.wait(tasks)
