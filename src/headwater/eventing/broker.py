"""The Broker: durable accept, the TTL loop guard, and one dispatcher per Trigger.

How this works: :meth:`Broker.accept` (used by sources in-process and by the
HTTP ingress) stamps the ``knativebrokerttl`` extension on events that lack
it and appends them to the Broker's stream; it returns only when they are
durable. Every Trigger reads that stream through its own cursor, evaluates
its filter once per event and delivers matches under its DeliverySpec (the
Trigger's, or else the Broker's, as a whole). A reply from a subscriber goes
back through :meth:`accept` with the TTL of the event that caused it minus
one, and is dropped (counted, logged) when that reaches zero, which ends
reply loops. The Broker never changes ``data``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from headwater.cloudevents import CloudEvent
from headwater.eventing._fanout import DEFAULT_MAX_PENDING_EVENTS, Fanout, Saturated
from headwater.eventing.delivery import DeliverySpec
from headwater.eventing.dispatcher import Dispatcher
from headwater.eventing.trigger import Trigger
from headwater.log import DEFAULT_MAX_EVENT_SIZE, EncodedEvents, EventLog, StreamConfig
from headwater.logs import Throttle
from headwater.tracing.flows import log_fields

__all__ = ["DEFAULT_TTL", "TTL_EXTENSION", "Broker", "Saturated"]

log = logging.getLogger(__name__)

_expired = Throttle(log)
"""Events dropped for their TTL (a reply loop drops one per turn): a line a minute per Broker."""

TTL_EXTENSION: Final = "knativebrokerttl"
DEFAULT_TTL: Final = 255
"""Knative's default: an event may be re-enqueued as a reply this many times."""


def event_ttl(event: CloudEvent) -> int | None:
    """The event's ``knativebrokerttl`` as an integer; None when absent or not a number."""
    value = event.get(TTL_EXTENSION)
    if type(value) is int:
        return value
    if type(value) is str:
        try:
            return int(value)
        except ValueError:
            return None
    return None


class Broker(Fanout[Trigger]):
    """A Knative Broker on a stream of the event log."""

    kind = "broker"

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
        default_ttl: int = DEFAULT_TTL,
        retention: StreamConfig | None = None,
    ) -> None:
        super().__init__(
            namespace,
            name,
            log,
            delivery=delivery,
            max_event_size=max_event_size,
            max_pending_events=max_pending_events,
            stream=stream,
            retention=retention,
        )
        if default_ttl < 1:
            raise ValueError("default_ttl must be at least 1")
        self.default_ttl = default_ttl

    # -- accepting ----------------------------------------------------------------

    async def accept(self, events: Sequence[CloudEvent], *, wait: bool = False) -> list[int]:
        """Append ``events`` durably; returns their offsets once stored.

        With ``wait``, a saturated log is waited for instead of refused (a source
        that can hold its producers back, see ``Fanout._append``).

        Events without ``knativebrokerttl`` get the default; events that arrive
        with a TTL of zero or less have looped too often and are dropped
        (counted in ``stats.ttl_dropped``, logged), so they have no offset.
        Raises :class:`Saturated`, and the log's ``LogUnavailable`` /
        ``EventTooLarge``; nothing is acknowledged then.
        """
        if isinstance(events, CloudEvent):
            raise TypeError("accept() takes a sequence of events; wrap a single event in a list")
        if type(events) is EncodedEvents:
            ttl = events.common.get(TTL_EXTENSION)
            if type(ttl) is int and ttl > 0:
                # Stamped by the producer (an MQTT source's mapping) on every event:
                # nothing to add or drop, and the records it encoded stay valid.
                return await self._append(events, wait=wait)
        stamped: list[CloudEvent] = []
        for event in events:
            ttl = event_ttl(event)
            if ttl is None:
                # A constant, valid Integer extension: no need to validate the event again.
                stamped.append(event._stamped(TTL_EXTENSION, self.default_ttl))
            elif ttl > 0:
                stamped.append(event)
            else:
                self._drop_expired(event)
        return await self._append(stamped, wait=wait)

    async def accept_reply(self, original: CloudEvent, reply: CloudEvent) -> None:
        """Re-enqueue a subscriber's reply with the TTL of ``original`` minus one."""
        ttl = event_ttl(original)
        ttl = (self.default_ttl if ttl is None else ttl) - 1
        if ttl <= 0:
            self._drop_expired(reply)
            return
        await self._append([reply.evolve({TTL_EXTENSION: ttl})])

    def _drop_expired(self, event: CloudEvent) -> None:
        self.stats.ttl_dropped += 1
        _expired.warning(
            self.stream,
            "%r: dropped event id=%s source=%s type=%s: %s reached 0 (a reply loop?)",
            self,
            event.id,
            event.source,
            event.type,
            TTL_EXTENSION,
            extra=log_fields(event),
        )

    # -- triggers -----------------------------------------------------------------

    async def add_trigger(self, trigger: Trigger) -> Dispatcher:
        """Start delivering to ``trigger`` (replacing one of the same name, cursor kept)."""
        # control-plane.md: replies "MUST be re-enqueued by the Broker using the
        # same routing and persistence" as ingress events.
        return await self._add(trigger, self.accept_reply, trigger.filter)

    async def remove_trigger(self, name: str, *, forget_cursor: bool = False) -> None:
        """Stop a Trigger; with ``forget_cursor`` its position is deleted too."""
        await self._remove(name, forget_cursor=forget_cursor)

    def triggers(self) -> dict[str, Trigger]:
        return dict(self._members)
