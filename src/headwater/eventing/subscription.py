"""A Subscription: every event of a Channel to one subscriber, replies to another.

How this works: a :class:`Subscription` is the data-plane form of a Knative
Subscription: a subscriber sink, an optional ``reply`` sink and its own
DeliverySpec (or none, to use the Channel's). :meth:`Channel.subscribe`
runs it as a dispatcher without a filter on the Channel's stream, with a
cursor named after the Subscription. A reply is delivered to ``reply`` inside
the same attempt; if that fails, the whole delivery fails and is retried
(control-plane.md "Event Delivery"). Without ``reply``, replies are
discarded ("the reply event MUST be dropped"), counted in ``replies_discarded``.
"""

from __future__ import annotations

from typing import Any

from headwater.cloudevents import CloudEvent
from headwater.eventing._fanout import Member
from headwater.eventing.sink import Sink

__all__ = ["Subscription"]


class Subscription(Member):
    """A Subscription to a Channel (see the module docstring and :class:`Member`)."""

    kind = "subscription"

    def __init__(
        self, name: str, subscriber: Sink, *, reply: Sink | None = None, **options: Any
    ) -> None:
        super().__init__(name, subscriber, **options)
        self.reply = reply
        self.replies_discarded = 0

    async def forward_reply(self, original: CloudEvent, reply: CloudEvent) -> None:
        """Deliver a reply to ``reply``; a :class:`DeliveryError` fails the whole attempt."""
        if self.reply is None:
            self.replies_discarded += 1
            return
        await self.reply.deliver(reply)
