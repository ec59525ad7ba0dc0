"""The one delivery interface every destination implements, and an in-memory sink.

How this works: a Trigger or Subscription hands each event to a :class:`Sink`
and awaits the outcome. Returning means the destination accepted the event
(Knative data-plane "Delivery completed"); a returned event is a reply.
Raising :class:`DeliveryError` means it did not, and says whether trying again
could help. Everything above the sink (timeouts, retries with backoff, dead
letters, counters) lives in :mod:`headwater.eventing.delivery` and behaves the
same for an HTTP subscriber and an in-process sink.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from headwater.cloudevents import CloudEvent

__all__ = ["BatchSink", "DeliveryError", "RecordingSink", "Sink", "deliver_many"]


class DeliveryError(Exception):
    """A delivery attempt that the destination did not accept.

    ``status`` is the HTTP status the destination answered (``None`` when there
    was no answer: connection refused, reset, timeout). ``retryable`` follows
    the data-plane table (see :func:`headwater.eventing.delivery.should_retry`).
    ``body`` is the response body, which ends up base64-encoded in the
    ``knativeerrordata`` extension of a dead-lettered event. ``retry_after`` is
    a destination's ``Retry-After`` in seconds, if it sent one.
    """

    def __init__(
        self,
        status: int | None,
        retryable: bool,
        body: bytes = b"",
        *,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        self.status = status
        self.retryable = retryable
        self.body = body
        self.retry_after = retry_after
        self.reason = reason
        what = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"{what}{': ' + reason if reason else ''}")


@runtime_checkable
class Sink(Protocol):
    """Anything a Trigger or Subscription can deliver to."""

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        """Deliver one event; return the reply event, if the destination sent one.

        Raises :class:`DeliveryError` when the destination did not accept it.
        """
        ...


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that takes many events in one call, all or nothing (a durable append)."""

    async def deliver_many(self, events: Sequence[CloudEvent]) -> None:
        """Deliver every event of ``events``; raises :class:`DeliveryError` if it
        did not take them all (then none counts as delivered)."""
        ...


async def deliver_many(sink: Sink, events: Sequence[CloudEvent]) -> None:
    """``sink.deliver_many`` where it has one, else one ``deliver`` per event (concurrently)."""
    # getattr, not isinstance: a runtime-checkable Protocol costs tens of
    # microseconds per check, on a path taken for every batch.
    many = getattr(sink, "deliver_many", None)
    if many is not None:
        await many(events)
        return
    if len(events) == 1:
        await sink.deliver(events[0])
        return
    results = await asyncio.gather(*(sink.deliver(e) for e in events), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


Responder = Callable[[CloudEvent], Awaitable[CloudEvent | None] | CloudEvent | None]


class RecordingSink:
    """An in-process sink that keeps what it accepted, for tests and for users.

    ``responder`` (sync or async) is called for every event; it may return a
    reply event or raise :class:`DeliveryError` to refuse it. Refused events are
    not recorded; every attempt is counted in ``attempts``. ``wait_for(n)``
    waits until ``n`` events have been accepted.
    """

    def __init__(self, responder: Responder | None = None) -> None:
        self.events: list[CloudEvent] = []
        self.attempts = 0
        self._responder = responder
        self._changed = asyncio.Condition()

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        self.attempts += 1
        reply: CloudEvent | None = None
        if self._responder is not None:
            result = self._responder(event)
            reply = await result if isinstance(result, Awaitable) else result
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return reply

    async def wait_for(self, count: int, within: float = 10.0) -> list[CloudEvent]:
        """Wait until at least ``count`` events were accepted; ``TimeoutError`` otherwise."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.events) >= count)
        return self.events

    def ids(self) -> list[str]:
        return [event.id for event in self.events]
