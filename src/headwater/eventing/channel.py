"""A Channel: every event to every Subscription, each with its own cursor.

How this works: like a Broker without filters or a TTL guard. ``accept``
appends durably to the Channel's stream; each Subscription reads it through
its own cursor and delivers under its own DeliverySpec (or the Channel's, as
a whole). :meth:`Channel.in_memory` makes Knative's InMemoryChannel: the
same, on a :class:`~headwater.log.MemoryLog` of its own (nothing survives a
restart, as in Knative).
"""

from __future__ import annotations

from collections.abc import Sequence

from headwater.cloudevents import CloudEvent
from headwater.eventing._fanout import DEFAULT_MAX_PENDING_EVENTS, Fanout, Saturated
from headwater.eventing.delivery import DeliverySpec
from headwater.eventing.dispatcher import Dispatcher
from headwater.eventing.subscription import Subscription
from headwater.log import DEFAULT_MAX_EVENT_SIZE, MemoryLog

__all__ = ["Channel", "Saturated"]


class Channel(Fanout[Subscription]):
    """A Knative Channel on a stream of the event log."""

    kind = "channel"

    @classmethod
    def in_memory(
        cls,
        namespace: str,
        name: str,
        *,
        delivery: DeliverySpec | None = None,
        max_event_size: int = DEFAULT_MAX_EVENT_SIZE,
        max_pending_events: int = DEFAULT_MAX_PENDING_EVENTS,
    ) -> Channel:
        """An InMemoryChannel: the same Channel on a private in-memory log."""
        return cls(
            namespace,
            name,
            MemoryLog(),
            delivery=delivery,
            max_event_size=max_event_size,
            max_pending_events=max_pending_events,
        )

    async def accept(self, events: Sequence[CloudEvent], *, wait: bool = False) -> list[int]:
        """Append ``events`` durably; returns their offsets once stored (``wait``:
        see :meth:`~headwater.eventing.broker.Broker.accept`).

        Raises :class:`Saturated`, and the log's ``LogUnavailable`` /
        ``EventTooLarge``; nothing is acknowledged then.
        """
        if isinstance(events, CloudEvent):
            raise TypeError("accept() takes a sequence of events; wrap a single event in a list")
        return await self._append(events, wait=wait)

    async def subscribe(self, subscription: Subscription) -> Dispatcher:
        """Start delivering to ``subscription`` (replacing one of the same name, cursor kept)."""
        return await self._add(subscription, subscription.forward_reply)

    async def unsubscribe(self, name: str, *, forget_cursor: bool = False) -> None:
        """Stop a Subscription; with ``forget_cursor`` its position is deleted too."""
        await self._remove(name, forget_cursor=forget_cursor)

    def subscriptions(self) -> dict[str, Subscription]:
        return dict(self._members)
