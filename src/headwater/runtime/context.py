"""What a component's builder may use, and when each kind starts.

How this works: a builder is ``build(context, resource) -> Component``. The
:class:`Context` it is given is all it may reach: the event log, the state
store, the :class:`Destinations` resolver (a Destination to a sink, a
resource's DeliverySpec to a resolved one, a Broker or Channel to its
fan-out), the HTTP clients (:class:`HttpClients`), the :class:`Registry` of
what listens where, the dead letters (:class:`DeadLetterRecords`: what a
component that sends without a DeliverySpec gives up on, e.g. an Uplink's
refused events), the device registry (:class:`~headwater.devices.Devices`:
registry, presence, twins and commands, in the state store), the node's
data directory and, on a node of a mesh, the :class:`MeshNode` (what
:mod:`headwater.cluster` offers the runtime: a component that must run on
one node at a time comes back wrapped under a lease; an embedded MQTT broker
gets a router and a session store that span the nodes over NATS). The
runtime makes one
context and hands it to every builder; a component never sees the runtime,
the reconciler or another component, so what it depends on is written in
its constructor.

Each kind's table entry (:class:`Kind`) says how it is built and at which
:class:`Stage` it starts: receivers before senders, so that a Trigger finds
its Broker and a source its sink when they start; stopping goes the other way
(see docs/architecture.md, "Runtime").

What a component can do beyond start/stop/update/status is declared by the
Protocols of :mod:`headwater.runtime.capabilities` (``Addressable``,
``HasMetrics``, ...), not probed with ``getattr``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from headwater.cloudevents import CloudEvent
from headwater.devices import Devices
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryError, DeliverySpec, DeliveryTransport, Sink, new_session
from headwater.eventing._http1 import Http1Client
from headwater.log import EventLog
from headwater.mqtt.router import Router
from headwater.mqtt.stores import SessionStore
from headwater.resources import DeliverySpec as ResourceDelivery
from headwater.resources import Destination, Resource
from headwater.runtime.reconciler import Component, Key
from headwater.sources.mqttbroker import MqttBrokerSource
from headwater.state import StateStore

__all__ = [
    "CHANNEL_PREFIX",
    "Builder",
    "Context",
    "DeadLetterRecords",
    "Destinations",
    "HttpClients",
    "Key",
    "Kind",
    "MeshNode",
    "MqttSpan",
    "Registry",
    "Stage",
    "UnresolvedDestination",
]

CHANNEL_PREFIX: Final = "/channels"
"""Channels' HTTP ingress: ``POST /channels/{namespace}/{name}`` (Brokers' is ``/{ns}/{name}``)."""


class Stage(enum.IntEnum):
    """When a kind starts: every kind of one stage before any of the next."""

    SINK = 0
    """Receives events only (a display, an HTTP, InfluxDB, Prometheus or MQTT sink)."""
    FANOUT = 1
    """Brokers and Channels: receive events, and send them to their members."""
    MEMBER = 2
    """Triggers and Subscriptions: attach to their Broker or Channel, send to a subscriber."""
    SOURCE = 3
    """Sends events only (PingSource, ContainerSource, the MQTT sources)."""


class UnresolvedDestination(LookupError):
    """A Destination's ref names a resource that is not running."""


class Destinations(Protocol):
    """Resolves what a resource points at (implemented by the runtime's resolver)."""

    def resolve(
        self, destination: Destination, namespace: str, delivery: ResourceDelivery | None = None
    ) -> tuple[Sink, str]:
        """The sink a Destination points at (in-process for a ``ref``) and its address."""
        ...

    def delivery_spec(self, delivery: ResourceDelivery | None, namespace: str) -> DeliverySpec:
        """The resolved spec (Knative's defaults when None), recording dead letters."""
        ...

    def broker(self, namespace: str, name: str) -> BrokerFanout:
        """The running Broker's fan-out; :class:`UnresolvedDestination` when not running."""
        ...

    def channel(self, kind: str, namespace: str, name: str) -> ChannelFanout:
        """The running Channel's fan-out; :class:`UnresolvedDestination` when not running."""
        ...


class DeadLetterRecords(Protocol):
    """The node's dead letters (:class:`headwater.runtime.deadletters.DeadLetters`)."""

    async def record(
        self, origin: Key | None, destination: str, event: CloudEvent, error: DeliveryError
    ) -> None:
        """Keep ``event``, given up on by ``origin`` while sending to ``destination``."""
        ...


class HttpClients:
    """The process's HTTP clients, made on first use and closed with the runtime.

    ``delivery`` makes every HttpSink's POSTs (chosen once, see
    :mod:`headwater.eventing.transport`); ``session`` is one pooled aiohttp
    client for the sinks that speak HTTP APIs (InfluxDB, the HttpSink kind).
    """

    def __init__(self, delivery: DeliveryTransport | None = None) -> None:
        self._delivery = delivery
        self._session: aiohttp.ClientSession | None = None

    @property
    def delivery(self) -> DeliveryTransport:
        """The transport given, or one pooled :class:`Http1Client` in process."""
        if self._delivery is None:
            self._delivery = Http1Client()
        return self._delivery

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = new_session()
        return self._session

    async def close(self) -> None:
        if self._delivery is not None:
            await self._delivery.close()
            self._delivery = None
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(eq=False)
class Registry:
    """What listens where: the node's listener URLs and its in-process MQTT brokers.

    ``listeners`` maps a name (``http``, ``mqtt/{namespace}/{name}``) to a URL;
    a component adds its own when it listens and removes it when it stops.
    """

    listeners: dict[str, str] = field(default_factory=dict)
    mqtt_brokers: dict[Key, MqttBrokerSource] = field(default_factory=dict)
    """Running MqttBrokerSources, for MqttSinks that publish in-process."""

    def ingress_url(self, namespace: str, name: str) -> str | None:
        """A Broker's HTTP address (Knative's ``status.address.url``), once HTTP listens."""
        base = self.listeners.get("http")
        return f"{base}/{namespace}/{name}" if base else None

    def channel_url(self, namespace: str, name: str) -> str | None:
        """A Channel's HTTP address, once HTTP listens."""
        base = self.listeners.get("http")
        return f"{base}{CHANNEL_PREFIX}/{namespace}/{name}" if base else None

    def connected_devices(self) -> int:
        """MQTT clients connected to this node's running brokers now."""
        return sum(len(source.broker.connected_clients) for source in self.mqtt_brokers.values())

    def mqtt_broker(self, namespace: str) -> MqttBrokerSource | None:
        """The namespace's running MqttBrokerSource (the first by name when several run)."""
        for key in sorted(self.mqtt_brokers):
            if key[1] == namespace:
                return self.mqtt_brokers[key]
        return None


class MqttSpan(Protocol):
    """What an embedded MQTT broker uses to span the nodes of a mesh: who receives
    a message anywhere (``router``), sessions and retained messages everywhere
    (``sessions``); opened before the broker starts, closed after it stops."""

    @property
    def router(self) -> Router: ...

    @property
    def sessions(self) -> SessionStore: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """What ``describe`` adds to the broker's status (routing and session counters)."""
        ...


class MeshNode(Protocol):
    """This node's part of a mesh, as the runtime sees it (:class:`headwater.cluster.Mesh`)."""

    @property
    def node(self) -> str:
        """This node's name in the mesh."""
        ...

    def wrap(self, resource: Resource, component: Component) -> Component:
        """``component`` as it runs in the mesh (under a lease when one node at a
        time must run it; else itself)."""
        ...

    def mqtt(self, source: str, max_message_size: int) -> MqttSpan:
        """The router and session store of the MqttBrokerSource ``source`` (``ns/name``)."""
        ...

    async def live_nodes(self) -> set[str]:
        """The names of the mesh's live nodes: a heartbeat within the registry's TTL, or
        seen alive less than that TTL before this process could look again (after an
        outage of NATS every entry has expired)."""
        ...

    def info(self) -> dict[str, Any]:
        """What the API's info says of the mesh (its servers, namespace, replicas)."""
        ...


@dataclass(frozen=True, eq=False)
class Context:
    """What builders may use; see the module docstring."""

    log: EventLog
    """Every Broker's and Channel's stream (InMemoryChannels keep their own)."""
    state: StateStore
    destinations: Destinations
    http: HttpClients
    registry: Registry
    dead_letters: DeadLetterRecords
    devices: Devices
    """The device registry, presence, twins and commands (one per node)."""
    data_dir: Path | None
    """Where components keep what they store unless their resource names a place
    (None: in memory)."""
    mesh: MeshNode | None = None
    """On a node of a mesh (``headwater up --nats``); None: a single node."""


Builder = Callable[[Context, Any], Component]
"""``build(context, resource) -> Component`` for one kind's resources."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind's entry in a builder table: how it is built, and when it starts."""

    build: Builder
    stage: Stage
