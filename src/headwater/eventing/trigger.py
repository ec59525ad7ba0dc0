"""A Trigger: which events of a Broker go to which subscriber, and how.

How this works: a :class:`Trigger` is the data-plane form of a Knative
Trigger: its filter compiled once (a bad expression raises
:class:`~headwater.eventing.filters.FilterError` here, rejecting the Trigger),
its subscriber as a :class:`~headwater.eventing.sink.Sink`, its own
DeliverySpec (or none, to use the Broker's), its delivery order and its start
position. :meth:`Broker.add_trigger` turns it into a running dispatcher with a
durable cursor named after the Trigger; the counters live in ``stats``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from headwater.eventing._fanout import Member
from headwater.eventing.filters import EventFilter, compile_trigger_filter
from headwater.eventing.sink import Sink

__all__ = ["Trigger"]


class Trigger(Member):
    """A Trigger on a Broker (see the module docstring and :class:`Member`).

    The filter is ``filter`` if given, else compiled from ``filters`` (the
    Subscriptions API dialects, which replace ``attributes`` when non-empty)
    or ``attributes`` (Knative ``spec.filter.attributes``).
    """

    kind = "trigger"

    def __init__(
        self,
        name: str,
        subscriber: Sink,
        *,
        attributes: Mapping[str, str] | None = None,
        filters: Sequence[Mapping[str, Any]] | None = None,
        filter: EventFilter | None = None,
        **options: Any,
    ) -> None:
        super().__init__(name, subscriber, **options)
        self.filter = filter if filter is not None else compile_trigger_filter(attributes, filters)
