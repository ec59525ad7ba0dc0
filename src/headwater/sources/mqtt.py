"""MqttSource: subscribe to an external MQTT broker, append what arrives, then acknowledge.

How this works: :class:`MqttClient` is a small asyncio MQTT 3.1.1/5.0 client
over Headwater's sans-IO codec (:mod:`headwater.mqtt.packets`). Unlike the
common client libraries it does not acknowledge a received QoS 1/2 PUBLISH
by itself: the caller calls :meth:`MqttClient.ack` once the event is
durable, so a crash between receipt and append leaves the message unacked
and the external broker redelivers it from the persistent session.

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
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from headwater.cloudevents import CloudEvent, InvalidEvent
from headwater.log import EventTooLarge
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MqttError,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    encode,
)
from headwater.sources.mapping import IdSequence, Inbound, Mapping, Unmatched, to_cloudevent
from headwater.sources.redelivery import Redeliveries, fingerprint

__all__ = [
    "DEFAULT_BATCH",
    "ConnectionLost",
    "MqttClient",
    "MqttClientConfig",
    "MqttSourceRunner",
    "client_tls_context",
]

log = logging.getLogger(__name__)

Emit = Callable[[CloudEvent], Awaitable[object]]

DEFAULT_BATCH: Final = 256
"""Messages appended concurrently before their acks go out. The broker's Receive
Maximum (ours: :data:`RECEIVE_MAXIMUM`) bounds how many can be outstanding."""

RECEIVE_MAXIMUM: Final = 1024
"""Unacknowledged QoS 1/2 messages the external broker may send us (MQTT 5);
the inbound queue is bounded by it, so a slow log stops the broker, not our memory."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds for TCP+TLS+CONNACK before the attempt counts as failed."""

READ_SIZE: Final = 64 * 1024


class ConnectionLost(ConnectionError):
    """The connection to the external broker ended (or never completed)."""


def client_tls_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    *,
    insecure: bool = False,
) -> ssl.SSLContext:
    """A client TLS context (TLS 1.2+); a client certificate makes it mTLS."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True, slots=True)
class MqttClientConfig:
    host: str
    port: int = 1883
    client_id: str = ""
    version: ProtocolVersion = ProtocolVersion.MQTT5
    clean_start: bool = False
    session_expiry: int = 7 * 24 * 3600
    keep_alive: int = 30
    username: str | None = None
    password: bytes | None = None
    tls: ssl.SSLContext | None = field(default=None, compare=False)


class MqttClient:
    """One connection; ``async with MqttClient(config) as client``.

    Received PUBLISHes wait in :attr:`messages` until taken; QoS 1/2 ones must
    be acknowledged with :meth:`ack`. :meth:`publish` returns when the broker
    acknowledged (QoS 1: PUBACK, QoS 2: PUBCOMP) and raises on a failure code.
    """

    def __init__(self, config: MqttClientConfig) -> None:
        self.config = config
        self.version = config.version
        self.messages: asyncio.Queue[Publish] = asyncio.Queue(RECEIVE_MAXIMUM)
        self.session_present = False
        self._decoder = Decoder(server=False, version=config.version)
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._pending: dict[int, asyncio.Future[ReasonCode]] = {}
        self._next_id = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self.error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> MqttClient:
        try:
            await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT)
        except BaseException:
            await self.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop())]
        if self.config.keep_alive:
            self._tasks.append(loop.create_task(self._ping_loop()))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None and not self._closed.is_set():
            with contextlib.suppress(Exception):
                self._writer.write(encode(Disconnect(), self.version))
        await self.close()

    async def close(self) -> None:
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_pending()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _fail_pending(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost("connection closed"))
        self._pending.clear()

    async def _connect(self) -> None:
        c = self.config
        try:
            self._reader, self._writer = await asyncio.open_connection(
                c.host, c.port, ssl=c.tls, server_hostname=c.host if c.tls else None
            )
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {c.host}:{c.port}: {exc}") from exc
        v5 = self.version == ProtocolVersion.MQTT5
        props = (
            Properties(session_expiry_interval=c.session_expiry, receive_maximum=RECEIVE_MAXIMUM)
            if v5
            else EMPTY_PROPERTIES
        )
        self._write(
            Connect(
                c.client_id,
                c.clean_start,
                c.keep_alive,
                c.username,
                c.password,
                None,
                props,
            )
        )
        packet = await self._next()
        if not isinstance(packet, Connack):
            raise ConnectionLost(f"expected CONNACK, got {type(packet).__name__}")
        if packet.reason_code >= 0x80 or (not v5 and packet.reason_code != 0):
            raise ConnectionLost(f"connection refused: {packet.reason_code!r}")
        self.session_present = packet.session_present

    async def _next(self) -> object:
        assert self._reader is not None
        while True:
            try:
                packet = self._decoder.next_packet()
            except MqttError as exc:
                raise ConnectionLost(f"protocol error from the broker: {exc}") from exc
            if packet is not NEED_DATA:
                return packet
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise ConnectionLost("the broker closed the connection")
            self._decoder.receive_data(data)

    def _write(self, packet: object) -> None:
        if self._writer is None or self._closed.is_set():
            raise ConnectionLost("not connected")
        self._writer.write(encode(packet, self.version))  # type: ignore[arg-type]

    async def _read_loop(self) -> None:
        try:
            while True:
                packet = await self._next()
                if isinstance(packet, Publish):
                    if packet.qos == 2 and packet.packet_id in self._pending:
                        continue  # never for incoming; ids are per direction
                    await self.messages.put(packet)
                elif isinstance(packet, Puback | Pubcomp | Suback):
                    future = self._pending.pop(packet.packet_id, None)
                    code = (
                        packet.reason_codes[0] if isinstance(packet, Suback) else packet.reason_code
                    )
                    if future is not None and not future.done():
                        future.set_result(code)
                elif isinstance(packet, Pubrec):
                    if packet.reason_code >= 0x80:
                        future = self._pending.pop(packet.packet_id, None)
                        if future is not None and not future.done():
                            future.set_result(packet.reason_code)
                    else:
                        self._write(Pubrel(packet.packet_id, ReasonCode.SUCCESS, EMPTY_PROPERTIES))
                elif isinstance(packet, Pubrel):
                    self._write(Pubcomp(packet.packet_id, ReasonCode.SUCCESS, EMPTY_PROPERTIES))
                elif isinstance(packet, Disconnect):
                    raise ConnectionLost(f"the broker disconnected: {packet.reason_code!r}")
                elif isinstance(packet, Pingresp):
                    pass
        except (ConnectionLost, OSError) as exc:
            self.error = exc
        finally:
            self._closed.set()
            self._fail_pending()

    async def _ping_loop(self) -> None:
        interval = self.config.keep_alive * 0.75
        while not self._closed.is_set():
            await asyncio.sleep(interval)
            with contextlib.suppress(ConnectionLost):
                self._write(Pingreq())

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise ConnectionLost("no free packet identifier")

    # -- operations ----------------------------------------------------------------

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> tuple[ReasonCode, ...]:
        codes = []
        for topic, qos in topics:
            pid = self._packet_id()
            future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
            self._pending[pid] = future
            self._write(Subscribe(pid, ((topic, SubscriptionOptions(qos=qos)),)))
            codes.append(await future)
        return tuple(codes)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> ReasonCode:
        if qos == 0:
            self._write(Publish(topic, payload, 0, retain, False, None, properties))
            return ReasonCode.SUCCESS
        pid = self._packet_id()
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._pending[pid] = future
        try:
            self._write(Publish(topic, payload, qos, retain, False, pid, properties))
            writer = self._writer
            if writer is not None and writer.transport.get_write_buffer_size() > READ_SIZE:
                await writer.drain()
            code = await future
        finally:
            if self._pending.get(pid) is future:
                # Given up on (the write failed, or cancelled): nobody will read its outcome.
                del self._pending[pid]
                future.cancel()
        if code >= 0x80:
            raise ConnectionLost(f"the broker refused the publish to {topic!r}: {code!r}")
        return code

    def ack(self, packet: Publish, reason: ReasonCode = ReasonCode.SUCCESS) -> None:
        """Acknowledge a received QoS 1 (PUBACK) or QoS 2 (PUBREC) PUBLISH.

        A failure ``reason`` (MQTT 5 only; 3.1.1 acks cannot say no) still ends
        the flow: the broker does not resend the message.
        """
        if self.version != ProtocolVersion.MQTT5:
            reason = ReasonCode.SUCCESS
        if packet.qos == 1:
            self._write(Puback(packet.packet_id, reason, EMPTY_PROPERTIES))  # type: ignore[arg-type]
        elif packet.qos == 2:
            self._write(Pubrec(packet.packet_id, reason, EMPTY_PROPERTIES))  # type: ignore[arg-type]


@dataclass(slots=True)
class RunnerStats:
    events: int = 0
    unmatched: int = 0
    invalid: int = 0
    too_large: int = 0
    append_failures: int = 0
    duplicates_suppressed: int = 0
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
            "connects": self.connects,
            "lastError": self.last_error,
        }


_SESSION: Final = ""
"""The sender key in :class:`Redeliveries`: the runner has one session with its broker."""


class MqttSourceRunner:
    """The external-broker source; :meth:`run` until cancelled."""

    def __init__(
        self,
        config: MqttClientConfig,
        topics: Sequence[tuple[str, int]],
        mapping: Mapping,
        emit: Emit,
        *,
        max_backoff: float = 30.0,
        batch: int = DEFAULT_BATCH,
        listener: str | None = None,
        max_event_size: int = 1024 * 1024,
    ) -> None:
        self.config = config
        self.topics = tuple(topics)
        self.mapping = mapping
        self.emit = emit
        self.max_backoff = max_backoff
        self.batch = batch
        self.listener = listener or f"{config.host}:{config.port}"
        self.max_event_size = max_event_size
        self.ids = IdSequence()
        self.redeliveries = Redeliveries()
        self.stats = RunnerStats()
        self.connected = asyncio.Event()

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                async with MqttClient(self.config) as client:
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
                        await asyncio.wait_for(client.subscribe(self.topics), CONNECT_TIMEOUT)
                        self.stats.connects += 1
                        attempt = 0
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
            delay = random.uniform(0, min(self.max_backoff, 0.1 * 2**attempt))
            attempt = min(attempt + 1, 30)
            await asyncio.sleep(delay)

    async def _consume(self, client: MqttClient) -> None:
        queue = client.messages
        closed = asyncio.ensure_future(client.wait_closed())
        try:
            while True:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait((get, closed), return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    raise ConnectionLost(str(client.error or "connection closed"))
                batch = [get.result()]
                while len(batch) < self.batch and not queue.empty():
                    batch.append(queue.get_nowait())
                await self._append(client, batch)
        finally:
            closed.cancel()

    async def _append(self, client: MqttClient, batch: list[Publish]) -> None:
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
                if packet.dup and redeliveries.was_appended(_SESSION, pid, print_):
                    stats.duplicates_suppressed += 1
                    redeliveries.suppressed += 1
                    continue
            if len(packet.payload) > self.max_event_size:
                stats.too_large += 1
                reasons[index] = ReasonCode.QUOTA_EXCEEDED
                log.warning(
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
                events.append(to_cloudevent(self.mapping, inbound, self.ids.next(), now))
            except Unmatched:
                stats.unmatched += 1
                continue
            except (InvalidEvent, ValueError) as exc:
                stats.invalid += 1
                reasons[index] = ReasonCode.PAYLOAD_FORMAT_INVALID
                log.warning("mqtt source %s: %r: %s", self.listener, packet.topic, exc)
                continue
            appending.append((index, pid or 0, print_))
        results = await asyncio.gather(*(self.emit(e) for e in events), return_exceptions=True)
        error: BaseException | None = None
        for (index, pid, print_), result in zip(appending, results, strict=True):
            if isinstance(result, EventTooLarge):
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
        for packet, reason in zip(batch, reasons, strict=True):
            client.ack(packet, reason)  # [MQTT-4.6.0-2] in the order the PUBLISHes came

    def status(self) -> dict[str, object]:
        return {**self.stats.snapshot(), "connected": self.connected.is_set()}
