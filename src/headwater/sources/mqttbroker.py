"""MqttBrokerSource: the embedded MQTT broker, whose publishes become CloudEvents.

How this works: :class:`MqttBrokerSource` runs an
:class:`~headwater.mqtt.broker.MqttBroker` with an ``on_publish`` hook. The
broker acknowledges (PUBACK/PUBREC) and routes a message only once the hook
returned; hooks of one connection's consecutive PUBLISHes run concurrently
(up to the broker's ``receive_maximum``, then it stops reading that
connection) and take effect in arrival order, so:

* a publish whose topic matches the source's filters is mapped
  (:mod:`headwater.sources.mapping`) and handed to ``emit`` (the sink: a
  Broker's or Channel's durable append); only when ``emit`` returns is the
  message acknowledged and routed to subscribing devices. Ack means durable.
* a slow log slows exactly the connections that publish (backpressure:
  beyond ``receive_maximum`` pending appends their next packets wait in the
  socket); after :data:`DEFAULT_APPEND_TIMEOUT`
  or when the log fails, an MQTT 5 publisher gets a failure reason code in
  its PUBACK and an MQTT 3.1.1 publisher is disconnected without an ack (it
  resends on reconnect). Nothing is acknowledged and then dropped.
* QoS 0 has no ack to withhold: a failed QoS 0 append is counted
  (``dropped_qos0``) and the message is still routed to devices.

Defined outcomes for bad input (each counted in :class:`SourceStats`):

========================================  =============================================
payload over ``max_event_size``           refused for good: PUBACK 0x97 Quota exceeded
                                          (5.0) / acknowledged and dropped (3.1.1, which
                                          cannot hear a refusal); not routed
a topic or carried CloudEvent that        refused for good: PUBACK 0x99 Payload format
cannot make a valid event                 invalid (5.0) / acknowledged and dropped (3.1.1)
the log is full (disk, quota)             refused for now: PUBACK 0x97 Quota exceeded
                                          (5.0) / disconnect without an ack (3.1.1): the
                                          device resends once there is room
topic outside the pattern (``Unmatched``) routed between devices, no event
non-UTF-8 / non-JSON payload              an event with ``application/octet-stream`` data
========================================  =============================================

"For good" is a :class:`~headwater.mqtt.broker.Refusal`: the message can never
become an event, so a 3.1.1 device that resent it after every reconnect would
loop forever and its later messages would never be acknowledged.

Device connects/disconnects become ``dev.headwater.device.connected`` /
``...disconnected`` events (best effort: a failed append is logged and
counted, there is nothing to refuse), appended in batches of the events of
:data:`~headwater.sources.device_events.WINDOW` (a reconnect storm of 10,000 devices is not
10,000 appends). With a device plane (``devices``, the registry's side of the
broker: :mod:`headwater.devices.plane`), the plane
authenticates CONNECTs first, hears connects, disconnects and SUBACKs,
takes the publishes it selects (twin reports, command answers) instead of
the mapping, and adds the device's id and labels to its device events.

Event ids are ``{instance}-{n}``: unique per message, across restarts too.
A resend is not a new message: the broker itself answers a QoS 2 resend whose
PUBREC went out, and a QoS 1/2 resend (DUP=1, same packet id) whose first
copy was appended but whose ack never reached the device (the connection
dropped in between) is recognised by :class:`~headwater.sources.redelivery.Redeliveries`
and acknowledged without a second event (``duplicatesSuppressed``). Only a
crash between the append and the ack can still duplicate (at least once).
Ids are deliberately not derived from packet id and payload: packet ids are
reused once acknowledged, so a device repeating the same reading would get
the same id for two different messages, which CloudEvents forbids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, cast

from headwater import tracing
from headwater.cloudevents import CloudEvent, InvalidEvent
from headwater.log import EncodedEvents, EventTooLarge, LogFull, encode_record
from headwater.logs import Throttle
from headwater.mqtt.broker import BrokerConfig, ClientInfo, MqttBroker, Refusal
from headwater.mqtt.config import Authenticator, Hooked, Outcome
from headwater.mqtt.packets import ReasonCode
from headwater.mqtt.router import Router
from headwater.mqtt.session import Message, Subscription
from headwater.mqtt.stores import SessionStore
from headwater.mqtt.topics import topic_matches
from headwater.sources.device_events import (
    CONNECTED_TYPE,
    DISCONNECTED_TYPE,
    DeviceEvent,
    DeviceEvents,
)
from headwater.sources.device_events import listener_host as _host
from headwater.sources.mapping import (
    CONTENT_TYPE_EXTENSION,
    IdSequence,
    Mapping,
    Unmatched,
    map_publish,
)
from headwater.sources.redelivery import Redeliveries, fingerprint
from headwater.tracing.flows import Ingest, decided, ingest_mqtt

__all__ = [
    "CONNECTED_TYPE",
    "DEFAULT_APPEND_TIMEOUT",
    "DISCONNECTED_TYPE",
    "DeviceHooks",
    "MqttBrokerSource",
    "SourceStats",
]

log = logging.getLogger(__name__)

Emit = Callable[[CloudEvent], Awaitable[object]]
EmitMany = Callable[[Sequence[CloudEvent]], Awaitable[object]]


def _one_by_one(emit: Emit) -> EmitMany:
    """``emit_many`` for a sink that takes one event at a time (concurrently)."""

    async def emit_many(events: Sequence[CloudEvent]) -> None:
        if len(events) == 1:
            await emit(events[0])
            return
        results = await asyncio.gather(*(emit(e) for e in events), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    return emit_many


class DeviceHooks(Protocol):
    """A device plane: the registry's side of the broker (see :mod:`headwater.devices.plane`)."""

    @property
    def authenticator(self) -> Authenticator:
        """Asked at every CONNECT before the password file."""
        ...

    def attach(self, broker: MqttBroker) -> None: ...

    def selects(self, topic: str) -> bool:
        """Whether the plane takes publishes to ``topic`` (cheap: cached per topic)."""
        ...

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> Sequence[Outcome]: ...

    def connected(self, info: ClientInfo) -> DeviceEvent | None:
        """A client connected (before its device event): what the event adds, if a device."""
        ...

    def disconnected(self, info: ClientInfo) -> DeviceEvent | None: ...

    def subscribed(self, info: ClientInfo, subscriptions: Sequence[Subscription]) -> None: ...

    #: Set by the source: records a connection that ended with the mesh node holding it.
    on_lost: Callable[[ClientInfo, DeviceEvent], object] | None


DEFAULT_APPEND_TIMEOUT: Final = 10.0
"""Seconds a publish waits for its durable append before the publisher is told to
retry (PUBACK 0x97 for MQTT 5). Long enough for a SQLite fsync under load or
a JetStream leader election; short enough that a device does not time out first."""

_MATCH_CACHE_MAX: Final = 10_000
"""Topics whose filter verdict is cached; the cache is cleared when full (bounded memory)."""


@dataclass(slots=True)
class SourceStats:
    """Counters; every message that did not become an event is in exactly one."""

    events: int = 0
    unmatched: int = 0
    too_large: int = 0
    invalid: int = 0
    append_failures: int = 0
    dropped_qos0: int = 0
    device_events_failed: int = 0
    #: DUP resends of messages already appended: acknowledged, not appended again.
    duplicates_suppressed: int = 0
    #: MQTT 5 Content Types that are no media type, kept as ``mqttcontenttype``.
    content_types_kept: int = 0
    #: Appends that stored events (``events / appends``: events per append call).
    appends: int = 0

    def snapshot(self) -> dict[str, int]:
        return {
            "events": self.events,
            "unmatched": self.unmatched,
            "tooLarge": self.too_large,
            "invalid": self.invalid,
            "appendFailures": self.append_failures,
            "droppedQos0": self.dropped_qos0,
            "deviceEventsFailed": self.device_events_failed,
            "duplicatesSuppressed": self.duplicates_suppressed,
            "contentTypesKept": self.content_types_kept,
            "appends": self.appends,
        }


class MqttBrokerSource:
    """``async with MqttBrokerSource(...) as source``: the broker runs while inside.

    It is the broker's :class:`~headwater.mqtt.config.PublishHook`: the selected
    PUBLISHes of one socket read arrive as a batch, become CloudEvents together
    and are handed to ``emit_many`` in one call (for a Broker: one durable
    append, one share of a group commit), under one timeout.
    """

    def __init__(
        self,
        config: BrokerConfig,
        mapping: Mapping,
        emit: Emit,
        *,
        emit_many: EmitMany | None = None,
        topics: tuple[str, ...] = ("#",),
        device_events: bool = True,
        max_event_size: int = 1024 * 1024,
        append_timeout: float = DEFAULT_APPEND_TIMEOUT,
        name: str = "mqttbroker",
        devices: DeviceHooks | None = None,
        router: Router | None = None,
        store: SessionStore | None = None,
    ) -> None:
        self.mapping = mapping
        self.emit = emit
        self.emit_many: EmitMany = emit_many or _one_by_one(emit)
        self.topics = topics
        self.device_events = device_events
        self.max_event_size = max_event_size
        self.append_timeout = append_timeout
        self.name = name
        self.stats = SourceStats()
        self.throttle = Throttle(log)
        self.ids = IdSequence()
        self.redeliveries = Redeliveries()
        self._matches: dict[str, bool] = {}
        self._responses: dict[str, asyncio.Future[Message]] = {}
        self._device_events = DeviceEvents(
            self.emit_many,
            self.ids,
            # What the sink stamps on each event (a Broker's TTL), set once per listener.
            stamped=mapping.stamped,
            append_timeout=append_timeout,
            name=name,
            on_failure=self._device_event_failed,
            throttle=self.throttle,
        )
        self.devices = devices
        hooked = device_events or devices is not None
        self.broker = MqttBroker(
            config,
            hook=self,
            on_connect=self._on_connect if hooked else None,
            on_disconnect=self._on_disconnect if hooked else None,
            on_subscribe=devices.subscribed if devices is not None else None,
            authenticators=[devices.authenticator] if devices is not None else (),
            router=router,  # in a mesh: routing and sessions over NATS
            store=store,
        )
        if devices is not None:
            devices.attach(self.broker)
            devices.on_lost = self._on_lost

    async def __aenter__(self) -> MqttBrokerSource:
        await self.broker.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.broker.__aexit__(*exc_info)

    def expect_response(self, topic: str) -> asyncio.Future[Message]:
        """A future for the next publish to ``topic`` (an MqttSink's response topic).

        That publish resolves the future instead of becoming an event of this
        source; it is still routed to subscribers.
        """
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._responses[topic] = future
        future.add_done_callback(lambda _: self._responses.pop(topic, None))
        return future

    def selects(self, topic: str) -> bool:
        """Whether a publish to ``topic`` becomes an event (or answers an MqttSink)."""
        if self._responses and topic in self._responses:
            return True
        verdict = self._matches.get(topic)
        if verdict is None:
            if len(self._matches) >= _MATCH_CACHE_MAX:
                self._matches.clear()
            verdict = any(topic_matches(f, topic) for f in self.topics) or (
                self.devices is not None and self.devices.selects(topic)
            )
            self._matches[topic] = verdict
        return verdict

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> Sequence[Outcome]:
        """Map a batch of publishes to events and append them together."""
        devices = self.devices
        if devices is not None and any(devices.selects(h.message.topic) for h in batch):
            return await self._with_devices(devices, info, batch)
        return await self._events(info, batch)

    async def _with_devices(
        self, devices: DeviceHooks, info: ClientInfo, batch: Sequence[Hooked]
    ) -> list[Outcome]:
        """The device plane's publishes go to it, the rest become events, in one answer."""
        mine = [i for i, h in enumerate(batch) if devices.selects(h.message.topic)]
        taken = set(mine)
        rest = [i for i in range(len(batch)) if i not in taken]
        outcomes: list[Outcome] = [None] * len(batch)
        if rest:
            for i, outcome in zip(
                rest, await self._events(info, [batch[i] for i in rest]), strict=True
            ):
                outcomes[i] = outcome
        for i, outcome in zip(mine, await devices(info, [batch[i] for i in mine]), strict=True):
            outcomes[i] = outcome
        return outcomes

    async def _events(self, info: ClientInfo, batch: Sequence[Hooked]) -> list[Outcome]:
        stats = self.stats
        outcomes: list[Outcome] = [None] * len(batch)
        events: list[CloudEvent] = []
        indexes: list[int] = []  # the batch index of each event, in order
        # Their log records, encoded by the mapping (None: one the log encodes).
        records: list[bytes | None] = []
        # packet id -> fingerprint of the QoS 1/2 ones: their appends are under way.
        prints: dict[int, int] = {}
        sender = info.client_id
        now = time.time()
        host = _host(info.listener)
        version = int(info.protocol_version)
        mapping = self.mapping
        ids = iter(self.ids.take(len(batch)))
        responses = self._responses
        max_size = self.max_event_size
        for index, (message, packet_id, dup) in enumerate(batch):
            if responses:
                waiting = responses.pop(message.topic, None)
                if waiting is not None and not waiting.done():
                    waiting.set_result(message)
                    continue
            payload = message.payload
            if len(payload) > max_size:
                stats.too_large += 1
                self.throttle.warning(
                    "too-large",
                    "%s: %d-byte publish by %s to %r is over the %d-byte event limit",
                    self.name,
                    len(message.payload),
                    sender,
                    message.topic,
                    self.max_event_size,
                )
                outcomes[index] = Refusal(ReasonCode.QUOTA_EXCEEDED)
                continue
            if packet_id is not None:
                print_ = fingerprint(message.topic, payload)
                if not dup:
                    self.redeliveries.reused(sender, packet_id)
                elif await self.redeliveries.is_resend(sender, packet_id, print_):
                    stats.duplicates_suppressed += 1
                    continue  # [MQTT-4.3.2-2] acknowledged again, the event exists once
            try:
                event = map_publish(
                    mapping,
                    message.topic,
                    payload,
                    message.qos,
                    message.retain,
                    message.content_type,
                    message.user_properties,
                    sender,
                    host,
                    version,
                    next(ids),
                    now,
                    records,
                )
            except Unmatched:
                stats.unmatched += 1
                continue
            except (InvalidEvent, ValueError) as exc:
                stats.invalid += 1
                self.throttle.warning(
                    "invalid", "%s: publish by %s to %r: %s", self.name, sender, message.topic, exc
                )
                outcomes[index] = Refusal(ReasonCode.PAYLOAD_FORMAT_INVALID)
                continue
            if message.content_type is not None and CONTENT_TYPE_EXTENSION in event:
                stats.content_types_kept += 1
            events.append(event)
            indexes.append(index)
            if packet_id is not None:
                prints[packet_id] = print_
        if not events:
            return outcomes
        flight = self.redeliveries.begin(sender, prints) if prints else None
        ok: bool | None = None  # None: the append did not finish (cancelled, or a bug)
        try:
            traced: Ingest | None = None
            if tracing.tracer is not None:
                mapped = events
                messages = [batch[index].message for index in indexes]
                events, traced = ingest_mqtt(
                    tracing.tracer, events, messages, client_id=sender, received=now
                )
                # The events the head gave a context of Headwater's (sampled ones)
                # are encoded again; the rest keep the records encoded above.
                records = [
                    record if event is before else encode_record(event)
                    for record, event, before in zip(records, events, mapped, strict=True)
                ]
            with decided():  # the Broker takes no second head decision
                if None not in records:
                    # Every record encoded once here; each event carries what the
                    # mapping stamps (a Broker's TTL): nothing left to redo downstream.
                    encoded = cast("list[bytes]", records)
                    stamped = dict(mapping.stamped)
                    ok = await self._append(
                        sender, batch, EncodedEvents(events, encoded, stamped), indexes, outcomes
                    )
                else:
                    ok = await self._append(sender, batch, events, indexes, outcomes)
            if traced is not None:
                traced.end(failures=[outcomes[index] for index in indexes])
            return outcomes
        finally:
            if flight is not None:
                # What is in the log: all of the batch, or (after a failure or when
                # appended one by one) those whose outcome is an acceptance; when
                # unknown, nothing (a resend is appended again: at least once).
                appended = prints
                if ok is None:
                    appended = {}
                elif not ok:
                    appended = {
                        pid: prints[pid]
                        for index in indexes
                        if outcomes[index] is None
                        and (pid := batch[index].packet_id) is not None
                        and pid in prints
                    }
                self.redeliveries.end(sender, flight, appended)

    async def _append(
        self,
        sender: str,
        batch: Sequence[Hooked],
        events: Sequence[CloudEvent],
        indexes: list[int],
        outcomes: list[Outcome],
    ) -> bool:
        """Append ``events`` in one call; the outcome of each goes to ``outcomes``.
        True when every one of them was appended."""
        stats = self.stats
        failure: BaseException | None = None
        try:
            # asyncio.timeout, not wait_for: no extra task per batch on the hot path.
            async with asyncio.timeout(self.append_timeout):
                await self.emit_many(events)
        except EventTooLarge as exc:
            if len(events) == 1:
                failure = exc
            else:
                # One event of the batch is over the log's limit (an event is larger
                # than its payload): find it by appending one by one.
                for event, index in zip(events, indexes, strict=True):
                    await self._append(sender, batch, [event], [index], outcomes)
                return False
        except Exception as exc:
            failure = exc
        if failure is None:
            stats.events += len(events)
            stats.appends += 1
            return True
        code = _failure_code(failure)
        too_large = _too_large(failure)
        for index in indexes:
            if batch[index].message.qos == 0:
                stats.dropped_qos0 += 1
            elif too_large:
                stats.too_large += 1
                outcomes[index] = Refusal(code)  # as large again next time: never accepted
            else:
                stats.append_failures += 1
                outcomes[index] = code
        self.throttle.warning(
            "append-failed",
            "%s: append failed, refusing %d publishes by %s: %s",
            self.name,
            len(events),
            sender,
            failure,
        )
        return False

    def _device_event_failed(self, count: int) -> None:
        self.stats.device_events_failed += count

    async def _on_connect(self, info: ClientInfo) -> None:
        extra = self.devices.connected(info) if self.devices is not None else None
        if self.device_events:
            await self._device_events.record(info, CONNECTED_TYPE, extra)

    async def _on_disconnect(self, info: ClientInfo) -> None:
        extra = self.devices.disconnected(info) if self.devices is not None else None
        if self.device_events:
            await self._device_events.record(info, DISCONNECTED_TYPE, extra)

    def _on_lost(self, info: ClientInfo, extra: DeviceEvent) -> None:
        """A device's connection ended with the mesh node that held it (it died)."""
        if self.device_events:
            self._device_events.record(info, DISCONNECTED_TYPE, extra)

    def status(self) -> dict[str, object]:
        broker = self.broker
        return {
            **self.stats.snapshot(),
            "listeners": [f"{host}:{port}" for _, host, port in broker.addresses],
            "connectedClients": len(broker.connected_clients),
            "messagesReceived": broker.stats.messages_received,
            "incompleteBytes": broker.incomplete_bytes,
            "incompleteOverBudget": broker.stats.incomplete_over_budget,
            "refusedAcknowledged": broker.stats.refused_acknowledged,
            "deniedDelivery": broker.stats.denied_delivery,
            "payloadFormatInvalid": broker.stats.payload_format_invalid,
            "sessionsResetOwner": broker.stats.sessions_reset_owner,
        }


def _too_large(exc: BaseException) -> bool:
    return isinstance(exc, EventTooLarge) or getattr(exc, "status", None) == 413


def _failure_code(exc: BaseException) -> ReasonCode:
    """The PUBACK reason code for a failed append."""
    if isinstance(exc, TimeoutError):
        return ReasonCode.QUOTA_EXCEEDED  # too slow: the device should back off and resend
    if isinstance(exc, LogFull) or getattr(exc, "status", None) == 507:
        # A full disk or stream quota: 0x97 Quota exceeded says what 0x83 does not.
        return ReasonCode.QUOTA_EXCEEDED
    if _too_large(exc):
        return ReasonCode.QUOTA_EXCEEDED
    return ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR
