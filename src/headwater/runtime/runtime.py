"""The running mesh: the reconciler plus the components each kind becomes.

How this works: ``Runtime`` owns the event log, the reconciler and one
builder per kind. Addressable components (Brokers, Channels, sinks) expose a
``sink`` that Destinations resolve to, so a PingSource, a Trigger or a dead
letter route reaches an in-process receiver without a socket; a ``uri``
Destination resolves to a pooled HTTP sink.

Every DeliverySpec the runtime builds carries the runtime's
:class:`DeadLetters` as its recorder, so each event a Trigger or Subscription
gives up on is kept in a durable stream of the log, with the ``knativeerror*``
extensions and the resource it came from, ready to be listed and re-driven.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp

from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryError, DeliverySpec, HttpSink, Sink, new_session
from headwater.eventing._http1 import Http1Client
from headwater.eventing.delivery import Deliverer, Outcome, dead_letter_event
from headwater.eventing.dispatcher import Dispatcher
from headwater.eventing.http_worker import HttpWorker
from headwater.eventing.sink import deliver_many
from headwater.log import (
    DEFAULT_MAX_EVENT_SIZE,
    EARLIEST,
    LATEST,
    EventLog,
    EventTooLarge,
    LogError,
    MemoryLog,
    Start,
    StreamConfig,
)
from headwater.resources import DeliverySpec as ResourceDelivery
from headwater.resources import (
    Destination,
    Loaded,
    LoadResult,
    Resource,
    Subscription,
    Trigger,
    parse_start,
)
from headwater.runtime import components
from headwater.runtime import mqtt as mqtt_components
from headwater.runtime import sinks as sink_components
from headwater.runtime import tiers as tier_components
from headwater.runtime.applied import Origin, Resources
from headwater.runtime.components import BrokerComponent, ChannelComponent
from headwater.runtime.reconciler import ApplyResult, Builder, Component, Key, Reconciler
from headwater.state import MemoryStore, StateStore

if TYPE_CHECKING:
    from headwater.cluster.mesh import Mesh

log = logging.getLogger(__name__)


# Component tables, one per module that defines kinds: ``{kind: builder}``.
COMPONENT_TABLES: tuple[Mapping[str, Callable[[Runtime, Any], Component]], ...] = (
    components.BUILDERS,
    mqtt_components.BUILDERS,
    sink_components.BUILDERS,
    tier_components.BUILDERS,
)


CHANNEL_PREFIX: Final = "/channels"
"""Channels' HTTP ingress: ``POST /channels/{namespace}/{name}`` (Brokers' is ``/{ns}/{name}``)."""


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

    def _sink(self) -> Sink:
        component = self._runtime.reconciler.component(self.key)
        sink: Sink | None = getattr(component, "sink", None)
        if sink is None:
            raise DeliveryError(
                None, True, reason=f"{self.key[0]} {self.key[1]}/{self.key[2]} is not ready"
            )
        return sink

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        return await self._sink().deliver(event)

    async def deliver_many(self, events: Sequence[CloudEvent]) -> None:
        """All of ``events`` in one call where the receiver takes batches (a Broker)."""
        await deliver_many(self._sink(), events)

    def __repr__(self) -> str:
        return f"RefSink({self.url})"


# -- dead letters -------------------------------------------------------------------

DEAD_LETTER_STREAM: Final = "headwater/deadletters"
"""The log stream that keeps every event a Trigger or Subscription gave up on."""

DEAD_LETTER_RETENTION: Final = StreamConfig(
    max_age=7 * 86400.0,
    max_bytes=256 * 1024 * 1024,
    max_event_size=DEFAULT_MAX_EVENT_SIZE + 64 * 1024,
)
"""A week or 256 MiB, whichever is reached first: time to notice a failing
subscriber over a weekend and re-drive, on a gateway's disk. Past it the
oldest records go (retention never refuses an append, so recording never
blocks delivery). The event size limit leaves room for the error extensions
on top of the largest event a Broker accepts."""

DEAD_LETTER_SCAN: Final = 5000
"""Entries one listing or lookup reads at most from the dead-letter stream:
a listing shows the records among the newest this many entries, so a request
costs a bounded read whatever the stream holds."""

ERROR_TEXT_LIMIT: Final = 512
"""Characters of the delivery error kept in ``headwatererror``."""

# Extensions of a record, beyond Knative's knativeerror* ones.
ORIGIN_EXTENSION: Final = "headwaterorigin"  # Kind/namespace/name of the Trigger/Subscription
FAILED_AT_EXTENSION: Final = "headwaterfailedat"  # when it was given up on (RFC 3339)
ERROR_EXTENSION: Final = "headwatererror"  # the last error, as text
DATA_OMITTED_EXTENSION: Final = "headwaterdataomitted"  # data too large to keep alongside
# A re-drive appends a marker (the log is append-only: records are never edited).
REDRIVE_TYPE: Final = "dev.headwater.deadletter.redriven"
REDRIVEN_EXTENSION: Final = "headwaterredriven"  # the record's id
OUTCOME_EXTENSION: Final = "headwateroutcome"  # an Outcome: delivered | dead-lettered | dropped

RECORD_EXTENSIONS: Final = (
    "knativeerrordest",
    "knativeerrorcode",
    "knativeerrordata",
    ORIGIN_EXTENSION,
    FAILED_AT_EXTENSION,
    ERROR_EXTENSION,
    DATA_OMITTED_EXTENSION,
)


def _ascii_text(text: str, limit: int) -> str:
    """Text fit for a CloudEvent string extension: printable ASCII, bounded."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in escaped)[:limit]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter stream: ``id`` is its offset there."""

    id: int
    event: CloudEvent
    """The event as it failed, with the ``knativeerror*`` and ``headwater*`` extensions."""
    redriven: str | None = None
    """The outcome of the latest re-drive (an :class:`Outcome` value), if any."""

    @property
    def origin(self) -> Key | None:
        kind, _, rest = str(self.event.get(ORIGIN_EXTENSION, "")).partition("/")
        namespace, _, name = rest.partition("/")
        return (kind, namespace, name) if kind and namespace and name else None

    def original(self) -> CloudEvent:
        """The event as it was before it failed (the record's own extensions removed)."""
        return self.event.evolve(dict.fromkeys(RECORD_EXTENSIONS))


class RedriveRefused(Exception):
    """A dead letter cannot be re-driven now; the message says why."""


class DeadLetters:
    """The durable record of given-up events, and their re-drive.

    It is the :class:`~headwater.eventing.delivery.DeadLetterRecorder` of every
    DeliverySpec the runtime builds: a record is appended (durably) before the
    delivery ends, so an event a subscriber never took is kept whether or not
    a dead letter sink is configured, and whether or not that sink took it.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._created = False
        self._redriving: set[int] = set()
        # When each origin last gave an event up (time.time()), for "failing"
        # in the dashboard's topology; at most one entry per resource.
        self.given_up: dict[Key, float] = {}

    async def _stream(self) -> str:
        if not self._created:
            await self._runtime.log.create_stream(DEAD_LETTER_STREAM, DEAD_LETTER_RETENTION)
            self._created = True
        return DEAD_LETTER_STREAM

    async def __call__(self, deliverer: Deliverer, event: CloudEvent, error: DeliveryError) -> None:
        await self.record(self._runtime.origin_of(deliverer), deliverer.destination, event, error)

    async def record(
        self, origin: Key | None, destination: str, event: CloudEvent, error: DeliveryError
    ) -> None:
        """Keep ``event``, given up on by ``origin`` while sending to ``destination``."""
        if origin is not None:
            self.given_up[origin] = time.time()
        failed = dead_letter_event(event, destination, error)
        record = failed.evolve(
            {
                ORIGIN_EXTENSION: "/".join(origin) if origin else None,
                FAILED_AT_EXTENSION: datetime.now(UTC).isoformat(timespec="milliseconds"),
                ERROR_EXTENSION: _ascii_text(str(error), ERROR_TEXT_LIMIT) or None,
            }
        )
        stream = await self._stream()
        try:
            await self._runtime.log.append(stream, [record])
        except EventTooLarge:
            # Bigger than any Broker accepts (an InMemoryChannel has no limit):
            # keep what failed and why, without the payload.
            slim = record.evolve({DATA_OMITTED_EXTENSION: "true"}, keep_data=False)
            await self._runtime.log.append(stream, [slim])

    async def info(self) -> tuple[int, int]:
        """``(first, last)`` retained offsets (``first > last`` when there is none)."""
        info = await self._runtime.log.info(await self._stream())
        return info.first_offset, info.last_offset

    async def _scan(self, first: int, last: int) -> tuple[dict[int, CloudEvent], dict[int, str]]:
        """Records and re-drive outcomes in ``first..last`` (offsets)."""
        records: dict[int, CloudEvent] = {}
        outcomes: dict[int, str] = {}
        if first > last:
            return records, outcomes
        log_ = self._runtime.log
        stream = await self._stream()
        consumer = f"view/{uuid.uuid4().hex}"
        reader = log_.reader(stream, consumer, Start.at_offset(first))
        try:
            position = first - 1
            while position < last:
                # Everything up to `last` is stored: the wait only matters for a
                # backend that fetches over the network (JetStream).
                batch = await reader.next_batch(min(256, last - position), timeout=1.0)
                if not batch:
                    break
                for offset, event in batch:
                    if offset > last:
                        break
                    target = event.get(REDRIVEN_EXTENSION)
                    if event.type == REDRIVE_TYPE and isinstance(target, str) and target.isdigit():
                        outcomes[int(target)] = str(event.get(OUTCOME_EXTENSION, ""))
                    else:
                        records[offset] = event
                position = batch[-1].offset
        finally:
            await reader.close()
            with contextlib.suppress(LogError):
                await log_.delete_consumer(stream, consumer)
        return records, outcomes

    async def list(
        self, limit: int, before: int | None = None, origin: Key | None = None
    ) -> list[DeadLetter]:
        """The newest ``limit`` records (below offset ``before``, of ``origin``), newest first."""
        first, last = await self.info()
        end = last if before is None else min(last, before - 1)
        # Each re-drive adds a marker (and a record when it fails again), so
        # four entries per wanted record is ample; never more than the bound.
        # Records of one origin may be spread among others': the whole bound.
        window = DEAD_LETTER_SCAN if origin is not None else min(DEAD_LETTER_SCAN, 4 * limit)
        start = max(first, end - window + 1)
        # Markers come after their records: read on to the end, within the bound.
        records, outcomes = await self._scan(start, min(last, start + 2 * DEAD_LETTER_SCAN))
        newest = sorted(records, reverse=True)
        letters = (DeadLetter(i, records[i], outcomes.get(i)) for i in newest)
        return [
            letter
            for letter in letters
            if letter.id <= end and (origin is None or letter.origin == origin)
        ][:limit]

    async def get(self, id: int) -> DeadLetter | None:
        first, last = await self.info()
        if not first <= id <= last:
            return None
        records, outcomes = await self._scan(id, min(last, id + DEAD_LETTER_SCAN))
        event = records.get(id)
        return DeadLetter(id, event, outcomes.get(id)) if event is not None else None

    async def redrive(self, id: int) -> tuple[DeadLetter, Outcome, Dispatcher]:
        """Deliver a record's event again, to its origin's current subscriber.

        It goes through the origin's own delivery pipeline (retries, dead
        letter sink, counters; failing again makes a new record) and the
        outcome is kept as a marker. Raises ``LookupError`` for an unknown id
        and :class:`RedriveRefused` when it cannot be re-driven now.
        """
        if id in self._redriving:
            raise RedriveRefused(f"dead letter {id} is being re-driven already")
        self._redriving.add(id)
        try:
            letter = await self.get(id)
            if letter is None:
                raise LookupError(f"no dead letter {id}")
            if letter.redriven == Outcome.DELIVERED.value:
                raise RedriveRefused(f"dead letter {id} was re-driven and delivered already")
            origin = letter.origin
            if origin is None:
                raise RedriveRefused(f"dead letter {id} does not name a Trigger or Subscription")
            dispatcher = self._runtime.dispatcher(origin)
            if dispatcher is None:
                raise RedriveRefused(f"{origin[0]} {origin[1]}/{origin[2]} is not running")
            outcome = await dispatcher.deliverer.deliver(letter.original())
            marker = CloudEvent(
                {
                    "specversion": "1.0",
                    "id": uuid.uuid4().hex,
                    "source": "/headwater/deadletters",
                    "type": REDRIVE_TYPE,
                    REDRIVEN_EXTENSION: str(id),
                    OUTCOME_EXTENSION: outcome.value,
                }
            )
            await self._runtime.log.append(await self._stream(), [marker])
            return replace(letter, redriven=outcome.value), outcome, dispatcher
        finally:
            self._redriving.discard(id)


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
    their own). The runtime owns it and closes it in :meth:`close`.
    """

    def __init__(
        self,
        log: EventLog | None = None,
        *,
        http_worker: bool = False,
        state: StateStore | None = None,
        data_dir: Path | None = None,
        mesh: Mesh | None = None,
    ) -> None:
        self.started = time.time()
        # In a mesh (``headwater up --nats``): this node's part of it (see headwater.cluster).
        self.mesh = mesh
        self.node: str | None = mesh.node if mesh is not None else None
        self.listeners: dict[str, str] = {}
        self.log: EventLog = log if log is not None else MemoryLog()
        # What the API applied is kept here (see runtime.applied); owned and closed here.
        self.state: StateStore = state if state is not None else MemoryStore()
        # Where components keep what they store unless their resource names a place
        # (None: in memory).
        self.data_dir = data_dir
        self._session: aiohttp.ClientSession | None = None
        self._delivery_client: Http1Client | None = None
        # HttpSinks' requests made by a worker process (see eventing.http_worker).
        self.http_worker: HttpWorker | None = HttpWorker() if http_worker else None
        builders: dict[str, Builder] = {
            kind: self._builder(build)
            for table in COMPONENT_TABLES
            for kind, build in table.items()
        }
        self.reconciler = Reconciler(builders)
        self.desired = Resources(self.reconciler, self.state)
        self.dead_letters = DeadLetters(self)
        if mesh is not None:
            mesh.bind(self)

    def _builder(self, build: Callable[[Runtime, Any], Component]) -> Builder:
        async def builder(resource: Resource) -> Component:
            component = build(self, resource)
            if self.mesh is not None:
                component = self.mesh.wrap(resource, component)
            return component

        return builder

    # -- what components need ----------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        """One pooled aiohttp client for the sinks that speak HTTP APIs (InfluxDB, ...)."""
        if self._session is None:
            self._session = new_session()
        return self._session

    @property
    def delivery_client(self) -> HttpWorker | Http1Client:
        """What makes HttpSinks' POSTs: the worker process, or one pooled client in process."""
        if self.http_worker is not None:
            return self.http_worker
        if self._delivery_client is None:
            self._delivery_client = Http1Client()
        return self._delivery_client

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

    def channel_lookup(self, namespace: str, name: str) -> ChannelFanout | None:
        """The running Channel (or InMemoryChannel) at ``/channels/{namespace}/{name}``."""
        for kind in ("Channel", "InMemoryChannel"):
            component = self.reconciler.component((kind, namespace, name))
            if isinstance(component, ChannelComponent):
                return component.channel
        return None

    def channel_url(self, namespace: str, name: str) -> str | None:
        """A Channel's HTTP address (Knative's ``status.address.url``)."""
        base = self.listeners.get("http")
        return f"{base}{CHANNEL_PREFIX}/{namespace}/{name}" if base else None

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
        http = HttpSink(destination.uri, session=self.delivery_client, format=fmt)
        return http, destination.uri

    def delivery_spec(self, delivery: ResourceDelivery | None, namespace: str) -> DeliverySpec:
        """The resolved spec (Knative's defaults when None), recording into :attr:`dead_letters`."""
        if delivery is None:
            return DeliverySpec(recorder=self.dead_letters)

        def resolve_sink(raw: Mapping[str, Any]) -> tuple[Sink, str]:
            return self.resolve_with_uri(Destination.model_validate(raw), namespace)

        spec = DeliverySpec.from_knative(
            delivery.model_dump(by_alias=True, exclude_none=True), resolve_sink
        )
        return replace(spec, recorder=self.dead_letters)

    def dispatcher(self, key: Key) -> Dispatcher | None:
        """The running dispatcher of a Trigger or Subscription (None when not running)."""
        resource = self.get(key)
        member = getattr(self.reconciler.component(key), "member", None)
        if member is None:
            return None
        try:
            if isinstance(resource, Trigger):
                fanout: BrokerFanout | ChannelFanout = self.broker(key[1], resource.spec.broker)
            elif isinstance(resource, Subscription):
                ref = resource.spec.channel
                fanout = self.channel(ref.kind, key[1], ref.name)
            else:
                return None
        except UnresolvedDestination:
            return None
        return fanout.dispatchers().get(member.consumer)

    def origin_of(self, deliverer: Deliverer) -> Key | None:
        """The Trigger or Subscription whose dispatcher delivers with ``deliverer``."""
        for kind in ("Trigger", "Subscription"):
            for resource in self.resources(kind):
                dispatcher = self.dispatcher(resource.key)
                if dispatcher is not None and dispatcher.deliverer is deliverer:
                    return resource.key
        return None

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
        info: dict[str, Any] = {
            "uptimeSeconds": round(time.time() - self.started, 3),
            "listeners": self.listeners,
        }
        if self.mesh is not None:
            info["node"] = self.mesh.node
            info["mesh"] = {
                "servers": list(self.mesh.options.servers),
                "namespace": self.mesh.namespace,
                "replicas": self.mesh.replicas,
            }
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
        return await self.desired.start(files)

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
        fanouts = [
            c.broker if isinstance(c, BrokerComponent) else c.channel
            for c in map(self.reconciler.component, self._fanout_keys())
            if isinstance(c, BrokerComponent | ChannelComponent)
        ]
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
        if self.http_worker is not None:
            await self.http_worker.close()
        if self._delivery_client is not None:
            await self._delivery_client.close()
            self._delivery_client = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.log.close()
        await self.state.close()
