"""The embedded MQTT 3.1.1 / 5.0 broker: asyncio listeners around the sans-IO codec.

How this works:

* Each network connection (TCP, TLS, mTLS or WebSocket) gets one
  :class:`_Connection` whose reader loop feeds bytes to a
  :class:`~headwater.mqtt.packets.Decoder` and handles the packets in order.
  Handlers are synchronous; only CONNECT (password check in a thread, the
  connect hook) and PUBLISH with an ``on_publish`` hook await.  Hooked
  PUBLISHes are pipelined: each hook runs as a task while the next PUBLISH is
  read (up to ``receive_maximum`` of them per connection, then reading waits),
  and their outcomes (ack, routing) are applied strictly in arrival order.
  Any other packet waits until every earlier PUBLISH is settled, so a
  connection's packets still take effect in order.  A client with a window
  of QoS 1 messages thus gets its PUBACKs in one write per batch, and a
  durable-append hook sees many appends at once (group commit).
* Outgoing bytes are appended to a per-connection list and written once per
  event-loop iteration (``call_soon`` flush), so a burst of deliveries to a
  subscriber costs one ``write`` syscall.  A reader whose own transport is
  above :data:`WRITE_HIGH_WATER` awaits ``drain()`` before reading more
  (backpressure on that client only).  QoS 0 messages for a subscriber whose
  buffer exceeds ``max_write_buffer`` are dropped and counted; QoS 1/2 are
  bounded by the send quota and queue in the session.  A slow subscriber
  therefore never stalls a publisher or other subscribers.
* Routing matches the topic in a :class:`~headwater.mqtt.topics.SubscriptionTree`
  (cached per topic), merges overlapping subscriptions of one client into one
  copy, and frames each PUBLISH from parts cached per message (topic bytes,
  property block, whole QoS 0 packets per variant) with
  :func:`~headwater.mqtt.packets.encode_publish`.
* Session state lives in :class:`~headwater.mqtt.session.Session` objects that
  outlive connections; sessions and retained messages are saved to SQLite in
  the data directory on an autosave interval and at shutdown.

Statement ids are quoted as [MQTT-x.y.z-n] with the version when they differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import resource
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from aiohttp import WSMsgType, web

from headwater.logs import Throttle
from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    NEED_DATA,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MqttError,
    Pingreq,
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
    Unsuback,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    encode,
    encode_properties,
    encode_publish,
)
from headwater.mqtt.reasons import (
    DISCONNECT_REASON_CODES,
    PUBACK_REASON_CODES,
    connack_code_311,
)
from headwater.mqtt.retained import DEFAULT_MAX_RETAINED, RetainedStore
from headwater.mqtt.session import (
    DEFAULT_MAX_QUEUED_MESSAGES,
    NEVER_EXPIRES,
    Delivery,
    Message,
    OverflowPolicy,
    Session,
    SessionStore,
    Subscription,
    dump,
)
from headwater.mqtt.topics import InvalidTopic, parse_filter, validate_topic_name
from headwater.mqtt.topics import SubscriptionTree as _Tree

__all__ = [
    "DEFAULT_MAX_INCOMPLETE_BYTES",
    "BrokerConfig",
    "BrokerStats",
    "ClientInfo",
    "Listener",
    "MqttBroker",
    "Refusal",
    "server_tls_context",
]

logger = logging.getLogger("headwater.mqtt.broker")

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5

#: A broker sized for a gateway: 10,000 devices with headroom.  Beyond it new
#: CONNECTs get CONNACK 0x89 Server busy (5.0) / 0x03 Server unavailable (3.1.1).
#: It also caps open sockets (connected or not yet), together with
#: :data:`FD_SHARE`: a socket beyond the cap is closed as soon as it is accepted.
DEFAULT_MAX_CONNECTIONS = 50_000
#: Share of the process's file descriptor limit (RLIMIT_NOFILE) MQTT sockets may
#: take: a flood of MQTT connections (each holds its socket until CONNECT_TIMEOUT)
#: must leave descriptors for the HTTP listener, the admin API and the log files.
FD_SHARE = 0.75
#: Largest packet accepted from a client (fixed header included), advertised as
#: Maximum Packet Size.  IoT payloads are small; 1 MiB bounds the memory one
#: client can make the broker buffer.  Larger: DISCONNECT 0x95, then close.
DEFAULT_MAX_PACKET_SIZE = 1024 * 1024
#: Receive Maximum advertised to clients: unacknowledged QoS 1/2 PUBLISHes a
#: client may have outstanding towards us.  More: DISCONNECT 0x93.
DEFAULT_RECEIVE_MAXIMUM = 1024
#: QoS 1/2 messages in flight towards one client (capped further by the
#: client's own Receive Maximum).  Larger windows help throughput over long
#: round trips; beyond it messages wait in the session queue.
DEFAULT_MAX_INFLIGHT = 1024
#: Subscriptions per client.  More: SUBACK 0x97 Quota exceeded (0x80 in 3.1.1).
DEFAULT_MAX_SUBSCRIPTIONS = 1000
#: Topic aliases we accept from a client (Topic Alias Maximum in CONNACK).
DEFAULT_TOPIC_ALIAS_MAXIMUM = 64
#: Bytes buffered towards one client beyond which QoS 0 messages to it are
#: dropped (counted in ``BrokerStats.dropped_slow_consumer``): a stalled
#: subscriber costs at most this much memory and never blocks publishers.
DEFAULT_MAX_WRITE_BUFFER = 1024 * 1024
#: Bytes held across all connections for packets still arriving (a packet is
#: buffered whole before it is decoded).  The per-packet maximum alone lets 200
#: clients that each send most of a 1 MiB packet pin 200 MiB; this budget caps
#: that total as Mosquitto's ``memory_limit`` caps its heap: a connection whose
#: read would take the total past it is closed (DISCONNECT 0x97 Quota exceeded
#: once connected), and the bytes of a closed connection are released at once.
#: 64 MiB lets 32 clients send a 2 MiB packet at the same moment; devices'
#: telemetry (hundreds of bytes) never comes near it.
DEFAULT_MAX_INCOMPLETE_BYTES = 64 * 1024 * 1024
#: Topic verdicts a connection caches when its subscriptions are not wholly
#: readable under the ACL (after an ACL reload narrowed them); cleared when full.
READ_CACHE_MAX = 1024
#: Seconds between saves of changed sessions and retained messages.
DEFAULT_AUTOSAVE_INTERVAL = 30.0
#: A connection has this long to send its CONNECT (§4.1 of both standards lets a
#: server close a connection that does not send one "within a reasonable amount of time").
CONNECT_TIMEOUT = 10.0
#: Bytes asked of the transport per read.
READ_SIZE = 256 * 1024
#: A reader stops reading from its client while more than this is waiting to
#: be sent to that client (its acks and deliveries), until the transport drains.
WRITE_HIGH_WATER = 256 * 1024

#: Seconds a WebSocket close handshake may take before the socket is dropped.
WS_CLOSE_TIMEOUT = 2.0

_PINGRESP = b"\xd0\x00"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Listener:
    """One listening socket.

    ``ssl`` makes it TLS; a context with ``verify_mode=CERT_REQUIRED`` makes it
    mTLS, and ``cert_username`` then takes the username from the client
    certificate's subject CN or first SAN (the certificate authenticates; no
    password is needed).  ``websocket`` serves MQTT over WebSocket (subprotocol
    ``mqtt``) at ``path``.  ``allow_anonymous=None`` allows clients without
    credentials only when the listener is bound to a loopback address *and* the
    broker has no authentication configured (see :meth:`admits_anonymous`).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    ssl: ssl.SSLContext | None = None
    websocket: bool = False
    path: str = "/mqtt"
    cert_username: Literal["cn", "san"] | None = None
    allow_anonymous: bool | None = None
    name: str = ""

    @property
    def anonymous_allowed(self) -> bool:
        """The default without authentication configured: loopback listeners only."""
        return self.admits_anonymous(authentication=False)

    def admits_anonymous(self, *, authentication: bool) -> bool:
        """Whether a client without credentials may connect here.

        As Mosquitto 2 does (``allow_anonymous`` defaults to false on a listener
        with authentication configured), a password file (or any other
        authentication) turns anonymous access off unless ``allow_anonymous``
        says otherwise; without authentication, only a loopback listener is open.
        """
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return not authentication and _is_loopback(self.host)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        scheme = (
            ("wss" if self.ssl else "ws") if self.websocket else ("mqtts" if self.ssl else "mqtt")
        )
        return f"{scheme}://{self.host}:{self.port}"


def server_tls_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    cafile: str | os.PathLike[str] | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+); with ``require_client_cert`` it is mTLS."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the broker needs; every limit is named and documented above."""

    listeners: tuple[Listener, ...] = (Listener(),)
    #: Sessions and retained messages are persisted here; ``None``: in memory only.
    data_dir: str | os.PathLike[str] | None = None
    passwords: PasswordFile | None = None
    #: ``None`` allows every topic to every authenticated client.
    acl: Acl | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    overflow_policy: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    max_subscriptions: int = DEFAULT_MAX_SUBSCRIPTIONS
    topic_alias_maximum: int = DEFAULT_TOPIC_ALIAS_MAXIMUM
    max_retained: int = DEFAULT_MAX_RETAINED
    max_write_buffer: int = DEFAULT_MAX_WRITE_BUFFER
    max_incomplete_bytes: int = DEFAULT_MAX_INCOMPLETE_BYTES
    #: Upper bound on any session's expiry interval (seconds).
    max_session_expiry: int = NEVER_EXPIRES
    #: If set, imposed on MQTT 5 clients through Server Keep Alive [MQTT-3.2.2-21].
    server_keep_alive: int | None = None
    maximum_qos: int = 2
    retain_available: bool = True
    #: Response Information returned to clients that request it (§3.1.2.11.7),
    #: as ``{prefix}/{client id}``; ``None`` returns none.
    response_information_prefix: str | None = "response"
    autosave_interval: float = DEFAULT_AUTOSAVE_INTERVAL


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who a hook is talking about."""

    client_id: str
    username: str | None
    protocol_version: ProtocolVersion
    listener: str
    peer: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """An ``on_publish`` hook's refusal of a message that can never be accepted.

    A bare failure :class:`ReasonCode` means "not now" (the log is full or
    slow): an MQTT 3.1.1 client, which cannot hear a refusal, is disconnected
    without an ack, so that it sends the message again later. A ``Refusal``
    means "never" (the payload is over the size limit, the topic cannot be
    mapped): resending cannot help, so a 3.1.1 client gets its PUBACK/PUBREC
    and the message is dropped and counted (``BrokerStats.refused_acknowledged``),
    as Mosquitto does with a publish its ACL denies; otherwise the client would
    resend it on every reconnect and never get past it. MQTT 5 clients get
    ``code`` in either case.
    """

    code: ReasonCode


#: Called for every PUBLISH from a client before it is acknowledged and routed,
#: as ``on_publish(info, message, packet_id, dup)``: the packet identifier (``None``
#: for QoS 0 and for wills) and the DUP flag let the hook recognise a QoS 1
#: message the client resends because it never saw the PUBACK [MQTT-3.3.1-1].
#: Return ``None`` (or a code < 0x80) to accept; a failure code (>= 0x80) refuses
#: for now, a :class:`Refusal` for good: MQTT 5 clients get the code in the
#: PUBACK/PUBREC; see :class:`Refusal` for MQTT 3.1.1 clients.
OnPublish = Callable[
    [ClientInfo, Message, int | None, bool], Awaitable[ReasonCode | Refusal | None]
]
OnConnect = Callable[[ClientInfo], Awaitable[None]]
OnDisconnect = Callable[[ClientInfo], Awaitable[None]]


@dataclass(slots=True)
class BrokerStats:
    """Counters; every dropped message is counted in exactly one of them."""

    connections_total: int = 0
    messages_received: int = 0
    messages_sent: int = 0
    #: QoS 0 messages not sent because the subscriber's write buffer was full.
    dropped_slow_consumer: int = 0
    #: Messages larger than the receiving client's Maximum Packet Size [MQTT-3.1.2-25].
    dropped_too_large: int = 0
    #: QoS 0 messages for clients that are offline (not queued, [MQTT-3.1.2-5 (3.1.1)]).
    dropped_offline_qos0: int = 0
    denied_publish: int = 0
    denied_subscribe: int = 0
    #: Messages not sent because the receiving client may not read the topic
    #: (the ACL is checked on every delivery, not only at SUBSCRIBE).
    denied_delivery: int = 0
    auth_failures: int = 0
    protocol_errors: int = 0
    hook_failures: int = 0
    #: Messages refused for good (a :class:`Refusal`) and acknowledged to an MQTT
    #: 3.1.1 client, which has no way to hear a refusal.
    refused_acknowledged: int = 0
    #: MQTT 5 publishes (and wills) with Payload Format Indicator 1 whose payload
    #: is not UTF-8: refused with 0x99 [MQTT-3.3.2-4].
    payload_format_invalid: int = 0
    #: Persistent sessions discarded because another user connected with their
    #: client id (a session belongs to the user who created it).
    sessions_reset_owner: int = 0
    #: Connections closed because their incomplete packets would have taken the
    #: bytes held across all connections past ``max_incomplete_bytes``.
    incomplete_over_budget: int = 0
    #: Sockets closed as soon as accepted: the socket cap was reached.
    connections_refused: int = 0


# -- transports -------------------------------------------------------------------------------


class _Link(Protocol):
    """The byte stream under one connection."""

    peer: str

    async def read(self) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    def buffered(self) -> int: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class _StreamLink:
    __slots__ = ("_reader", "_transport", "_writer", "peer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def read(self) -> bytes:
        return await self._reader.read(READ_SIZE)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        transport = self._transport
        # A peer that stopped reading would keep a graceful close waiting for
        # its buffer forever: abort instead (the bytes would never arrive anyway).
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()


class _WebSocketLink:
    """MQTT over WebSocket (MQTT 5.0 §6 / 3.1.1 §6): binary frames only."""

    __slots__ = ("_closed", "_drained", "_pending", "_size", "_wake", "_ws", "peer")

    def __init__(self, ws: Any, peer: str) -> None:
        self._ws = ws
        self.peer = peer
        self._pending: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False

    async def read(self) -> bytes:
        while not self._closed:
            msg = await self._ws.receive()
            if msg.type == WSMsgType.BINARY:
                return bytes(msg.data)
            # [MQTT-6.0.0-1] MQTT travels in binary frames; a text frame (or the
            # end of the socket) closes the connection.
            if msg.type not in (WSMsgType.PING, WSMsgType.PONG):
                return b""
        return b""

    def write(self, data: bytes) -> None:
        if self._closed:
            return
        self._pending.append(data)
        self._size += len(data)
        self._drained.clear()
        self._wake.set()

    def buffered(self) -> int:
        return self._size

    async def drain(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def pump(self) -> None:
        """Send what was written, one frame per batch, until closed."""
        ws = self._ws
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._pending:
                    data = b"".join(self._pending)
                    self._pending.clear()
                    # [MQTT-6.0.0-2] a frame may hold several (or part of a) packets.
                    await ws.send_bytes(data)
                    self._size -= len(data)
                if not self._pending:
                    self._drained.set()
                if self._closed:
                    return
        except (ConnectionError, RuntimeError):
            self._closed = True
        finally:
            self._drained.set()
            await ws.close()


def _cert_username(
    ssl_object: ssl.SSLObject | ssl.SSLSocket | None, mode: str | None
) -> str | None:
    if ssl_object is None or mode is None:
        return None
    cert: Any = ssl_object.getpeercert()
    if not cert:
        return None
    if mode == "cn":
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return str(value)
        return None
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            return str(value)
    return None


# -- fan-out ----------------------------------------------------------------------------------


class _Fanout:
    """One message on its way to subscribers: parts encoded once, shared by all."""

    __slots__ = ("_packets", "_props", "message", "now", "topic_bytes")

    def __init__(self, message: Message, now: float) -> None:
        self.message = message
        self.now = now
        self.topic_bytes = message.topic.encode()
        self._props: dict[tuple[int, ...], bytes] = {}
        self._packets: dict[tuple[bool, bool, tuple[int, ...]], bytes] = {}

    def properties(self, subscription_ids: tuple[int, ...]) -> bytes:
        """The MQTT 5 property block (without length) for one subscriber variant."""
        cached = self._props.get(subscription_ids)
        if cached is not None:
            return cached
        base = self._props.get(())
        if base is None:
            m = self.message
            if (
                m.payload_format_indicator is None
                and m.expires_at is None
                and m.content_type is None
                and m.response_topic is None
                and m.correlation_data is None
                and not m.user_properties
            ):
                base = b""
            else:
                # [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-6] remaining expiry,
                # [MQTT-3.3.2-15/16] response topic and correlation data,
                # [MQTT-3.3.2-17/18] user properties unaltered and in order,
                # [MQTT-3.3.2-20] content type: all forwarded.
                base = encode_properties(
                    Properties(
                        payload_format_indicator=m.payload_format_indicator,
                        message_expiry_interval=m.remaining_expiry(self.now),
                        content_type=m.content_type,
                        response_topic=m.response_topic,
                        correlation_data=m.correlation_data,
                        user_properties=m.user_properties,
                    )
                )
            self._props[()] = base
        if not subscription_ids:
            return base
        # [MQTT-3.3.4-3/4] every matching subscription's identifier, in one copy.
        props = base + encode_properties(Properties(subscription_identifiers=subscription_ids))
        self._props[subscription_ids] = props
        return props

    def qos0_packet(self, v5: bool, retain: bool, subscription_ids: tuple[int, ...]) -> bytes:
        key = (v5, retain, subscription_ids)
        packet = self._packets.get(key)
        if packet is None:
            m = self.message
            if v5:
                props = self.properties(subscription_ids)
                packet = encode_publish(
                    self.topic_bytes, m.payload, V5, retain=retain, properties=props
                )
            else:
                packet = encode_publish(self.topic_bytes, m.payload, V311, retain=retain)
            self._packets[key] = packet
        return packet


# -- one connection ---------------------------------------------------------------------------


class _Close(Exception):
    """Internal: stop serving this connection (after whatever was queued is flushed)."""


class _Connection:
    """The server side of one network connection."""

    def __init__(
        self, broker: MqttBroker, link: _Link, listener: Listener, cert_username: str | None
    ) -> None:
        self.broker = broker
        self.config = broker.config
        self.link = link
        self.listener = listener
        self.cert_username = cert_username
        self.decoder = Decoder(server=True, max_packet_size=broker.config.max_packet_size)
        self.loop = asyncio.get_running_loop()
        self.version = V311
        self.v5 = False
        self.client_id = ""
        self.username: str | None = None
        self.session: Session | None = None
        self.info: ClientInfo | None = None
        self.connected = False  # CONNACK (success) sent
        self.closing = False
        self.taken_over = False
        self.will: Will | None = None
        self.keep_alive = 0
        self.last_rx = self.loop.time()
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.send_quota = broker.config.max_inflight
        self.max_out_packet = 0  # client's Maximum Packet Size; 0: none
        self.alias_max_out = 0  # client's Topic Alias Maximum
        self.alias_out: dict[str, int] = {}
        self.alias_in: dict[int, str] = {}
        self.on_publish = broker._on_publish
        #: Bytes this connection's decoder holds, as counted in ``broker._incomplete``.
        self._held = 0
        #: Per-delivery ACL checks: the broker's ACL generation these were made
        #: under, whether every subscription is wholly readable (then no topic
        #: needs checking), and per-topic verdicts otherwise.
        self._acl_generation = -1
        self._all_readable = False
        self._readable: dict[str, bool] = {}
        #: Hooked PUBLISHes in arrival order: (hook task, message, packet id).
        self._hooked: deque[
            tuple[asyncio.Task[ReasonCode | Refusal | None], Message, int | None]
        ] = deque()
        #: QoS 2 packet ids among them (a resend meanwhile is ignored, not hooked twice).
        self._hooked_qos2: set[int] = set()
        self._handlers: dict[type, Callable[[Any], Awaitable[None] | None]] = {
            Publish: self._handle_publish,
            Puback: self._handle_puback,
            Pubrec: self._handle_pubrec,
            Pubrel: self._handle_pubrel,
            Pubcomp: self._handle_pubcomp,
            Subscribe: self._handle_subscribe,
            Unsubscribe: self._handle_unsubscribe,
            Pingreq: self._handle_pingreq,
            Disconnect: self._handle_disconnect,
            Auth: self._handle_auth,
            Connect: self._handle_second_connect,
        }

    # -- output -------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self.link.write(data)

    def disconnect(self, code: ReasonCode) -> None:
        """Send DISCONNECT (MQTT 5, after a CONNACK only [MQTT-3.14.0-1]) and close."""
        if self.v5 and self.connected and not self.closing and code in DISCONNECT_REASON_CODES:
            self.send(encode(Disconnect(code), V5))
        self.close()

    def close(self) -> None:
        self.closing = True
        self.flush()
        self.link.close()

    def fail(self, code: ReasonCode, why: str) -> None:
        """A protocol violation by the client: log, DISCONNECT with ``code``, close."""
        self.broker.stats.protocol_errors += 1
        self.broker.throttle.info(
            ("protocol", code),
            "closing %s (%s): %s",
            self.client_id or self.link.peer,
            code.name,
            why,
        )
        self.disconnect(code)
        raise _Close

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._serve()
        except _Close:
            pass
        except MqttError as exc:
            # A malformed packet closes this connection only (§4.13 of both standards).
            self.broker.stats.protocol_errors += 1
            self.broker.throttle.info(
                ("malformed", type(exc)), "closing %s: %s", self.client_id or self.link.peer, exc
            )
            if not self.connected and isinstance(exc, UnsupportedProtocolVersion):
                # [MQTT-3.1.2-2 (3.1.1)] CONNACK 0x01, then close.
                self.send(encode(Connack(reason_code=exc.reason_code), exc.answer_version))
            # [MQTT-4.13.1-1 (5.0)] DISCONNECT with the reason code, then close.
            self.disconnect(exc.reason_code)
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError) as exc:
            logger.debug("connection %s ended: %r", self.link.peer, exc)
        except Exception:
            # A bug must cost this connection only, never the broker.
            logger.exception("internal error on %s; closing it", self.client_id or self.link.peer)
            self.disconnect(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR)
        finally:
            if self._keepalive_handle is not None:
                self._keepalive_handle.cancel()
            try:
                # Hooks under way finish first. Their messages are routed unless this
                # side closed the connection (refusal, protocol error, takeover), as
                # when the hook ran inline; acks to a vanished client go nowhere.
                await self._settled()
            finally:
                for task, _, _ in self._hooked:
                    task.cancel()
                self.closing = True
                self.flush()
                self.link.close()
                self._release()
                await self.broker._connection_closed(self)

    def _release(self) -> None:
        """Give back at once what the connection held for packets still arriving.

        Not left to the garbage collector: the connection's handler table refers
        back to it, so only a full collection would free it and the partial
        packet its decoder holds (a megabyte per connection under a probe).
        """
        self.broker._incomplete -= self._held
        self._held = 0
        self.decoder.release()
        self._handlers.clear()
        self._readable.clear()

    def _count_incoming(self) -> None:
        """Account the decoder's bytes in the broker-wide budget; over it: close."""
        held = self.decoder.buffered
        grown = held - self._held
        if not grown:
            return
        broker = self.broker
        broker._incomplete += grown
        self._held = held
        if grown > 0 and broker._incomplete > self.config.max_incomplete_bytes:
            broker.stats.incomplete_over_budget += 1
            self.fail(
                ReasonCode.QUOTA_EXCEEDED,
                f"{broker._incomplete} bytes of incomplete packets held across connections, "
                f"over the {self.config.max_incomplete_bytes}-byte budget",
            )

    async def _serve(self) -> None:
        link = self.link
        decoder = self.decoder
        packet: Any = NEED_DATA
        # [MQTT-3.1.0-1] the first packet must be CONNECT (the decoder enforces it).
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while packet is NEED_DATA:
                data = await link.read()
                if not data:
                    return
                decoder.receive_data(data)
                self._count_incoming()
                packet = decoder.next_packet()
        assert isinstance(packet, Connect)
        await self._handle_connect(packet)
        handlers = self._handlers
        loop = self.loop
        while not self.closing:
            while True:
                packet = decoder.next_packet()
                if packet is NEED_DATA:
                    break
                if self._hooked and type(packet) is not Publish:
                    await self._settled()  # earlier PUBLISHes take effect first
                    if self.closing:
                        return
                result = handlers[type(packet)](packet)
                if result is not None:
                    await result
                if self.closing:
                    return
            if self._held:
                self._count_incoming()  # what the packets just handled no longer hold
            if link.buffered() > WRITE_HIGH_WATER:
                # Backpressure: stop reading this client until its socket drains.
                self.flush()
                await link.drain()
            data = await link.read()
            if not data:
                return
            self.last_rx = loop.time()
            decoder.receive_data(data)
            self._count_incoming()

    # -- CONNECT ------------------------------------------------------------------------------

    def _refuse(self, code: ReasonCode, why: str) -> None:
        """CONNACK with a failure code, then close [MQTT-3.2.2-5 (3.1.1) / 3.2.2-7 (5.0)]."""
        self.broker.throttle.info(
            ("refused", code), "refusing %s from %s: %s", code.name, self.link.peer, why
        )
        if self.v5:
            self.send(encode(Connack(reason_code=code), V5))
        elif connack_code_311(code) is not None:
            self.send(encode(Connack(reason_code=code), V311))
        # else: [MQTT-3.2.2-6 (3.1.1)] no applicable return code: close without CONNACK.
        self.close()
        raise _Close

    async def _handle_connect(self, connect: Connect) -> None:
        broker = self.broker
        config = self.config
        version = self.decoder.version
        assert version is not None
        self.version = version
        self.v5 = v5 = version == V5
        props = connect.properties
        if props.authentication_method is not None:
            # Enhanced authentication (§4.12) is not offered: [MQTT-4.12.0-1 context]
            # a server that does not support the method answers CONNACK 0x8C.
            self._refuse(ReasonCode.BAD_AUTHENTICATION_METHOD, "enhanced auth not supported")

        client_id = connect.client_id
        assigned: str | None = None
        if not client_id:
            if not v5 and not connect.clean_start:
                # [MQTT-3.1.3-8 (3.1.1)] zero-length id with CleanSession=0: 0x02, close.
                self._refuse(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
            # [MQTT-3.1.3-6 (3.1.1) / MQTT-3.1.3-6 (5.0)] assign a unique id.
            client_id = assigned = broker._assign_client_id()

        # Authentication: certificate, then password, then anonymous.
        username = connect.username
        passwords = broker.passwords
        if self.cert_username is not None:
            username = self.cert_username
        elif username is not None and passwords is not None:
            ok = await asyncio.to_thread(passwords.verify, username, connect.password)
            if not ok:
                broker.stats.auth_failures += 1
                self._refuse(ReasonCode.BAD_USER_NAME_OR_PASSWORD, f"bad password for {username!r}")
        elif not self.listener.admits_anonymous(authentication=passwords is not None):
            broker.stats.auth_failures += 1
            self._refuse(ReasonCode.NOT_AUTHORIZED, "anonymous access is off on this listener")
        will = connect.will
        if (
            v5
            and will is not None
            and will.properties.payload_format_indicator == 1
            and not _is_utf8(will.payload)
        ):
            # MQTT 5.0 §3.1.3.2.3: Payload Format Indicator 1 says the will is UTF-8;
            # "the Server MAY validate [it] ... and if it is not send a CONNACK with
            # the Reason Code of 0x99 (Payload format invalid)".
            broker.stats.payload_format_invalid += 1
            self._refuse(ReasonCode.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
        if len(broker._online) >= config.max_connections and client_id not in broker._online:
            self._refuse(ReasonCode.SERVER_BUSY, "connection limit reached")
        if self.closing:
            raise _Close

        self.client_id = client_id
        self.username = username
        if v5:
            expiry = props.session_expiry_interval or 0
        else:
            # 3.1.1: CleanSession=0 sessions last until the client cleans them.
            expiry = 0 if connect.clean_start else NEVER_EXPIRES
        granted_expiry = min(expiry, config.max_session_expiry)

        # From here on no awaits until the session is attached (no interleaving).
        self.session, present = broker._attach(
            self, connect.clean_start, granted_expiry, _identity(username)
        )
        self.will = connect.will

        keep_alive = connect.keep_alive
        server_keep_alive: int | None = None
        if v5 and config.server_keep_alive is not None and config.server_keep_alive != keep_alive:
            # [MQTT-3.2.2-21] the client must use the Server Keep Alive we send.
            keep_alive = server_keep_alive = config.server_keep_alive
        self.keep_alive = keep_alive

        if v5:
            self.send_quota = min(props.receive_maximum or 65535, config.max_inflight)
            self.max_out_packet = props.maximum_packet_size or 0
            # [MQTT-3.1.2-26/27 (5.0)] no aliases towards the client unless it allows them.
            self.alias_max_out = props.topic_alias_maximum or 0
            response_information = None
            if props.request_response_information and config.response_information_prefix:
                response_information = f"{config.response_information_prefix}/{client_id}"
            connack_props = Properties(
                session_expiry_interval=granted_expiry if granted_expiry != expiry else None,
                receive_maximum=config.receive_maximum,
                # [MQTT-3.2.2-9] advertise Maximum QoS when below 2.
                maximum_qos=config.maximum_qos if config.maximum_qos < 2 else None,
                # [MQTT-3.2.2-13] advertise Retain Available when not supported.
                retain_available=None if config.retain_available else 0,
                maximum_packet_size=config.max_packet_size,
                # [MQTT-3.2.2-16] the id we assigned.
                assigned_client_identifier=assigned,
                topic_alias_maximum=config.topic_alias_maximum or None,
                server_keep_alive=server_keep_alive,
                response_information=response_information,
            )
            # [MQTT-3.2.2-2/3 (5.0)] Session Present.
            self.send(encode(Connack(present, ReasonCode.SUCCESS, connack_props), V5))
        else:
            # [MQTT-3.2.2-1/2 (3.1.1)] Session Present.
            self.send(encode(Connack(present, ReasonCode.SUCCESS), V311))
        self.connected = True
        self.info = ClientInfo(client_id, username, version, self.listener.label, self.link.peer)
        broker.stats.connections_total += 1
        if keep_alive:
            self._keepalive_handle = self.loop.call_later(keep_alive * 1.5, self._check_keepalive)
        if present:
            self._resend_inflight()
        self.pump()
        if broker._on_connect is not None:
            try:
                await broker._on_connect(self.info)
            except Exception:
                logger.exception("on_connect hook failed for %s", client_id)

    def _check_keepalive(self) -> None:
        if self.closing:
            return
        limit = self.keep_alive * 1.5
        idle = self.loop.time() - self.last_rx
        if idle < limit:
            self._keepalive_handle = self.loop.call_later(limit - idle, self._check_keepalive)
            return
        # [MQTT-3.1.2-24 (3.1.1) / MQTT-3.1.2-22 (5.0)] nothing for 1.5 x Keep Alive:
        # close as if the network failed, so the will is published.
        self.broker.throttle.info("keepalive", "keepalive timeout for %s", self.client_id)
        self.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)

    def take_over(self) -> None:
        """Another connection claimed our client id [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)]."""
        self.taken_over = True
        self.disconnect(ReasonCode.SESSION_TAKEN_OVER)

    def _handle_second_connect(self, packet: Connect) -> None:
        # The decoder raises first; kept so that every packet type has a handler.
        self.fail(ReasonCode.PROTOCOL_ERROR, "second CONNECT [MQTT-3.1.0-2]")

    def _handle_auth(self, packet: Auth) -> None:
        # No Authentication Method was agreed, so AUTH is a protocol error (§4.12).
        self.fail(ReasonCode.PROTOCOL_ERROR, "AUTH without an authentication method")

    # -- inbound PUBLISH ----------------------------------------------------------------------

    def _handle_publish(self, packet: Publish) -> Awaitable[None] | None:
        config = self.config
        topic = packet.topic
        props = packet.properties
        if props is not EMPTY_PROPERTIES:
            alias = props.topic_alias
            if alias is not None:
                # [MQTT-3.3.2-8/9 (5.0)] alias 1..our Topic Alias Maximum, else 0x94.
                if alias > config.topic_alias_maximum:
                    self.fail(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias}")
                if topic:
                    self.alias_in[alias] = topic
                else:
                    known = self.alias_in.get(alias)
                    if known is None:
                        self.fail(ReasonCode.PROTOCOL_ERROR, f"unknown topic alias {alias}")
                        return None
                    topic = known
        qos = packet.qos
        if qos > config.maximum_qos:
            # [MQTT-3.2.2-11 (5.0)] QoS above Maximum QoS: DISCONNECT 0x9B.
            self.fail(ReasonCode.QOS_NOT_SUPPORTED, f"QoS {qos}")
        if packet.retain and not config.retain_available:
            # [MQTT-3.2.2-14 (5.0)] RETAIN when Retain Available is 0: DISCONNECT 0x9A.
            self.fail(ReasonCode.RETAIN_NOT_SUPPORTED, "retain")
        session = self.session
        assert session is not None
        pid = packet.packet_id
        if qos == 2:
            if pid in session.incoming_qos2:
                # [MQTT-4.3.3-2 (3.1.1) / 4.3.3-10 (5.0)] a duplicate: PUBREC again,
                # but no second delivery.
                self.send(bytes((0x50, 2, pid >> 8, pid & 0xFF)))
                return None
            if pid in self._hooked_qos2:
                return None  # a resend while the first is hooked: its PUBREC is coming
            if len(session.incoming_qos2) + len(self._hooked_qos2) >= config.receive_maximum:
                # §3.3.4: more than Receive Maximum unacknowledged QoS 2: 0x93.
                self.fail(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
        self.broker.stats.messages_received += 1
        acl = self.broker.acl
        if acl is not None and not acl.can_publish(self.username, self.client_id, topic):
            self._deny_publish(qos, pid, topic)
            return None
        if props.payload_format_indicator == 1 and not _is_utf8(packet.payload):
            # [MQTT-3.3.2-4] Payload Format Indicator 1 promises UTF-8; "the receiver
            # MAY validate ... and if it is not, send a PUBACK, PUBREC, or DISCONNECT
            # with Reason Code of 0x99 (Payload format invalid)" (§3.3.2.3.2).
            self.broker.stats.payload_format_invalid += 1
            self._refuse_publish(qos, pid, ReasonCode.PAYLOAD_FORMAT_INVALID)
            return None
        if props is EMPTY_PROPERTIES or (props.topic_alias is not None and _only_alias(props)):
            message = Message(topic, packet.payload, qos, packet.retain, origin=self.client_id)
        else:
            expiry = props.message_expiry_interval
            now = time.time()
            message = Message(
                topic,
                packet.payload,
                qos,
                packet.retain,
                props.payload_format_indicator,
                None if expiry is None else now + expiry,
                props.content_type,
                props.response_topic,
                props.correlation_data,
                props.user_properties,
                self.client_id,
            )
        if self.on_publish is not None:
            return self._hook(message, pid, packet.dup)
        self._accept(message, pid)
        return None

    def _accept(self, message: Message, pid: int | None) -> None:
        qos = message.qos
        if qos == 2:
            self.session.receive_qos2(pid)  # type: ignore[union-attr,arg-type]
        self.broker.route(message)
        if qos == 1:
            self.send(bytes((0x40, 2, pid >> 8, pid & 0xFF)))  # type: ignore[operator]
        elif qos == 2:
            # Method B of §4.3.3: the message is delivered onward now; the id is
            # kept until PUBREL so that a resent PUBLISH is not delivered twice.
            self.send(bytes((0x50, 2, pid >> 8, pid & 0xFF)))  # type: ignore[operator]

    def _hook(self, message: Message, pid: int | None, dup: bool) -> Awaitable[None] | None:
        """Start the ``on_publish`` hook; its outcome is applied by :meth:`_settle`."""
        assert self.on_publish is not None and self.info is not None
        task = asyncio.ensure_future(self.on_publish(self.info, message, pid, dup))
        self._hooked.append((task, message, pid))
        if message.qos == 2:
            self._hooked_qos2.add(pid)  # type: ignore[arg-type]
        task.add_done_callback(self._settle)
        if len(self._hooked) >= self.config.receive_maximum:
            # Bounded pipeline: read nothing more until the oldest is settled.
            return self._settled(one=True)
        return None

    async def _settled(self, *, one: bool = False) -> None:
        """Wait until every hooked PUBLISH (``one``: the oldest) has been settled."""
        while self._hooked:
            oldest = self._hooked[0]
            await asyncio.wait((oldest[0],))
            self._settle()
            if one:
                return

    def _settle(self, _: object = None) -> None:
        """Apply the outcomes of the finished hooks at the head, in arrival order."""
        hooked = self._hooked
        while hooked and hooked[0][0].done():
            task, message, pid = hooked.popleft()
            if message.qos == 2:
                self._hooked_qos2.discard(pid)
            code: ReasonCode | Refusal | None
            if task.cancelled():
                code = ReasonCode.UNSPECIFIED_ERROR
            elif (exc := task.exception()) is not None:
                logger.error("on_publish hook failed for %s", self.client_id, exc_info=exc)
                code = ReasonCode.UNSPECIFIED_ERROR
            else:
                code = task.result()
            if not self.closing:
                self._outcome(message, pid, code)

    def _outcome(
        self, message: Message, pid: int | None, code: ReasonCode | Refusal | None
    ) -> None:
        if code is None:
            self._accept(message, pid)
            return
        permanent = isinstance(code, Refusal)
        reason = code.code if isinstance(code, Refusal) else code
        if reason < 0x80:
            self._accept(message, pid)
            return
        self.broker.stats.hook_failures += 1
        qos = message.qos
        if not qos:
            return  # nothing to tell a QoS 0 publisher
        if self.v5 or permanent:
            self._refuse_publish(qos, pid, ReasonCode(reason))
        else:
            # 3.1.1 cannot say "not now": close without acknowledging, so that
            # the client resends the message on its next connection [MQTT-4.4.0-1].
            self.broker.throttle.warning(
                ("refused-311", reason),
                "closing %s: publish refused for now (%s); it will resend",
                self.client_id,
                ReasonCode(reason).name,
            )
            self.close()

    def _refuse_publish(
        self, qos: int, pid: int | None, code: ReasonCode, *, counted: bool = False
    ) -> None:
        """Tell a publisher its message was refused for good (nothing for QoS 0).

        ``counted``: the caller counted the refusal already.
        """
        if not qos:
            return
        assert pid is not None
        if self.v5:
            reason = code if code in PUBACK_REASON_CODES else ReasonCode.UNSPECIFIED_ERROR
            # [MQTT-4.3.3-9 (5.0)] after a failed PUBREC the id is not kept.
            ack = Puback(pid, reason) if qos == 1 else Pubrec(pid, reason)
            self.send(encode(ack, V5))
            return
        # 3.1.1 has no negative ack, and resending can never succeed: acknowledge
        # and drop, as Mosquitto does with a denied publish; a disconnect would
        # make the client resend it on every reconnect, forever.
        if not counted:
            self.broker.stats.refused_acknowledged += 1
        if qos == 1:
            self.send(encode(Puback(pid), V311))
        else:
            self.session.receive_qos2(pid)  # type: ignore[union-attr]
            self.send(encode(Pubrec(pid), V311))

    def _deny_publish(self, qos: int, pid: int | None, topic: str) -> None:
        self.broker.stats.denied_publish += 1
        self.broker.throttle.warning(
            ("denied-publish", self.client_id), "denied PUBLISH by %s to %r", self.client_id, topic
        )
        # 5.0: PUBACK/PUBREC 0x87 Not authorized (the id is not kept); 3.1.1 has no
        # negative ack: acknowledged and dropped (counted as denied above).
        self._refuse_publish(qos, pid, ReasonCode.NOT_AUTHORIZED, counted=True)

    def _handle_pubrel(self, packet: Pubrel) -> None:
        pid = packet.packet_id
        known = self.session.release_qos2(pid)  # type: ignore[union-attr]
        if known or not self.v5:
            # [MQTT-4.3.3-2 (3.1.1) / 4.3.3-11 (5.0)] PUBREL is answered with PUBCOMP.
            self.send(bytes((0x70, 2, pid >> 8, pid & 0xFF)))
        else:
            self.send(encode(Pubcomp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), V5))

    # -- outbound flows -----------------------------------------------------------------------

    def _handle_puback(self, packet: Puback) -> None:
        if self.session.puback(packet.packet_id) is not None:  # type: ignore[union-attr]
            self.pump()

    def _handle_pubrec(self, packet: Pubrec) -> None:
        pid = packet.packet_id
        failed = packet.reason_code >= 0x80
        out = self.session.pubrec(pid, failed)  # type: ignore[union-attr]
        if failed:
            # [MQTT-4.4.0-2 (5.0)] a failure code ends the flow; no PUBREL.
            if out is not None:
                self.pump()
            return
        if out is None and self.v5:
            self.send(encode(Pubrel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), V5))
            return
        # [MQTT-4.3.3-1 (3.1.1) / 4.3.3-4 (5.0)] answer PUBREC with PUBREL.
        self.send(bytes((0x62, 2, pid >> 8, pid & 0xFF)))

    def _handle_pubcomp(self, packet: Pubcomp) -> None:
        if self.session.pubcomp(packet.packet_id) is not None:  # type: ignore[union-attr]
            self.pump()

    def _publish_bytes(
        self,
        fan: _Fanout,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        packet_id: int | None,
        dup: bool = False,
    ) -> bytes | None:
        """The PUBLISH for this client, or ``None`` if it exceeds its Maximum Packet Size."""
        if not self.v5:
            if not qos:
                return fan.qos0_packet(False, retain, subscription_ids)
            m = fan.message
            return encode_publish(
                fan.topic_bytes,
                m.payload,
                V311,
                qos=qos,
                retain=retain,
                dup=dup,
                packet_id=packet_id,
            )
        new_alias = 0
        topic_bytes = fan.topic_bytes
        props = fan.properties(subscription_ids)
        if self.alias_max_out:
            topic = fan.message.topic
            alias = self.alias_out.get(topic)
            if alias is None and len(self.alias_out) < self.alias_max_out:
                # Aliases are per connection [MQTT-3.3.2-7] and never above the
                # client's Topic Alias Maximum [MQTT-3.3.2-11 (5.0)].
                alias = new_alias = len(self.alias_out) + 1
                self.alias_out[topic] = alias
            elif alias is not None:
                topic_bytes = b""
            if alias is not None:
                props = props + encode_properties(Properties(topic_alias=alias))
        elif not qos:
            packet = fan.qos0_packet(True, retain, subscription_ids)
            if self.max_out_packet and len(packet) > self.max_out_packet:
                self.broker.stats.dropped_too_large += 1
                return None
            return packet
        packet = encode_publish(
            topic_bytes,
            fan.message.payload,
            V5,
            qos=qos,
            retain=retain,
            dup=dup,
            packet_id=packet_id,
            properties=props,
        )
        if self.max_out_packet and len(packet) > self.max_out_packet:
            # [MQTT-3.1.2-24/25 (5.0)] never send more than the client's Maximum
            # Packet Size: discard as if delivered (and forget an alias it never saw).
            if new_alias:
                del self.alias_out[fan.message.topic]
            self.broker.stats.dropped_too_large += 1
            return None
        return packet

    def may_read(self, topic: str) -> bool:
        """Whether the ACL lets this client receive a message on ``topic``.

        Checked on every delivery, as Mosquitto does, not only at SUBSCRIBE: the
        ACL may have been reloaded since, and a resumed session's queue was
        filled under the ACL of its previous connection. Cheap in the usual
        case: a subscription granted under the current ACL is wholly readable
        (SUBSCRIBE requires an allow rule covering the filter and no deny rule
        overlapping it), so while every subscription is, no topic is checked;
        otherwise verdicts are cached per topic until the ACL changes.
        """
        broker = self.broker
        acl = broker.acl
        if acl is None:
            self._all_readable = True  # until an ACL is loaded (reload_auth clears it)
            return True
        if self._acl_generation != broker.acl_generation:
            self._acl_generation = broker.acl_generation
            self._readable.clear()
            session = self.session
            self._all_readable = session is not None and all(
                acl.can_subscribe(self.username, self.client_id, sub.match_filter)
                for sub in session.subscriptions.values()
            )
        if self._all_readable:
            return True
        readable = self._readable
        verdict = readable.get(topic)
        if verdict is None:
            if len(readable) >= READ_CACHE_MAX:
                readable.clear()
            verdict = readable[topic] = acl.can_read(self.username, self.client_id, topic)
        if not verdict:
            broker.stats.denied_delivery += 1
        return verdict

    def deliver(
        self, fan: _Fanout, qos: int, retain: bool, subscription_ids: tuple[int, ...]
    ) -> None:
        """Send (or queue, for QoS > 0 beyond the send quota) one message to this client."""
        if not self._all_readable and not self.may_read(fan.message.topic):
            return
        if not qos:
            if self.link.buffered() > self.config.max_write_buffer:
                self.broker.stats.dropped_slow_consumer += 1
                return
            packet = self._publish_bytes(fan, 0, retain, subscription_ids, None)
            if packet is not None:
                self.broker.stats.messages_sent += 1
                self.send(packet)
            return
        session = self.session
        assert session is not None
        delivery = Delivery(fan.message, qos, retain, subscription_ids)
        # [MQTT-4.6.0-6] keep order: nothing overtakes what is already queued.
        # [MQTT-3.3.4-9 (5.0)] never more unacknowledged than the client's Receive Maximum.
        if session.queue or len(session.inflight) >= self.send_quota:
            session.enqueue(delivery)
            return
        self._transmit(delivery, fan)

    def _transmit(self, delivery: Delivery, fan: _Fanout) -> None:
        session = self.session
        assert session is not None
        out = session.send(delivery)
        packet = self._publish_bytes(
            fan, delivery.qos, delivery.retain, delivery.subscription_ids, out.packet_id
        )
        if packet is None:
            session.drop_inflight(out.packet_id)
            return
        self.broker.stats.messages_sent += 1
        self.send(packet)

    def pump(self) -> None:
        """Move queued messages into flight while the send quota allows."""
        session = self.session
        if session is None or not session.queue or self.closing:
            return
        now = time.time()
        quota = self.send_quota
        while len(session.inflight) < quota:
            delivery = session.pop_queued(now)
            if delivery is None:
                break
            if self.may_read(delivery.message.topic):
                self._transmit(delivery, _Fanout(delivery.message, now))

    def _resend_inflight(self) -> None:
        """[MQTT-4.4.0-1] on a resumed session, resend unacknowledged PUBLISH (DUP=1)
        and PUBREL with their original packet ids, in the original order."""
        session = self.session
        assert session is not None
        now = time.time()
        for out in list(session.inflight.values()):
            pid = out.packet_id
            if out.released:
                self.send(bytes((0x62, 2, pid >> 8, pid & 0xFF)))
                continue
            d = out.delivery
            if not self.may_read(d.message.topic):
                session.drop_inflight(pid)
                continue
            # [MQTT-3.3.1-1] DUP=1 on a re-delivery.
            packet = self._publish_bytes(
                _Fanout(d.message, now), d.qos, d.retain, d.subscription_ids, pid, dup=True
            )
            if packet is None:
                session.drop_inflight(pid)
            else:
                self.send(packet)

    # -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

    def _handle_subscribe(self, packet: Subscribe) -> None:
        broker = self.broker
        config = self.config
        session = self.session
        assert session is not None
        ids = packet.properties.subscription_identifiers
        identifier = ids[0] if ids else None
        codes: list[ReasonCode] = []
        retained: list[tuple[Subscription, list[Message]]] = []
        now = time.time()
        # [MQTT-3.8.4-4 (3.1.1) / 3.8.4-5 (5.0)] several filters behave like a sequence
        # of SUBSCRIBEs; [MQTT-3.8.4-5 (3.1.1) / 3.9.3-1 (5.0)] one code each, in order.
        for text, options in packet.subscriptions:
            code, sub, is_new = self._subscribe_one(text, options, identifier)
            codes.append(code)
            if sub is None or sub.share is not None or not config.retain_available:
                # §4.8.2: retained messages are not sent for a shared subscription.
                continue
            handling = sub.retain_handling
            # [MQTT-3.3.1-9/10/11 (5.0)] Retain Handling 0: send; 1: only if new; 2: never.
            # [MQTT-3.8.4-3 (3.1.1)] a repeated SUBSCRIBE re-sends the retained messages.
            if handling == 0 or (handling == 1 and is_new):
                retained.append((sub, broker._retained.match(sub.match_filter, now)))
        # [MQTT-3.8.4-1] SUBACK with the same packet id, before any retained message.
        self.send(encode(Suback(packet.packet_id, tuple(codes)), self.version))
        for sub, messages in retained:
            sub_ids = _sub_ids(sub)
            for message in messages:
                if message.origin == self.client_id and sub.no_local:
                    continue
                qos = min(message.qos, sub.qos)
                # [MQTT-3.3.1-8 (3.1.1)] RETAIN=1 for messages sent because of a new
                # subscription (5.0 §3.3.1.3 likewise, whatever Retain As Published says).
                self.deliver(_Fanout(message, now), qos, True, sub_ids)

    def _subscribe_one(
        self, text: str, options: SubscriptionOptions, identifier: int | None
    ) -> tuple[ReasonCode, Subscription | None, bool]:
        config = self.config
        session = self.session
        assert session is not None
        try:
            # $share/{ShareName}/{filter} is honoured for 3.1.1 clients too, as
            # Mosquitto does (3.1.1 has no shared subscriptions of its own).
            parsed = parse_filter(text)
        except InvalidTopic as exc:
            # Invalid filters fail in the SUBACK (0x80 / 0x8F), they are not accepted.
            self.broker.throttle.info(
                "invalid-filter", "invalid filter %r from %s: %s", text, self.client_id, exc
            )
            return ReasonCode.TOPIC_FILTER_INVALID, None, False
        if parsed.share is not None and options.no_local and self.v5:
            # [MQTT-3.8.3-4 (5.0)] No Local on a shared subscription is a protocol error.
            self.fail(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")
        acl = self.broker.acl
        if acl is not None and not acl.can_subscribe(
            self.username, self.client_id, parsed.topic_filter
        ):
            self.broker.stats.denied_subscribe += 1
            self.broker.throttle.warning(
                ("denied-subscribe", self.client_id),
                "denied SUBSCRIBE by %s to %r",
                self.client_id,
                text,
            )
            # 0x87 in 5.0; the codec writes 0x80 for 3.1.1 [MQTT-3.9.3-2 (3.1.1)].
            return ReasonCode.NOT_AUTHORIZED, None, False
        existing = session.subscriptions.get(text)
        if existing is None and len(session.subscriptions) >= config.max_subscriptions:
            logger.warning("subscription limit reached for %s", self.client_id)
            return ReasonCode.QUOTA_EXCEEDED, None, False
        # [MQTT-3.8.4-6 (3.1.1) / 3.8.4-8 (5.0)] granted QoS may be lower than asked.
        granted = min(options.qos, config.maximum_qos)
        sub = Subscription(
            text,
            granted,
            options.no_local,
            options.retain_as_published,
            options.retain_handling,
            identifier,
            parsed.share,
            parsed.topic_filter,
        )
        # [MQTT-3.8.4-3] an identical filter replaces the existing subscription.
        session.subscriptions[text] = sub
        session.dirty = True
        self.broker._tree.subscribe(parsed.topic_filter, self.client_id, sub, parsed.share)
        return ReasonCode(granted), sub, existing is None

    def _handle_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes: list[ReasonCode] = []
        for text in packet.topic_filters:
            sub = session.subscriptions.pop(text, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
                continue
            session.dirty = True
            self.broker._tree.unsubscribe(sub.match_filter, self.client_id, sub.share)
            self._acl_generation = -1  # what remains may now be wholly readable
            codes.append(ReasonCode.SUCCESS)
        # [MQTT-3.10.4-4/5 (3.1.1)] UNSUBACK even when nothing matched.
        self.send(encode(Unsuback(packet.packet_id, tuple(codes)), self.version))

    # -- the rest -----------------------------------------------------------------------------

    def _handle_pingreq(self, packet: Pingreq) -> None:
        # [MQTT-3.12.4-1] answer PINGREQ with PINGRESP.
        self.send(_PINGRESP)

    def _handle_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        assert session is not None
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            if session.expiry_interval == 0 and expiry != 0:
                # §3.14.2.2.2: 0 in CONNECT, then non-zero in DISCONNECT: protocol error.
                self.fail(ReasonCode.PROTOCOL_ERROR, "session expiry raised from 0")
            session.expiry_interval = min(expiry, self.config.max_session_expiry)
            session.dirty = True
        if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            # [MQTT-3.1.2-10] / [MQTT-3.14.4-3 (5.0)] a normal DISCONNECT discards the will;
            # 0x04 keeps it so that it is published.
            self.will = None
        self.closing = True


def _fd_budget() -> int:
    """The sockets MQTT may hold: :data:`FD_SHARE` of the descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, int(soft * FD_SHARE))


def _code(outcome: ReasonCode | Refusal) -> ReasonCode:
    return outcome.code if isinstance(outcome, Refusal) else outcome


def _identity(username: str | None) -> str:
    """Who owns a session: the authenticated user (or certificate identity)."""
    return "anonymous" if username is None else f"user:{username}"


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _sub_ids(sub: Subscription) -> tuple[int, ...]:
    return (sub.identifier,) if sub.identifier else ()


def _only_alias(props: Properties) -> bool:
    return props == Properties(topic_alias=props.topic_alias)


# -- the broker -------------------------------------------------------------------------------


@dataclass(slots=True)
class _PendingWill:
    message: Message
    info: ClientInfo
    handle: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _Bound:
    listener: Listener
    host: str
    port: int
    server: Any = None
    runner: Any = None


class MqttBroker:
    """An MQTT 3.1.1 / 5.0 broker; use as ``async with MqttBroker(config) as broker``."""

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        on_publish: OnPublish | None = None,
        on_connect: OnConnect | None = None,
        on_disconnect: OnDisconnect | None = None,
    ) -> None:
        self.config = config = config or BrokerConfig()
        self.stats = BrokerStats()
        #: Authentication and authorisation in force; :meth:`reload_auth` swaps them.
        self.passwords: PasswordFile | None = config.passwords
        self.acl: Acl | None = config.acl
        #: Bumped by every :meth:`reload_auth`: connections re-check their
        #: subscriptions against the new ACL at their next delivery.
        self.acl_generation = 0
        #: A peer's misbehaviour is logged once per kind and interval, with a count.
        self.throttle = Throttle(logger)
        #: Bytes held by all connections' decoders (``max_incomplete_bytes``).
        self._incomplete = 0
        #: Sockets open at most (connected clients and those yet to CONNECT).
        self.max_sockets = min(config.max_connections, _fd_budget())
        self._on_publish = on_publish
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._tree: _Tree[str, Subscription] = _Tree()
        self._retained = RetainedStore(self.config.max_retained)
        self._sessions: dict[str, Session] = {}
        self._online: dict[str, _Connection] = {}
        self._connections: set[_Connection] = set()
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._wills: dict[str, _PendingWill] = {}
        self._deleted_sessions: set[str] = set()
        self._store: SessionStore | None = None
        self._bound: list[_Bound] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._autosave: asyncio.Task[None] | None = None
        self._save_lock = asyncio.Lock()
        self._stopping = False
        self._id_counter = itertools.count(1)
        self._id_prefix = f"hw-{secrets.token_hex(4)}-"

    # -- public API ---------------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[Listener, str, int]]:
        """Where each listener is bound (the real port when configured with port 0)."""
        return [(b.listener, b.host, b.port) for b in self._bound]

    def port(self, index: int = 0) -> int:
        return self._bound[index].port

    @property
    def sessions(self) -> dict[str, Session]:
        """Live view of the sessions (read only, for diagnostics and tests)."""
        return self._sessions

    @property
    def retained(self) -> RetainedStore:
        return self._retained

    @property
    def connected_clients(self) -> list[str]:
        return list(self._online)

    @property
    def incomplete_bytes(self) -> int:
        """Bytes held across connections for packets still arriving."""
        return self._incomplete

    def reload_auth(self, passwords: PasswordFile | None, acl: Acl | None) -> None:
        """Use a new password file and ACL from now on, without dropping anyone.

        New CONNECTs authenticate against ``passwords``; every later PUBLISH,
        SUBSCRIBE and delivery is checked against ``acl`` (connected clients'
        subscriptions included: what they may no longer read stops reaching them).
        """
        self.passwords = passwords
        self.acl = acl
        self.acl_generation += 1
        for conn in self._connections:
            conn._all_readable = False

    @property
    def queue_dropped(self) -> int:
        """Messages dropped by session queue overflow policies, over all sessions."""
        return sum(s.dropped for s in self._sessions.values())

    async def publish(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        content_type: str | None = None,
        payload_format_indicator: int | None = None,
        message_expiry_interval: int | None = None,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Publish from inside the process, as if a client had (without the on_publish hook)."""
        validate_topic_name(topic)
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS {qos} is not 0, 1 or 2")
        expires = None if message_expiry_interval is None else time.time() + message_expiry_interval
        self.route(
            Message(
                topic,
                bytes(payload),
                min(qos, self.config.maximum_qos),
                retain,
                payload_format_indicator,
                expires,
                content_type,
                response_topic,
                correlation_data,
                tuple(user_properties),
            )
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> MqttBroker:
        config = self.config
        if config.data_dir is not None:
            self._store = SessionStore(Path(config.data_dir))
            self._load()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            for listener in config.listeners:
                self._bound.append(await self._listen(listener))
            if self._store is not None:
                self._autosave = self._tg.create_task(self._autosave_loop())
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._stopping = True
        for bound in self._bound:
            if bound.server is not None:
                bound.server.close()
        for conn in list(self._connections):
            conn.disconnect(ReasonCode.SERVER_SHUTTING_DOWN)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=WS_CLOSE_TIMEOUT + 1)
        for bound in self._bound:
            if bound.runner is not None:
                await bound.runner.cleanup()
        for bound in self._bound:
            if bound.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(bound.server.wait_closed(), 1)
        if self._autosave is not None:
            self._autosave.cancel()
        for handle in self._expiry.values():
            handle.cancel()
        for will in self._wills.values():
            if will.handle is not None:
                will.handle.cancel()
        if self._tg is not None:
            tg, self._tg = self._tg, None
            await tg.__aexit__(None, None, None)
        if self._store is not None:
            now = time.time()
            for session in self._sessions.values():
                if session.disconnected_at is None:
                    session.disconnected_at = now
                    session.dirty = True
            self._store.save(*self._changes())
            self._store.close()
            self._store = None

    async def _listen(self, listener: Listener) -> _Bound:
        if listener.websocket:
            return await self._listen_websocket(listener)

        bound = _Bound(listener, listener.host, listener.port)

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ssl_object = writer.get_extra_info("ssl_object")
            cert_user = _cert_username(ssl_object, listener.cert_username)
            await self._serve(_StreamLink(reader, writer), bound.listener, cert_user)

        bound.server = await asyncio.start_server(
            on_client, listener.host, listener.port, ssl=listener.ssl, backlog=4096
        )
        # No await from here on: no connection is served before the real port is known.
        bound.host, bound.port = bound.server.sockets[0].getsockname()[:2]
        bound.listener = replace(listener, port=bound.port)
        logger.info("MQTT listening on %s", bound.listener.label)
        return bound

    async def _listen_websocket(self, listener: Listener) -> _Bound:
        bound = _Bound(listener, listener.host, listener.port)

        async def handler(request: web.Request) -> web.StreamResponse:
            # [MQTT-6.0.0-3/4] the client offers and the server selects "mqtt".
            ws = web.WebSocketResponse(
                protocols=("mqtt",),
                max_msg_size=self.config.max_packet_size + 5,
                timeout=WS_CLOSE_TIMEOUT,
            )
            await ws.prepare(request)
            if ws.ws_protocol != "mqtt":
                await ws.close(code=1002, message=b"subprotocol mqtt required")
                return ws
            transport = request.transport
            ssl_object = transport.get_extra_info("ssl_object") if transport else None
            peer = request.remote or "?"
            link = _WebSocketLink(ws, peer)
            cert_user = _cert_username(ssl_object, listener.cert_username)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(link.pump())
                try:
                    await self._serve(link, bound.listener, cert_user)
                finally:
                    link.close()
            if self._stopping and transport is not None:
                # Shutting down: the WebSocket close is done; do not leave a TLS
                # close_notify exchange pending past the end of the event loop.
                transport.abort()
            return ws

        app = web.Application()
        app.router.add_get(listener.path, handler)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, listener.host, listener.port, ssl_context=listener.ssl)
        await site.start()
        bound.runner = runner
        bound.host, bound.port = runner.addresses[0][:2]
        bound.listener = replace(listener, port=bound.port)
        logger.info("MQTT over WebSocket on %s%s", bound.listener.label, listener.path)
        return bound

    async def _serve(self, link: _Link, listener: Listener, cert_user: str | None) -> None:
        if self._stopping:
            link.close()
            return
        if len(self._connections) >= self.max_sockets:
            self.stats.connections_refused += 1
            self.throttle.warning(
                "socket-cap",
                "MQTT connection limit reached (%d sockets): closing the new one from %s",
                self.max_sockets,
                link.peer,
            )
            link.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Connection(self, link, listener, cert_user)
        self._connections.add(conn)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._tasks.discard(task)

    # -- sessions -----------------------------------------------------------------------------

    def _assign_client_id(self) -> str:
        while True:
            candidate = f"{self._id_prefix}{next(self._id_counter)}"
            if candidate not in self._sessions and candidate not in self._online:
                return candidate

    def _attach(
        self, conn: _Connection, clean_start: bool, expiry: int, owner: str
    ) -> tuple[Session, bool]:
        """Bind ``conn`` to its session; returns (session, session present).

        A session belongs to the user who created it. Another user connecting
        with its client id takes the connection over, as MQTT requires
        [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)], but not the session: it gets a
        new, clean one (Session Present 0) and the old one is discarded, so its
        subscriptions and queued messages never reach someone else. Refusing
        the CONNECT instead would lock a client id forever to whoever first
        used it (3.1.1 sessions never expire), so a device whose credentials
        were rotated could never reconnect. Mosquitto resumes the session for
        the new user and drops the queued messages its ACL forbids
        (``db__check_acl_of_all_messages`` in ``connect__on_authorised``); EMQX
        resumes it unchecked. Besides this rule every delivery is checked
        against the receiver's ACL (:meth:`_Connection.may_read`).
        """
        cid = conn.client_id
        old = self._online.pop(cid, None)
        if old is not None:
            # [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)] takeover: DISCONNECT 0x8E, close.
            old.take_over()
            self._connection_lost(old, takeover=True)
        pending = self._wills.pop(cid, None)
        if pending is not None and pending.handle is not None:
            # [MQTT-3.1.3-9 (5.0)] reconnected within the Will Delay: no will.
            pending.handle.cancel()
        handle = self._expiry.pop(cid, None)
        if handle is not None:
            handle.cancel()
        session = self._sessions.get(cid)
        if session is not None and not clean_start and session.owner not in (None, owner):
            self.stats.sessions_reset_owner += 1
            logger.warning(
                "client id %r connected as %s: the session of %s is discarded, not resumed",
                cid,
                owner,
                session.owner,
            )
            self._drop_session(session)
            session = None
        if session is not None and (clean_start or session.is_expired(time.time())):
            # Clean start discards any existing session [MQTT-3.1.2-6 (3.1.1) / 3.1.2-4 (5.0)].
            self._drop_session(session)
            session = None
        present = session is not None
        if session is None:
            session = Session(
                cid,
                max_queued=self.config.max_queued_messages,
                overflow=self.config.overflow_policy,
            )
            self._sessions[cid] = session
            self._deleted_sessions.discard(cid)
        session.expiry_interval = expiry
        session.disconnected_at = None
        # A session saved before owners were recorded is adopted by whoever
        # resumes it; the per-delivery ACL check filters what it queued.
        session.owner = owner
        session.dirty = True
        self._online[cid] = conn
        return session, present

    def _drop_session(self, session: Session) -> None:
        cid = session.client_id
        for sub in session.subscriptions.values():
            self._tree.unsubscribe(sub.match_filter, cid, sub.share)
        if self._sessions.get(cid) is session:
            del self._sessions[cid]
            self._deleted_sessions.add(cid)

    def _end_session(self, cid: str) -> None:
        """The session expired [MQTT-4.1.0-2 (5.0)]: drop it, publish a delayed will."""
        self._expiry.pop(cid, None)
        session = self._sessions.get(cid)
        if session is not None and cid not in self._online:
            self._drop_session(session)
            logger.debug("session %s expired", cid)
        pending = self._wills.pop(cid, None)
        if pending is not None:
            # [MQTT-3.1.2-8 (5.0)] the will goes out at the end of the session at the
            # latest, even if the Will Delay has not passed.
            if pending.handle is not None:
                pending.handle.cancel()
            self._publish_will(pending)

    async def _connection_closed(self, conn: _Connection) -> None:
        if conn.connected and not conn.taken_over and self._online.get(conn.client_id) is conn:
            del self._online[conn.client_id]
            self._connection_lost(conn, takeover=False)
        if conn.info is not None and self._on_disconnect is not None:
            try:
                await self._on_disconnect(conn.info)
            except Exception:
                logger.exception("on_disconnect hook failed for %s", conn.client_id)

    def _connection_lost(self, conn: _Connection, takeover: bool) -> None:
        """Handle the will and the session of a connection that just ended."""
        cid = conn.client_id
        session = conn.session
        will, conn.will = conn.will, None
        if will is not None and conn.info is not None and not self._stopping:
            delay = (will.properties.will_delay_interval or 0) if conn.v5 else 0
            pending = _PendingWill(self._will_message(will, cid), conn.info)
            if delay and session is not None and session.expiry_interval and not takeover:
                # [MQTT-3.1.2-8 (5.0)] publish after the Will Delay (or at session end).
                pending.handle = asyncio.get_running_loop().call_later(delay, self._fire_will, cid)
                self._wills[cid] = pending
            elif not (delay and takeover):
                # [MQTT-3.1.2-8 (3.1.1)] the connection closed without DISCONNECT.
                self._publish_will(pending)
        if takeover or session is None:
            return
        if session.expiry_interval == 0:
            # Session Expiry 0 (or 3.1.1 CleanSession=1): the session ends with the
            # connection [MQTT-3.1.2-6 (3.1.1) / MQTT-3.1.2-23 (5.0) for the opposite].
            self._end_session(cid)
            return
        session.disconnected_at = time.time()
        session.dirty = True
        if session.expiry_interval != NEVER_EXPIRES:
            self._expiry[cid] = asyncio.get_running_loop().call_later(
                session.expiry_interval, self._end_session, cid
            )

    def _will_message(self, will: Will, cid: str) -> Message:
        props = will.properties
        expiry = props.message_expiry_interval
        return Message(
            will.topic,
            will.payload,
            min(will.qos, self.config.maximum_qos),
            will.retain and self.config.retain_available,
            props.payload_format_indicator,
            None if expiry is None else time.time() + expiry,
            props.content_type,
            props.response_topic,
            props.correlation_data,
            props.user_properties,
            cid,
        )

    def _fire_will(self, cid: str) -> None:
        pending = self._wills.pop(cid, None)
        if pending is not None:
            self._publish_will(pending)

    def _publish_will(self, pending: _PendingWill) -> None:
        message, info = pending.message, pending.info
        acl = self.acl
        if acl is not None and not acl.can_publish(info.username, info.client_id, message.topic):
            self.stats.denied_publish += 1
            logger.warning("denied will of %s to %r", info.client_id, message.topic)
            return
        hook = self._on_publish
        if hook is None or self._tg is None:
            self.route(message)
            return

        async def hooked() -> None:
            try:
                code = await hook(info, message, None, False)
            except Exception:
                logger.exception("on_publish hook failed for the will of %s", info.client_id)
                code = ReasonCode.UNSPECIFIED_ERROR
            if code is None or _code(code) < 0x80:
                self.route(message)
            else:
                self.stats.hook_failures += 1

        self._tg.create_task(hooked())

    # -- routing ------------------------------------------------------------------------------

    def route(self, message: Message) -> None:
        """Store (if retained) and deliver one message to every matching session."""
        if message.retain:
            # [MQTT-3.3.1-5 (3.1.1) / 3.3.1-5 (5.0)] store it (an empty payload deletes).
            self._retained.set(message)
        topic = message.topic
        tree = self._tree
        fan: _Fanout | None = None
        for cid, sub, _share in tree.shared(topic, self._online.__contains__):
            # One member of each shared group; its granted QoS applies [MQTT-4.8.2-3].
            fan = fan or _Fanout(message, time.time())
            self._deliver(cid, fan, sub.qos, sub.retain_as_published, _sub_ids(sub))
        origin = message.origin
        single: tuple[str, Subscription] | None = None
        merged: dict[str, list[Subscription]] | None = None
        for table in tree.subscribers(topic):
            for cid, sub in table.items():
                if sub.no_local and cid == origin:
                    # [MQTT-3.8.3-3 (5.0)] No Local: not to the publishing connection.
                    continue
                if single is None and merged is None:
                    single = (cid, sub)
                    continue
                if merged is None:
                    assert single is not None
                    merged = {single[0]: [single[1]]}
                    single = None
                merged.setdefault(cid, []).append(sub)
        if single is not None:
            cid, sub = single
            fan = fan or _Fanout(message, time.time())
            self._deliver(cid, fan, sub.qos, sub.retain_as_published, _sub_ids(sub))
            return
        if merged is None:
            return
        fan = fan or _Fanout(message, time.time())
        for cid, subs in merged.items():
            if len(subs) == 1:
                sub = subs[0]
                self._deliver(cid, fan, sub.qos, sub.retain_as_published, _sub_ids(sub))
                continue
            # Overlapping subscriptions: one copy at the maximum granted QoS
            # [MQTT-3.3.5-1 (3.1.1) / 3.3.4-2 (5.0)] carrying every subscription
            # identifier [MQTT-3.3.4-3/4 (5.0)].
            qos = max(s.qos for s in subs)
            rap = any(s.retain_as_published for s in subs)
            all_ids = tuple(s.identifier for s in subs if s.identifier)
            self._deliver(cid, fan, qos, rap, all_ids)

    def _deliver(
        self, cid: str, fan: _Fanout, granted: int, rap: bool, ids: tuple[int, ...]
    ) -> None:
        message = fan.message
        # [MQTT-3.8.4-6 (3.1.1) / 3.8.4-8 (5.0)] delivered at min(published, granted).
        qos = message.qos if message.qos < granted else granted
        # [MQTT-3.3.1-9 (3.1.1)] live forwarding clears RETAIN; [MQTT-3.3.1-12/13 (5.0)]
        # unless the subscription asked for Retain As Published.
        retain = message.retain and rap
        conn = self._online.get(cid)
        if conn is not None:
            conn.deliver(fan, qos, retain, ids)
            return
        if not qos:
            self.stats.dropped_offline_qos0 += 1
            return
        session = self._sessions.get(cid)
        if session is not None:
            # [MQTT-3.1.2-5 (3.1.1)] QoS 1/2 messages are stored for an offline session.
            session.enqueue(Delivery(message, qos, retain, ids))

    # -- persistence --------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._store is not None
        now = time.time()
        self._retained.load(m for m in self._store.load_retained() if not m.expired(now))
        loop = asyncio.get_running_loop()
        for session in self._store.load_sessions(
            max_queued=self.config.max_queued_messages, overflow=self.config.overflow_policy
        ):
            if session.disconnected_at is None:
                session.disconnected_at = now
            if session.is_expired(now) or session.expiry_interval == 0:
                self._deleted_sessions.add(session.client_id)
                continue
            self._sessions[session.client_id] = session
            for sub in session.subscriptions.values():
                self._tree.subscribe(sub.match_filter, session.client_id, sub, sub.share)
            deadline = session.expires_at()
            if deadline is not None:
                self._expiry[session.client_id] = loop.call_later(
                    max(0.0, deadline - now), self._end_session, session.client_id
                )
        logger.info(
            "restored %d sessions and %d retained messages",
            len(self._sessions),
            len(self._retained),
        )

    def _changes(
        self,
    ) -> tuple[list[tuple[str, bytes]], list[str], list[tuple[str, bytes]], list[str]]:
        sessions: list[tuple[str, bytes]] = []
        deleted = set(self._deleted_sessions)
        self._deleted_sessions.clear()
        for cid, session in self._sessions.items():
            if not session.dirty:
                continue
            session.dirty = False
            if session.expiry_interval == 0:
                deleted.add(cid)  # ends with its connection: nothing to keep
            else:
                sessions.append((cid, dump(session.to_json())))
                deleted.discard(cid)
        upserts, removed = self._retained.take_changes()
        retained = [(m.topic, dump(m.to_json())) for m in upserts]
        return sessions, sorted(deleted), retained, removed

    async def save(self) -> None:
        """Persist changed sessions and retained messages now (also done on autosave)."""
        if self._store is None:
            return
        async with self._save_lock:
            changes = self._changes()
            await asyncio.to_thread(self._store.save, *changes)

    async def _autosave_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.autosave_interval)
            try:
                await self.save()
            except Exception:
                logger.exception("saving MQTT sessions failed")
