"""What configures the embedded MQTT broker, and what it tells its hooks.

How this works: plain frozen values, no I/O: :class:`Listener` (one listening
socket), :class:`BrokerConfig` (every limit, named and documented below),
:class:`ClientInfo` (who a hook is talking about), :class:`Refusal` (a hook's
"never"), :class:`BrokerStats` (counters; every dropped message is counted in
exactly one). The broker (:mod:`headwater.mqtt.broker`) composes them with the
transports, the router and the session store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.packets import ProtocolVersion, ReasonCode
from headwater.mqtt.retained import DEFAULT_MAX_RETAINED
from headwater.mqtt.session import (
    DEFAULT_MAX_QUEUED_MESSAGES,
    NEVER_EXPIRES,
    Message,
    OverflowPolicy,
    Subscription,
)

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INCOMPLETE_BYTES",
    "DEFAULT_MAX_PENDING_CONNECTIONS",
    "Authenticator",
    "BrokerConfig",
    "BrokerStats",
    "ClientInfo",
    "Credentials",
    "Hooked",
    "Identity",
    "Listener",
    "OnConnect",
    "OnDisconnect",
    "OnPublish",
    "OnSubscribe",
    "Outcome",
    "PeerCertificate",
    "PublishHook",
    "Refusal",
    "server_tls_context",
]

#: A broker sized for a gateway: 10,000 devices with headroom.  Beyond it new
#: CONNECTs get CONNACK 0x89 Server busy (5.0) / 0x03 Server unavailable (3.1.1).
DEFAULT_MAX_CONNECTIONS = 50_000
#: Sockets accepted that have not been answered a CONNACK yet (each may hold
#: its socket for CONNECT_TIMEOUT without sending a byte).  Beyond it a new
#: socket is closed as soon as it is accepted: a flood of silent connections
#: cannot take every file descriptor.  4096 absorbs a gateway's reconnect storm
#: (clients whose socket is closed retry with backoff).
DEFAULT_MAX_PENDING_CONNECTIONS = 4096
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
    max_pending_connections: int = DEFAULT_MAX_PENDING_CONNECTIONS
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
    #: Who the client authenticated as (the owner of its session), and what an
    #: :class:`Authenticator` said about it (a device's labels, say).
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The certificate a client presented on a TLS listener that verified it."""

    der: bytes
    #: :meth:`ssl.SSLSocket.getpeercert` of it (subject, issuer, subjectAltName, ...).
    fields: Mapping[str, Any]

    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, lower-case hex (what registries store)."""
        return hashlib.sha256(self.der).hexdigest()

    def name(self, mode: Literal["cn", "san"]) -> str | None:
        """The subject's common name, or the first DNS/email/URI subject alternative name."""
        if mode == "cn":
            for rdn in self.fields.get("subject", ()):
                for key, value in rdn:
                    if key == "commonName":
                        return str(value)
            return None
        for kind, value in self.fields.get("subjectAltName", ()):
            if kind in ("DNS", "email", "URI"):
                return str(value)
        return None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client presented at CONNECT, for an :class:`Authenticator`."""

    client_id: str
    username: str | None
    password: bytes | None
    certificate: PeerCertificate | None
    listener: Listener
    peer: str
    protocol_version: ProtocolVersion


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a client is, once authenticated.

    ``user`` owns the client's sessions (another ``user`` with the same client id
    gets a clean session); ``username`` is what ACL patterns see as ``%u``;
    ``acl``, when set, is this client's ACL instead of the broker's (a device's
    rules from its template); ``labels`` reach the hooks in :class:`ClientInfo`.
    """

    user: str
    username: str | None = None
    acl: Acl | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class Authenticator(Protocol):
    """Decides about a CONNECT before the password file does (a device registry).

    Returns an :class:`Identity` to accept, a failure :class:`ReasonCode` to
    refuse (CONNACK with that code), or ``None`` when the credentials are not
    its business (the next authenticator, then the password file, decide).
    """

    async def authenticate(self, credentials: Credentials) -> Identity | ReasonCode | None: ...


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
#: Called (synchronously) after a SUBACK with the subscriptions it granted, as
#: ``on_subscribe(info, subscriptions)``: a device plane learns that a device can
#: now receive its commands. What it publishes then follows the SUBACK.
OnSubscribe = Callable[[ClientInfo, Sequence[Subscription]], None]

Outcome = ReasonCode | Refusal | None
"""A hook's answer for one message: ``None`` (or a code < 0x80) accepts it."""


class Hooked(NamedTuple):
    """One PUBLISH handed to a :class:`PublishHook`: the message, its packet
    identifier (``None`` for QoS 0 and wills) and its DUP flag, so that the hook
    can recognise a QoS 1 message resent because the PUBACK was lost
    [MQTT-3.3.1-1]."""

    message: Message
    packet_id: int | None
    dup: bool


class PublishHook(Protocol):
    """What sees PUBLISHes before they are acknowledged and routed, a batch at a time.

    ``selects(topic)`` is asked for every PUBLISH (it must be cheap: cache the
    verdict per topic); a message it does not select is acknowledged and routed
    at once, as by a plain broker. The selected PUBLISHes a client sent in one
    go (one socket read) are handed over together; the broker acknowledges and
    routes each once the call returns its :data:`Outcome` (one per message, in
    order). Batches of one connection may overlap (pipelining, up to the
    broker's ``receive_maximum`` messages); their outcomes take effect in
    arrival order.
    """

    def selects(self, topic: str) -> bool: ...

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> Sequence[Outcome]: ...


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
