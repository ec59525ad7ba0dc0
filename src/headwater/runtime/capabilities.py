"""What a running component can do beyond start/stop/update/status, as Protocols.

How this works: every component is a
:class:`~headwater.runtime.reconciler.Component`. Some also are:

- :class:`Addressable`: it has a ``sink``, what a Destination's ``ref`` to it
  resolves to in-process (Brokers, Channels, the sink kinds);
- :class:`HasFanout`: it runs a Broker's or Channel's fan-out (a stream in
  the log, with dispatchers);
- :class:`Delivering`: it runs a Trigger's or Subscription's dispatcher;
- :class:`HasMetrics`: it publishes Prometheus metric families on
  Headwater's ``/metrics``.

The runtime and the API ask with ``isinstance`` (runtime-checkable
Protocols), never by probing attributes, and the event path never asks: a
Destination's ``ref`` checks once per component it finds
(:class:`~headwater.runtime.destinations.RefSink`), since an ``isinstance``
against a Protocol costs tens of microseconds on Python 3.11.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import Dispatcher, Sink

if TYPE_CHECKING:
    from prometheus_client.core import Metric

__all__ = ["Addressable", "Delivering", "HasFanout", "HasMetrics"]


@runtime_checkable
class Addressable(Protocol):
    sink: Sink
    """What a Destination's ``ref`` to this resource delivers to, in-process."""


@runtime_checkable
class HasFanout(Protocol):
    @property
    def fanout(self) -> BrokerFanout | ChannelFanout:
        """The Broker's or Channel's fan-out."""
        ...


@runtime_checkable
class Delivering(Protocol):
    def dispatcher(self) -> Dispatcher | None:
        """The running dispatcher (None while it is not attached)."""
        ...


@runtime_checkable
class HasMetrics(Protocol):
    def metric_families(self) -> list[Metric]:
        """Families for ``/metrics``; families of one name from several
        components are merged into one (each component adds its own labels)."""
        ...
