"""The project's MQTT 3.1.1 / 5.0 client: asyncio around a sans-IO ClientConnection.

How this works: :class:`Client` opens the socket (TCP or TLS), drives a
:class:`~headwater.mqtt.connection.ClientConnection` with what arrives, and
writes what it queues. The surface is aiomqtt's::

    async with Client("broker.local", client_id="gw-1", clean_start=False) as client:
        await client.subscribe("sensors/#", qos=1)
        async for message in client.messages:
            await store(message)
            await message.ack()

Unlike most client libraries it does not acknowledge a received QoS 1/2
message by itself: ``await message.ack()`` sends the PUBACK/PUBREC, so a
caller that acks only after its durable append never loses a message in a
crash (the broker redelivers from the persistent session).
``auto_ack=True`` acknowledges on receipt instead, for callers that keep
nothing. Acks should be sent in the order the messages came [MQTT-4.6.0-2].

:meth:`Client.publish` returns once the broker acknowledged (QoS 1: PUBACK,
QoS 2: PUBCOMP) and raises :class:`PublishRefused` with the reason code if it
refused; it waits while the broker's Receive Maximum is used up. A lost
connection fails every call under way with :class:`ConnectionLost`; the
client does not reconnect by itself (its users decide how, with
:func:`headwater.backoff.backoff_delays`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from headwater.mqtt.connection import NEED_DATA, ClientConnection, ClientLimits
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    Connack,
    Connect,
    Disconnect,
    LocalProtocolError,
    MqttError,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    ReasonCode,
    Suback,
    SubscriptionOptions,
    Unsuback,
    Will,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "RECEIVE_MAXIMUM",
    "Client",
    "ClientConfig",
    "ConnectRefused",
    "ConnectionLost",
    "Message",
    "PublishRefused",
    "tls_context",
]

RECEIVE_MAXIMUM: Final = 1024
"""Unacknowledged QoS 1/2 messages the broker may send us (MQTT 5); the inbox of
received messages holds as many, so a slow consumer stops the broker, not our memory."""

CONNECT_TIMEOUT: Final = 10.0
"""Seconds for TCP+TLS+CONNACK before the attempt counts as failed."""

READ_SIZE: Final = 64 * 1024

#: Bytes queued towards the broker beyond which ``publish`` waits for the socket.
WRITE_HIGH_WATER: Final = 64 * 1024


class ConnectionLost(ConnectionError):
    """The connection to the broker ended (or never completed)."""


class CannotConnect(ConnectionLost):
    """No TCP (or TLS) connection to the broker could be opened."""


class ConnectRefused(ConnectionLost):
    """The broker answered CONNECT with a failure code."""

    def __init__(self, reason_code: ReasonCode) -> None:
        super().__init__(f"connection refused: {reason_code!r}")
        self.reason_code = reason_code


class PublishRefused(Exception):
    """The broker refused a QoS 1/2 message: ``reason_code`` says why (MQTT 5)."""

    def __init__(self, topic: str, reason_code: ReasonCode) -> None:
        super().__init__(f"the broker refused the publish to {topic!r}: {reason_code!r}")
        self.topic = topic
        self.reason_code = reason_code


def tls_context(
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
class ClientConfig:
    host: str
    port: int = 1883
    client_id: str = ""
    version: ProtocolVersion = ProtocolVersion.MQTT5
    clean_start: bool = True
    #: Seconds the broker keeps the session after a disconnect (MQTT 5; 3.1.1:
    #: a session is kept when ``clean_start`` is false).
    session_expiry: int = 0
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    will: Will | None = None
    receive_maximum: int = RECEIVE_MAXIMUM
    #: Acknowledge received QoS 1/2 messages on receipt (no ``message.ack()``).
    auto_ack: bool = False


@dataclass(slots=True, eq=False)
class Message:
    """A message from the broker; QoS 1/2 ones are acknowledged with :meth:`ack`."""

    packet: Publish
    _client: Client = field(repr=False)
    _acked: bool = field(default=False, repr=False)

    @property
    def topic(self) -> str:
        return self.packet.topic

    @property
    def payload(self) -> bytes:
        return self.packet.payload

    @property
    def qos(self) -> int:
        return self.packet.qos

    @property
    def retain(self) -> bool:
        return self.packet.retain

    @property
    def dup(self) -> bool:
        return self.packet.dup

    @property
    def packet_id(self) -> int | None:
        return self.packet.packet_id

    @property
    def properties(self) -> Properties:
        return self.packet.properties

    async def ack(self, reason: ReasonCode = ReasonCode.SUCCESS) -> None:
        """Send the PUBACK (QoS 1) or PUBREC (QoS 2); nothing for QoS 0 or twice.

        A failure ``reason`` (MQTT 5 only; 3.1.1 acks cannot say no) still ends
        the flow: the broker does not resend the message.
        """
        if self._acked or not self.packet.qos:
            return
        self._acked = True
        self._client._ack(self.packet, reason)


class Client:
    """One connection to a broker; ``async with Client(...) as client``."""

    def __init__(self, host: str | ClientConfig, port: int = 1883, **options: Any) -> None:
        self.config = (
            host if isinstance(host, ClientConfig) else ClientConfig(host, port, **options)
        )
        if isinstance(host, ClientConfig) and options:
            self.config = replace(host, **options)
        c = self.config
        self.version = c.version
        self.conn = ClientConnection(c.version, ClientLimits(receive_maximum=c.receive_maximum))
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(c.receive_maximum)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._window = asyncio.Event()
        self._window.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = asyncio.Event()
        self.session_present = False
        self.connack: Connack | None = None
        #: Why the connection ended, once it has.
        self.error: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for raises the inner
            # error instead of CancelledError when both land in one step (gh-86296),
            # and a cancelled caller would go on as if the connect had failed.
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await self._connect()
        except BaseException:
            await self.close()
            raise
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_loop())]
        if self.conn.keep_alive:
            self._tasks.append(loop.create_task(self._ping_loop()))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._closed.is_set() and self.conn.connected:
            with contextlib.suppress(Exception):
                self.conn.disconnect()
                self._flush()
        await self.close()

    async def close(self) -> None:
        """Close the connection (without DISCONNECT: the broker publishes the will)."""
        self._closed.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fail_waiting(ConnectionLost("connection closed"))
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _fail_waiting(self, error: BaseException) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)
        self._waiting.clear()
        self._window.set()  # wake publishers: they will find the connection closed

    async def _connect(self) -> None:
        c = self.config
        try:
            self._reader, self._writer = await asyncio.open_connection(
                c.host, c.port, ssl=c.tls, server_hostname=c.host if c.tls else None
            )
        except OSError as exc:
            raise CannotConnect(f"cannot connect to {c.host}:{c.port}: {exc}") from exc
        v5 = self.version == ProtocolVersion.MQTT5
        props = Properties(session_expiry_interval=c.session_expiry) if v5 else EMPTY_PROPERTIES
        connect = Connect(
            c.client_id, c.clean_start, c.keep_alive, c.username, c.password, c.will, props
        )
        self.conn.start(connect, time.monotonic())
        self._flush()
        try:
            while True:
                event = await self._next()
                if isinstance(event, Connack):
                    break
        except ConnectionLost:
            raise
        except OSError as exc:  # a reset before CONNACK
            raise ConnectionLost(f"the connection ended before CONNACK: {exc}") from exc
        self.connack = event
        if not self.conn.connected:
            raise ConnectRefused(event.reason_code)
        self.session_present = event.session_present

    async def _next(self) -> Any:
        """The next event of the connection, reading as needed."""
        assert self._reader is not None
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except MqttError as exc:
                raise ConnectionLost(f"protocol error from the broker: {exc}") from exc
            if event is not NEED_DATA:
                return event
            self._flush()  # answers the connection queued (PUBREL, PUBCOMP)
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise ConnectionLost("the broker closed the connection")
            conn.receive_data(data, time.monotonic())

    def _flush(self) -> None:
        data = self.conn.data_to_send(time.monotonic())
        if data:
            if self._writer is None or self._writer.is_closing():
                raise ConnectionLost("not connected")
            self._writer.write(data)

    async def _read_loop(self) -> None:
        try:
            while True:
                event = await self._next()
                if isinstance(event, Publish):
                    message = Message(event, self)
                    if self.config.auto_ack:
                        await message.ack()
                    await self._inbox.put(message)
                elif isinstance(event, Puback | Pubcomp | Pubrec):
                    self._answered(event.packet_id, event.reason_code)
                    self._window.set()
                elif isinstance(event, Suback | Unsuback):
                    self._answered(event.packet_id, event.reason_codes)
                elif isinstance(event, Disconnect):
                    raise ConnectionLost(f"the broker disconnected: {event.reason_code!r}")
        except (ConnectionLost, OSError) as exc:
            self.error = exc
        finally:
            self._closed.set()
            self._fail_waiting(ConnectionLost(str(self.error or "connection closed")))

    def _answered(self, packet_id: int, result: object) -> None:
        future = self._waiting.pop(packet_id, None)
        if future is not None and not future.done():
            future.set_result(result)

    async def _ping_loop(self) -> None:
        conn = self.conn
        while not self._closed.is_set():
            due = conn.ping_due(time.monotonic())
            if due is None:
                return
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(ConnectionLost, LocalProtocolError):
                conn.ping(time.monotonic())
                self._flush()

    # -- operations ----------------------------------------------------------------------

    @property
    def messages(self) -> AsyncIterator[Message]:
        """Messages as they arrive, until the connection ends (then it raises
        :class:`ConnectionLost` if the connection was lost)."""
        return self._messages()

    async def _messages(self) -> AsyncIterator[Message]:
        inbox = self._inbox
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            while True:
                if not inbox.empty():
                    yield inbox.get_nowait()
                    continue
                if closed.done():
                    if self.error is not None:
                        raise ConnectionLost(str(self.error))
                    return
                get = asyncio.ensure_future(inbox.get())
                await asyncio.wait((get, closed), return_when=asyncio.FIRST_COMPLETED)
                if get.done():
                    yield get.result()
                else:
                    get.cancel()
        finally:
            closed.cancel()

    def pending(self, limit: int | None = None) -> list[Message]:
        """Messages received and not yet taken (at most ``limit``), without waiting."""
        out: list[Message] = []
        inbox = self._inbox
        while not inbox.empty() and (limit is None or len(out) < limit):
            out.append(inbox.get_nowait())
        return out

    async def _request(self, packet_id: int) -> Any:
        """Write what is queued and wait for the answer to ``packet_id``."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[packet_id] = future
        try:
            self._flush()
            writer = self._writer
            if writer is not None and writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                try:
                    await writer.drain()
                except OSError as exc:
                    raise ConnectionLost(str(exc)) from exc
            return await future
        finally:
            if self._waiting.get(packet_id) is future:
                del self._waiting[packet_id]

    def _check_open(self) -> None:
        if self._closed.is_set() or not self.conn.connected:
            raise ConnectionLost(str(self.error or "not connected"))

    async def subscribe(
        self,
        topics: str | Sequence[tuple[str, int]],
        qos: int = 0,
        *,
        properties: Properties = EMPTY_PROPERTIES,
        **options: Any,
    ) -> tuple[ReasonCode, ...]:
        """SUBSCRIBE to one filter (``topics`` a string, at ``qos``) or several; the
        granted QoS or failure code of each. ``options``: SubscriptionOptions fields."""
        self._check_open()
        pairs = [(topics, qos)] if isinstance(topics, str) else list(topics)
        filters = [(t, SubscriptionOptions(qos=q, **options)) for t, q in pairs]
        pid = self.conn.subscribe(filters, properties)
        codes: tuple[ReasonCode, ...] = await self._request(pid)
        return codes

    async def unsubscribe(self, topics: str | Sequence[str]) -> tuple[ReasonCode, ...]:
        self._check_open()
        pid = self.conn.unsubscribe([topics] if isinstance(topics, str) else topics)
        codes: tuple[ReasonCode, ...] = await self._request(pid)
        return codes

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> ReasonCode:
        """Publish; for QoS 1/2, wait for the broker's acknowledgement.

        Raises :class:`PublishRefused` when the broker answers a failure code
        and :class:`ConnectionLost` when the connection ends first.
        """
        conn = self.conn
        while True:
            self._check_open()
            if not qos or not conn.window_full:
                break
            # [MQTT-3.3.4-7 (5.0)] no more than the broker's Receive Maximum in flight.
            self._window.clear()
            await self._window.wait()
        try:
            pid = conn.publish(topic, payload, qos, retain, properties)
        except LocalProtocolError as exc:
            raise PublishRefused(topic, ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR) from exc
        if pid is None:
            self._flush()
            return ReasonCode.SUCCESS
        code: ReasonCode = await self._request(pid)
        if code >= 0x80:
            raise PublishRefused(topic, code)
        return code

    def _ack(self, packet: Publish, reason: ReasonCode) -> None:
        if self._closed.is_set():
            return  # nothing to tell: the broker resends on the next connection
        self.conn.ack(packet, reason)
        self._flush()
