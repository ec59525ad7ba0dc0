"""MqttSource: subscribe to an external MQTT broker, append what arrives, then acknowledge.

How this works: the project's MQTT client (:mod:`headwater.mqtt.client`)
does not acknowledge a received QoS 1/2 PUBLISH by itself: the source calls
``message.ack()`` once the event is durable, so a crash between receipt and
append leaves the message unacked and the external broker redelivers it from
the persistent session.

:class:`MqttSourceRunner` runs forever: connect (clean start off, a stable
client id, a session expiry so that the broker queues QoS 1/2 messages while
Headwater is away), subscribe to every topic with its QoS on every connect
(``$share/group/...`` filters work as any other), then take the messages
that have arrived (up to :data:`DEFAULT_BATCH`), map each to a CloudEvent
(:mod:`headwater.sources.mapping`), append them concurrently and acknowledge
them in arrival order ([MQTT-4.6.0-2]: PUBACKs in the order of the
PUBLISHes). A lost connection or a failed append drops the connection
without acking: the broker resends. Reconnects back off exponentially with
jitter, capped at ``max_backoff``, forever.

A message the broker resends (DUP) because our ack did not reach it, though
its first copy was appended (a batch whose other append failed, a connection
lost right after the append), is acknowledged without a second event
(:class:`~headwater.sources.redelivery.Redeliveries`, across reconnects of
one session; ``duplicatesSuppressed``).

Bad input is counted and acknowledged, never left unacked: redelivering it
would fail the same way forever and block the session behind it. Over MQTT 5
the PUBACK carries why (the broker still ends the flow [MQTT-4.3.2-5]):

========================================  ==============================================
payload over ``max_event_size`` (or       ``tooLarge``; PUBACK 0x97 Quota exceeded
the log refuses it as too large)
a carried CloudEvent that is malformed    ``invalid``; PUBACK 0x99 Payload format invalid
topic outside the pattern                 ``unmatched``; PUBACK success, no event
non-UTF-8 / non-JSON payload              an event with ``application/octet-stream`` data
========================================  ==============================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from headwater import tracing
from headwater.backoff import Backoff
from headwater.cloudevents import CloudEvent, InvalidEvent
from headwater.log import EventTooLarge
from headwater.logs import Throttle
from headwater.mqtt.client import (
    CONNECT_TIMEOUT,
    Client,
    ClientConfig,
    ConnectionLost,
    Message,
)
from headwater.mqtt.packets import ReasonCode
from headwater.sources.mapping import (
    CONTENT_TYPE_EXTENSION,
    IdSequence,
    Inbound,
    Mapping,
    Unmatched,
    to_cloudevent,
)
from headwater.sources.redelivery import Redeliveries, fingerprint
from headwater.tracing.flows import Ingest, Publish, decided, ingest_mqtt

__all__ = ["DEFAULT_BATCH", "MqttSourceRunner", "RunnerStats"]

log = logging.getLogger(__name__)

_refused = Throttle(log)
"""Messages refused (too large, not an event): a line a minute per source and kind."""

Emit = Callable[[CloudEvent], Awaitable[object]]
EmitMany = Callable[[Sequence[CloudEvent]], Awaitable[object]]

DEFAULT_BATCH: Final = 256
"""Messages appended concurrently before their acks go out. The broker's Receive
Maximum (the client's :data:`~headwater.mqtt.client.RECEIVE_MAXIMUM`) bounds how
many can be outstanding."""

INITIAL_BACKOFF: Final = 0.1
"""Seconds before the first reconnect; doubled up to ``max_backoff``, with jitter."""


@dataclass(slots=True)
class RunnerStats:
    events: int = 0
    unmatched: int = 0
    invalid: int = 0
    too_large: int = 0
    append_failures: int = 0
    duplicates_suppressed: int = 0
    #: MQTT 5 Content Types that are no media type, kept as ``mqttcontenttype``.
    content_types_kept: int = 0
    connects: int = 0
    last_error: str | None = None

    def snapshot(self) -> dict[str, object]:
        return {
            "events": self.events,
            "unmatched": self.unmatched,
            "invalid": self.invalid,
            "tooLarge": self.too_large,
            "appendFailures": self.append_failures,
            "duplicatesSuppressed": self.duplicates_suppressed,
            "contentTypesKept": self.content_types_kept,
            "connects": self.connects,
            "lastError": self.last_error,
        }


_SESSION: Final = ""
"""The sender key in :class:`Redeliveries`: the runner has one session with its broker."""


class MqttSourceRunner:
    """The external-broker source; :meth:`run` until cancelled."""

    def __init__(
        self,
        config: ClientConfig,
        topics: Sequence[tuple[str, int]],
        mapping: Mapping,
        emit: Emit,
        *,
        emit_many: EmitMany | None = None,
        max_backoff: float = 30.0,
        batch: int = DEFAULT_BATCH,
        listener: str | None = None,
        max_event_size: int = 1024 * 1024,
    ) -> None:
        self.config = config
        self.topics = tuple(topics)
        self.mapping = mapping
        self.emit = emit
        #: One append for a batch, where the sink takes batches (a Broker).
        self.emit_many = emit_many
        self.max_backoff = max_backoff
        self.batch = batch
        self.listener = listener or f"{config.host}:{config.port}"
        self.max_event_size = max_event_size
        self.ids = IdSequence()
        self.redeliveries = Redeliveries()
        self.stats = RunnerStats()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        delays = Backoff(INITIAL_BACKOFF, self.max_backoff, jitter=True)
        while True:
            try:
                async with Client(self.config) as client:
                    if not client.session_present:
                        # A new session: the broker resends nothing from before.
                        self.redeliveries.forget(_SESSION)
                    # A resumed session's messages arrive before the SUBACK, maybe more
                    # than the inbox holds (3.1.1 has no Receive Maximum): consume while
                    # resubscribing, or the reader blocks on the inbox, never reads the
                    # SUBACK, and the session is stuck.
                    consuming = asyncio.ensure_future(self._consume(client))
                    try:
                        # Resubscribe on every connect.
                        async with asyncio.timeout(CONNECT_TIMEOUT):  # not wait_for: see Client
                            await client.subscribe(self.topics)
                        self.stats.connects += 1
                        delays.reset()
                        self.connected.set()
                        await consuming
                    finally:
                        consuming.cancel()
                        with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
                            await consuming
            except (ConnectionLost, OSError, TimeoutError) as exc:
                self.stats.last_error = str(exc)
                log.warning("mqtt source %s: %s", self.listener, exc)
            finally:
                self.connected.clear()
            # Capped exponential backoff with full jitter, forever.
            await asyncio.sleep(delays.next())

    async def _consume(self, client: Client) -> None:
        async for message in client.messages:
            batch = [message, *client.pending(self.batch - 1)]
            await self._append(client, batch)
        raise ConnectionLost(str(client.error or "connection closed"))

    async def _append(self, client: Client, batch: list[Message]) -> None:
        now = time.time()
        version = int(client.version)
        stats = self.stats
        redeliveries = self.redeliveries
        reasons = [ReasonCode.SUCCESS] * len(batch)  # the ack of each packet
        events: list[CloudEvent] = []
        appending: list[tuple[int, int, int]] = []  # (batch index, packet id, fingerprint)
        for index, packet in enumerate(batch):
            pid = packet.packet_id
            print_ = 0
            if pid is not None:
                print_ = fingerprint(packet.topic, packet.payload)
                if not packet.dup:
                    redeliveries.reused(_SESSION, pid)
                elif redeliveries.was_appended(_SESSION, pid, print_):
                    stats.duplicates_suppressed += 1
                    redeliveries.suppressed += 1
                    continue
            if len(packet.payload) > self.max_event_size:
                stats.too_large += 1
                reasons[index] = ReasonCode.QUOTA_EXCEEDED
                _refused.warning(
                    (self.listener, "too-large"),
                    "mqtt source %s: %d-byte message on %r is over the %d-byte event limit",
                    self.listener,
                    len(packet.payload),
                    packet.topic,
                    self.max_event_size,
                )
                continue
            props = packet.properties
            inbound = Inbound(
                packet.topic,
                packet.payload,
                packet.qos,
                packet.retain,
                props.content_type,
                props.user_properties,
                self.config.client_id,
                self.listener,
                version,
            )
            try:
                event = to_cloudevent(self.mapping, inbound, self.ids.next(), now)
            except Unmatched:
                stats.unmatched += 1
                continue
            except (InvalidEvent, ValueError) as exc:
                stats.invalid += 1
                reasons[index] = ReasonCode.PAYLOAD_FORMAT_INVALID
                _refused.warning(
                    (self.listener, "invalid"),
                    "mqtt source %s: %r: %s",
                    self.listener,
                    packet.topic,
                    exc,
                )
                continue
            if props.content_type is not None and CONTENT_TYPE_EXTENSION in event:
                stats.content_types_kept += 1
            events.append(event)
            appending.append((index, pid or 0, print_))
        traced: Ingest | None = None
        if tracing.tracer is not None and events:
            published = [
                Publish(p.topic, p.qos, p.properties.user_properties)
                for p in (batch[index] for index, _, _ in appending)
            ]
            events, traced = ingest_mqtt(
                tracing.tracer,
                events,
                published,
                client_id=self.config.client_id,
                received=now,
            )
        with decided():  # the Broker takes no second head decision
            results = await self._emit_all(events)
        if traced is not None:
            traced.end(failures=[r if isinstance(r, BaseException) else None for r in results])
        error: BaseException | None = None
        for (index, pid, print_), result in zip(appending, results, strict=True):
            if isinstance(result, BaseException) and _too_large(result):
                stats.too_large += 1  # the log's limit is lower than ours: as above
                reasons[index] = ReasonCode.QUOTA_EXCEEDED
            elif isinstance(result, BaseException):
                stats.append_failures += 1
                error = error or result
            else:
                stats.events += 1
                if pid:
                    redeliveries.appended(_SESSION, pid, print_)
        if error is not None:
            # Nothing of this batch is acked: the broker resends it all, and the
            # resends of the appended ones are recognised (DUP) and only acked.
            raise ConnectionLost(f"append failed: {error}")
        for message, reason in zip(batch, reasons, strict=True):
            await message.ack(reason)  # [MQTT-4.6.0-2] in the order the PUBLISHes came

    async def _emit_all(self, events: list[CloudEvent]) -> list[object]:
        """Append the batch in one call; when that fails, event by event, to know
        which one the log refused (an event over its size limit) and which not."""
        if not events:
            return []
        if self.emit_many is not None:
            try:
                await self.emit_many(events)
            except Exception as exc:
                if not _too_large(exc):
                    return [exc] * len(events)
                # One event is over the log's limit: find it, append the others.
            else:
                return [None] * len(events)
        return await asyncio.gather(*(self.emit(e) for e in events), return_exceptions=True)

    def status(self) -> dict[str, object]:
        return {**self.stats.snapshot(), "connected": self.connected.is_set()}


def _too_large(exc: BaseException) -> bool:
    """The log (or the Broker in front of it, 413) refused an event as too large."""
    return isinstance(exc, EventTooLarge) or getattr(exc, "status", None) == 413
