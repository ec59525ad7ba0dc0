"""The running mesh: the reconciler, the components each kind becomes, and what they share.

How this works: ``Runtime`` owns the event log, the state store, the
reconciler, the HTTP clients and the dead-letter store, and builds one
:class:`~headwater.runtime.context.Context` that every kind's builder gets
(the kinds and their start stages are the tables of
:mod:`headwater.runtime.components`, :mod:`headwater.runtime.sinks` and
:mod:`headwater.runtime.mqtt`, :mod:`headwater.runtime.tiers` and
:mod:`headwater.runtime.devices`). The device registry
(:class:`~headwater.devices.Devices`: registry, presence, twins, commands)
lives in the same state store and is in the context too. Destinations resolve through the
:class:`~headwater.runtime.destinations.Resolver`: a ``ref`` to an in-process
receiver without a socket, a ``uri`` to an HTTP sink over the one delivery
transport. Every DeliverySpec it resolves records given-up events in
:class:`~headwater.runtime.deadletters.DeadLetters`. What the API applied is
kept in the state store (:mod:`headwater.runtime.applied`); replays and bulk
re-drives are :class:`~headwater.runtime.jobs.Jobs` the runtime owns and
cancels when it closes. The map of it all: docs/architecture.md, "Runtime".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from headwater.devices import Devices
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import Deliverer, DeliveryTransport, Dispatcher
from headwater.log import EventLog, MemoryLog
from headwater.resources import Loaded, LoadResult, Resource
from headwater.resources.models import INGRESS_TOKEN_ANNOTATION
from headwater.runtime.applied import Origin, Resources
from headwater.runtime.capabilities import Delivering, HasFanout
from headwater.runtime.components import KINDS as EVENTING_KINDS
from headwater.runtime.context import (
    Context,
    HttpClients,
    Kind,
    MeshNode,
    Registry,
    UnresolvedDestination,
)
from headwater.runtime.deadletters import DeadLetters
from headwater.runtime.destinations import Resolver
from headwater.runtime.devices import KINDS as DEVICE_KINDS
from headwater.runtime.devices import remove_orphans
from headwater.runtime.jobs import Jobs
from headwater.runtime.mqtt import KINDS as MQTT_KINDS
from headwater.runtime.reconciler import ApplyResult, Builder, Component, Key, Reconciler
from headwater.runtime.sinks import KINDS as SINK_KINDS
from headwater.runtime.tiers import KINDS as TIER_KINDS
from headwater.state import MemoryStore, StateStore

log = logging.getLogger(__name__)

KINDS: Final[Mapping[str, Kind]] = {
    **EVENTING_KINDS,
    **SINK_KINDS,
    **MQTT_KINDS,
    **TIER_KINDS,
    **DEVICE_KINDS,
}
"""Every kind this runtime runs: how it is built and at which stage it starts."""


def _report_unfinished(fanouts: Sequence[BrokerFanout | ChannelFanout], grace: float) -> None:
    """Say how many deliveries stop unfinished at shutdown, and what becomes of them."""
    kept = sum(f.unfinished() for f in fanouts if not isinstance(f.log, MemoryLog))
    lost = sum(f.unfinished() for f in fanouts if isinstance(f.log, MemoryLog))
    after = f" after {grace:g}s (--drain-timeout)" if grace > 0 else ""
    if kept:
        log.warning(
            "stopping with %d deliveries still under way%s: they were not acknowledged "
            "and will be delivered again at the next start",
            kept,
            after,
        )
    if lost:
        log.warning(
            "stopping with %d deliveries still under way%s on in-memory channels: their "
            "events are lost with them (nothing in memory survives a restart)",
            lost,
            after,
        )


class Runtime:
    """Headwater's running state; the admin API and ``headwater up`` drive it.

    ``log`` holds every Broker's and Channel's stream (InMemoryChannels keep
    their own); ``delivery`` makes HttpSinks' POSTs (an in-process
    :class:`~headwater.eventing._http1.Http1Client` when None). The runtime
    owns all three and closes them in :meth:`close`.
    """

    def __init__(
        self,
        log: EventLog | None = None,
        *,
        delivery: DeliveryTransport | None = None,
        state: StateStore | None = None,
        data_dir: Path | None = None,
        mesh: MeshNode | None = None,
    ) -> None:
        self.started = time.time()
        # In a mesh (``headwater up --nats``): this node's part of it (see headwater.cluster).
        self.mesh = mesh
        self.node: str | None = mesh.node if mesh is not None else None
        self.log: EventLog = log if log is not None else MemoryLog()
        # What the API applied is kept here (see runtime.applied); owned and closed here.
        self.state: StateStore = state if state is not None else MemoryStore()
        # The device registry, presence, twins and commands (headwater.devices), in it too.
        self.devices = Devices(
            self.state, node=self.node, live_nodes=mesh.live_nodes if mesh is not None else None
        )
        self.data_dir = data_dir
        self.registry = Registry()
        self.listeners = self.registry.listeners
        self.http = HttpClients(delivery)
        self.reconciler = Reconciler(
            {kind: self._builder(entry) for kind, entry in KINDS.items()},
            {kind: entry.stage for kind, entry in KINDS.items()},
        )
        self.desired = Resources(self.reconciler, self.state)
        self.dead_letters = DeadLetters(self.log, self)
        self.destinations = Resolver(self.reconciler.component, self.http, self.dead_letters)
        self.context = Context(
            log=self.log,
            state=self.state,
            destinations=self.destinations,
            http=self.http,
            registry=self.registry,
            dead_letters=self.dead_letters,
            devices=self.devices,
            data_dir=data_dir,
            mesh=mesh,
        )
        self.replays = Jobs()
        self.redrives = Jobs()

    def _builder(self, kind: Kind) -> Builder:
        async def builder(resource: Resource) -> Component:
            component = kind.build(self.context, resource)
            if self.mesh is not None:
                component = self.mesh.wrap(resource, component)
            return component

        return builder

    # -- lookups --------------------------------------------------------------

    def broker(self, namespace: str, name: str) -> BrokerFanout:
        """A running Broker's fan-out; :class:`UnresolvedDestination` when not running."""
        return self.destinations.broker(namespace, name)

    def channel(self, kind: str, namespace: str, name: str) -> ChannelFanout:
        return self.destinations.channel(kind, namespace, name)

    def ingress_lookup(self, namespace: str, name: str) -> BrokerFanout | None:
        """The running Broker at ``/{namespace}/{name}``, for the HTTP ingress."""
        try:
            return self.destinations.broker(namespace, name)
        except UnresolvedDestination:
            return None

    def ingress_token(self, namespace: str, name: str) -> str | None:
        """The bearer token a Broker's ingress requires (its ``headwater.dev/ingress-token``)."""
        broker = self.get(("Broker", namespace, name))
        return broker.metadata.annotations.get(INGRESS_TOKEN_ANNOTATION) if broker else None

    def channel_lookup(self, namespace: str, name: str) -> ChannelFanout | None:
        """The running Channel (or InMemoryChannel) at ``/channels/{namespace}/{name}``."""
        for kind in ("Channel", "InMemoryChannel"):
            try:
                return self.destinations.channel(kind, namespace, name)
            except UnresolvedDestination:
                continue
        return None

    def dispatcher(self, key: Key) -> Dispatcher | None:
        """The running dispatcher of a Trigger or Subscription (None when not running)."""
        component = self.reconciler.component(key)
        return component.dispatcher() if isinstance(component, Delivering) else None

    def origin_of(self, deliverer: Deliverer) -> Key | None:
        """The Trigger or Subscription whose dispatcher delivers with ``deliverer``."""
        for kind in ("Trigger", "Subscription"):
            for resource in self.resources(kind):
                dispatcher = self.dispatcher(resource.key)
                if dispatcher is not None and dispatcher.deliverer is deliverer:
                    return resource.key
        return None

    # -- the API's view ---------------------------------------------------------

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "uptimeSeconds": round(time.time() - self.started, 3),
            "listeners": self.listeners,
        }
        if self.mesh is not None:
            info["node"] = self.mesh.node
            info["mesh"] = self.mesh.info()
        return info

    def resources(self, kind: str | None = None) -> list[Resource]:
        return self.reconciler.resources(kind)

    def get(self, key: Key) -> Resource | None:
        return self.reconciler.get(key)

    def status(self, key: Key) -> dict[str, Any]:
        return self.reconciler.status(key)

    def origin(self, key: Key) -> Origin | None:
        """Where a resource came from: a file of ``headwater up``, or the API."""
        return self.desired.origin(key)

    async def start(self, files: LoadResult) -> ApplyResult:
        """Run ``headwater up``'s files and what the API applied before (see runtime.applied)."""
        result = await self.desired.start(files)
        await remove_orphans(self.devices, self.resources("Device"))
        return result

    async def reload(self, files: LoadResult) -> ApplyResult:
        """The files changed (``--watch``): they become the desired state, beside the API's."""
        return await self.desired.reload(files)

    async def apply(self, loaded: Iterable[Loaded]) -> ApplyResult:
        """Apply resources this process owns (as its files), unchecked and not stored."""
        return await self.desired.apply_files(list(loaded))

    async def apply_text(self, text: str, file: str) -> ApplyResult:
        """The API's apply: checked against ownership, kept in the state store."""
        return await self.desired.apply_text(text, file)

    async def update_text(self, text: str, file: str, key: Key) -> ApplyResult:
        """The API's replace of one resource (compare-and-set on its resourceVersion)."""
        return await self.desired.update_text(text, file, key)

    async def delete_applied(self, keys: Sequence[Key]) -> ApplyResult:
        """The API's delete: only what the API applied; removed from the state store."""
        return await self.desired.delete(keys)

    async def delete(self, keys: Iterable[Key]) -> ApplyResult:
        """Delete resources whoever applied them (the process's own decision)."""
        result = await self.reconciler.delete(keys)
        for key in result.deleted:
            self.desired.origins.pop(key, None)
        return result

    async def stop_processes(self) -> None:
        """Stop ContainerSource processes (first at shutdown: they post to the HTTP
        listener, which closes next). Their resources stay; ``close`` finishes them."""
        for resource in self.resources("ContainerSource"):
            component = self.reconciler.component(resource.key)
            if component is not None:
                await component.stop()

    def components(self) -> list[Component]:
        """The running components, in key order."""
        running = (self.reconciler.component(r.key) for r in self.resources())
        return [c for c in running if c is not None]

    async def close(self, grace: float = 0.0) -> None:
        """Stop every component (senders first: cursors are committed), then the log.

        With ``grace``, Brokers and Channels first stop reading and let the
        deliveries under way finish, for up to that many seconds; what does
        not finish is delivered again after a restart.
        """
        await self.replays.close()
        await self.redrives.close()
        fanouts = [c.fanout for c in self.components() if isinstance(c, HasFanout)]
        if grace > 0:
            under_way = sum(f.unfinished() for f in fanouts)
            if under_way:
                log.info(
                    "stopping: %d deliveries under way get up to %gs to finish", under_way, grace
                )
            await asyncio.gather(*(f.drain(grace) for f in fanouts))
        _report_unfinished(fanouts, grace)
        await self.desired.close()
        await self.reconciler.close()
        await self.http.close()
        await self.devices.close()
        await self.log.close()
        await self.state.close()
