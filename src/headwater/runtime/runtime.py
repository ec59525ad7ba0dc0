"""The running mesh: the reconciler plus the components each kind becomes.

How this works: ``Runtime`` owns the event log, the reconciler and one
builder per kind. Addressable components (Brokers, Channels, sinks) expose a
``sink`` that Destinations resolve to, so a PingSource, a Trigger or a dead
letter route reaches an in-process receiver without a socket; a ``uri``
Destination resolves to a pooled HTTP sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import aiohttp

from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryError, DeliverySpec, HttpSink, Sink, new_session
from headwater.log import EARLIEST, LATEST, EventLog, MemoryLog, Start
from headwater.resources import (
    ConfigError,
    Destination,
    Loaded,
    Problem,
    Resource,
    load_text,
    parse_start,
)
from headwater.resources import DeliverySpec as ResourceDelivery
from headwater.runtime import components
from headwater.runtime import mqtt as mqtt_components
from headwater.runtime import sinks as sink_components
from headwater.runtime.components import BrokerComponent, ChannelComponent
from headwater.runtime.reconciler import ApplyResult, Builder, Component, Key, Reconciler

log = logging.getLogger(__name__)


# Component tables, one per module that defines kinds: ``{kind: builder}``.
COMPONENT_TABLES: tuple[Mapping[str, Callable[[Runtime, Any], Component]], ...] = (
    components.BUILDERS,
    mqtt_components.BUILDERS,
    sink_components.BUILDERS,
)


class UnresolvedDestination(LookupError):
    """A Destination's ref names a resource that is not running."""


class RefSink:
    """A Destination ``ref`` to an in-process receiver, looked up at each delivery.

    Resolving late means a receiver that is recreated (or not ready yet) is
    found again without re-wiring its senders; while it is missing, delivery
    fails as retryable, so retries and dead letters apply as for HTTP.
    """

    def __init__(self, runtime: Runtime, key: Key) -> None:
        self._runtime = runtime
        self.key = key
        self.url = f"{key[0].lower()}://{key[1]}/{key[2]}"

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        component = self._runtime.reconciler.component(self.key)
        sink: Sink | None = getattr(component, "sink", None)
        if sink is None:
            raise DeliveryError(
                None, True, reason=f"{self.key[0]} {self.key[1]}/{self.key[2]} is not ready"
            )
        return await sink.deliver(event)

    def __repr__(self) -> str:
        return f"RefSink({self.url})"


class Runtime:
    """Headwater's running state; the admin API and ``headwater up`` drive it.

    ``log`` holds every Broker's and Channel's stream (InMemoryChannels keep
    their own). The runtime owns it and closes it in :meth:`close`.
    """

    def __init__(self, log: EventLog | None = None) -> None:
        self.started = time.time()
        self.listeners: dict[str, str] = {}
        self.log: EventLog = log if log is not None else MemoryLog()
        self._session: aiohttp.ClientSession | None = None
        builders: dict[str, Builder] = {
            kind: self._builder(build)
            for table in COMPONENT_TABLES
            for kind, build in table.items()
        }
        self.reconciler = Reconciler(builders)

    def _builder(self, build: Callable[[Runtime, Any], Component]) -> Builder:
        async def builder(resource: Resource) -> Component:
            return build(self, resource)

        return builder

    # -- what components need ----------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """One pooled HTTP client for every HTTP destination (keep-alive across them)."""
        if self._session is None:
            self._session = new_session()
        return self._session

    def broker(self, namespace: str, name: str) -> BrokerFanout:
        component = self.reconciler.component(("Broker", namespace, name))
        if not isinstance(component, BrokerComponent):
            raise UnresolvedDestination(f"Broker {namespace}/{name} is not ready")
        return component.broker

    def channel(self, kind: str, namespace: str, name: str) -> ChannelFanout:
        component = self.reconciler.component((kind, namespace, name))
        if not isinstance(component, ChannelComponent):
            raise UnresolvedDestination(f"{kind} {namespace}/{name} is not ready")
        return component.channel

    def ingress_lookup(self, namespace: str, name: str) -> BrokerFanout | None:
        """The running Broker at ``/{namespace}/{name}``, for the HTTP ingress."""
        component = self.reconciler.component(("Broker", namespace, name))
        return component.broker if isinstance(component, BrokerComponent) else None

    def ingress_url(self, namespace: str, name: str) -> str | None:
        base = self.listeners.get("http")
        return f"{base}/{namespace}/{name}" if base else None

    def resolve(
        self, destination: Destination, namespace: str, delivery: ResourceDelivery | None = None
    ) -> Sink:
        return self.resolve_with_uri(destination, namespace, delivery)[0]

    def resolve_with_uri(
        self, destination: Destination, namespace: str, delivery: ResourceDelivery | None = None
    ) -> tuple[Sink, str]:
        """The sink a Destination points at (in-process for a ``ref``) and its address."""
        ref = destination.ref
        if ref is not None:
            if destination.uri:
                raise UnresolvedDestination(
                    f"a `uri` relative to the in-process {ref.kind} {ref.name!r} is not supported; "
                    "use the ref alone"
                )
            sink = RefSink(self, (ref.kind, ref.namespace or namespace, ref.name))
            return sink, sink.url
        assert destination.uri is not None  # the model requires ref or uri
        fmt = delivery.format if delivery is not None and delivery.format else "binary"
        return HttpSink(destination.uri, session=self.session, format=fmt), destination.uri

    def delivery_spec(
        self, delivery: ResourceDelivery | None, namespace: str
    ) -> DeliverySpec | None:
        if delivery is None:
            return None

        def resolve_sink(raw: Mapping[str, Any]) -> tuple[Sink, str]:
            return self.resolve_with_uri(Destination.model_validate(raw), namespace)

        return DeliverySpec.from_knative(
            delivery.model_dump(by_alias=True, exclude_none=True), resolve_sink
        )

    @staticmethod
    def start_position(text: str | None) -> Start:
        if text is None:
            return LATEST
        kind, value = parse_start(text)
        if kind == "earliest":
            return EARLIEST
        if kind == "offset":
            return Start.at_offset(int(value))  # type: ignore[arg-type]
        if kind == "time":
            return Start.at_time(datetime.fromisoformat(str(value)))
        return LATEST

    # -- the API's view ---------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"uptimeSeconds": round(time.time() - self.started, 3), "listeners": self.listeners}

    def resources(self, kind: str | None = None) -> list[Resource]:
        return self.reconciler.resources(kind)

    def get(self, key: Key) -> Resource | None:
        return self.reconciler.get(key)

    def status(self, key: Key) -> dict[str, Any]:
        return self.reconciler.status(key)

    async def apply(self, loaded: Iterable[Loaded]) -> ApplyResult:
        return await self.reconciler.apply(loaded)

    async def apply_text(self, text: str, file: str) -> ApplyResult:
        loaded = load_text(text, file)
        if not loaded:
            raise ConfigError([Problem(file, None, "no resources in the request")])
        return await self.reconciler.apply(loaded)

    async def delete(self, keys: Iterable[Key]) -> ApplyResult:
        return await self.reconciler.delete(keys)

    def _fanout_keys(self) -> list[Key]:
        return [
            r.key for r in self.resources() if r.kind in ("Broker", "Channel", "InMemoryChannel")
        ]

    async def close(self, grace: float = 0.0) -> None:
        """Stop every component (senders first: cursors are committed), then the log.

        With ``grace``, Brokers and Channels first stop reading and let the
        deliveries under way finish, for up to that many seconds; what does
        not finish is delivered again after a restart.
        """
        if grace > 0:
            fanouts = [
                c.broker if isinstance(c, BrokerComponent) else c.channel
                for c in map(self.reconciler.component, self._fanout_keys())
                if isinstance(c, BrokerComponent | ChannelComponent)
            ]
            settled = await asyncio.gather(*(f.drain(grace) for f in fanouts))
            if not all(settled):
                log.warning("stopping with deliveries still under way after %.1fs", grace)
        await self.reconciler.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.log.close()
