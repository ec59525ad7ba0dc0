"""Destinations resolved to sinks: in-process for a ``ref``, an HTTP POST for a ``uri``.

How this works: a Destination's ``ref`` becomes a :class:`RefSink`, which
finds the named resource's component at each delivery, so a receiver that is
recreated (or not ready yet) is found again without re-wiring its senders;
while it is missing, delivery fails as retryable, so retries and dead
letters apply as for HTTP. A ``uri`` becomes an
:class:`~headwater.eventing.HttpSink` over the process's one delivery
transport. Every DeliverySpec resolved here records the events it gives up
on through the runtime's dead-letter store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryError, DeliverySpec, HttpSink, Sink
from headwater.eventing.delivery import DeadLetterRecorder
from headwater.eventing.sink import deliver_many
from headwater.resources import DeliverySpec as ResourceDelivery
from headwater.resources import Destination
from headwater.runtime.capabilities import Addressable, HasFanout
from headwater.runtime.context import HttpClients, UnresolvedDestination
from headwater.runtime.reconciler import Component, Key

__all__ = ["RefSink", "Resolver"]

Lookup = Callable[[Key], Component | None]
"""The running component of a resource key (None when it is not running)."""


class RefSink:
    """A Destination ``ref`` to an in-process receiver, looked up at each delivery.

    The component found is checked for a ``sink`` once (an ``isinstance``
    against a Protocol is too slow for every batch of the MQTT ingest), and
    again only when the component is another one (recreated).
    """

    def __init__(self, lookup: Lookup, key: Key) -> None:
        self._lookup = lookup
        self.key = key
        self.url = f"{key[0].lower()}://{key[1]}/{key[2]}"
        self._component: Component | None = None
        self._sink: Sink | None = None

    def _target(self) -> Sink:
        component = self._lookup(self.key)
        if component is not self._component:
            self._component = component
            self._sink = component.sink if isinstance(component, Addressable) else None
        if self._sink is None:
            kind, namespace, name = self.key
            raise DeliveryError(None, True, reason=f"{kind} {namespace}/{name} is not ready")
        return self._sink

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        return await self._target().deliver(event)

    async def deliver_many(self, events: Sequence[CloudEvent]) -> None:
        """All of ``events`` in one call where the receiver takes batches (a Broker)."""
        await deliver_many(self._target(), events)

    def __repr__(self) -> str:
        return f"RefSink({self.url})"


class Resolver:
    """The runtime's :class:`~headwater.runtime.context.Destinations`."""

    def __init__(self, lookup: Lookup, http: HttpClients, recorder: DeadLetterRecorder) -> None:
        self._lookup = lookup
        self._http = http
        self._recorder = recorder

    def resolve(
        self, destination: Destination, namespace: str, delivery: ResourceDelivery | None = None
    ) -> tuple[Sink, str]:
        ref = destination.ref
        if ref is not None:
            if destination.uri:
                raise UnresolvedDestination(
                    f"a `uri` relative to the in-process {ref.kind} {ref.name!r} is not supported; "
                    "use the ref alone"
                )
            sink = RefSink(self._lookup, (ref.kind, ref.namespace or namespace, ref.name))
            return sink, sink.url
        assert destination.uri is not None  # the model requires ref or uri
        fmt = delivery.format if delivery is not None and delivery.format else "binary"
        http = HttpSink(destination.uri, transport=self._http.delivery, format=fmt)
        return http, destination.uri

    def delivery_spec(self, delivery: ResourceDelivery | None, namespace: str) -> DeliverySpec:
        if delivery is None:
            return DeliverySpec(recorder=self._recorder)

        def resolve_sink(raw: Mapping[str, Any]) -> tuple[Sink, str]:
            return self.resolve(Destination.model_validate(raw), namespace)

        spec = DeliverySpec.from_knative(
            delivery.model_dump(by_alias=True, exclude_none=True), resolve_sink
        )
        return replace(spec, recorder=self._recorder)

    def _fanout(self, key: Key) -> BrokerFanout | ChannelFanout | None:
        component = self._lookup(key)
        return component.fanout if isinstance(component, HasFanout) else None

    def broker(self, namespace: str, name: str) -> BrokerFanout:
        fanout = self._fanout(("Broker", namespace, name))
        if not isinstance(fanout, BrokerFanout):
            raise UnresolvedDestination(f"Broker {namespace}/{name} is not ready")
        return fanout

    def channel(self, kind: str, namespace: str, name: str) -> ChannelFanout:
        fanout = self._fanout((kind, namespace, name))
        if not isinstance(fanout, ChannelFanout):
            raise UnresolvedDestination(f"{kind} {namespace}/{name} is not ready")
        return fanout
