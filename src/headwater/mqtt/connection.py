"""Sans-IO MQTT connections: one connection's protocol state, bytes and events in and out.

How this works (h11's ``Connection``): a :class:`ServerConnection` (the
broker's side) or :class:`ClientConnection` (a client's side) is fed the bytes
that arrived (``receive_data``) and hands back what they mean (``next_event``:
a packet, :data:`NEED_DATA` or :data:`PAUSED`). The application answers
through methods (``accept``, ``ack``, ``publish``, ``suback``, ``disconnect``,
...) that queue bytes; ``data_to_send`` takes them for the transport to write.
No sockets, no awaits, no clocks: times are passed in. Every wire byte comes
from the codec's writers (:mod:`headwater.mqtt.packets`), success acks and
pings through their fast paths. Both classes build on
:class:`headwater.mqtt._connection.Connection`.

What a connection owns, and the application therefore never handles itself:

* the lifecycle (:mod:`headwater.mqtt._state`): CONNECT first, CONNACK before
  anything else, DISCONNECT last, every packet checked against the state;
* packet identifiers in both directions and the QoS 1/2 flows: PUBREL and
  PUBCOMP are answered here, a resent QoS 2 PUBLISH whose PUBREC went out is
  acknowledged again but not handed out twice [MQTT-4.3.3-10 (5.0)];
* flow control: the peer's Receive Maximum caps what we have in flight (the
  rest waits in the session's queue) and ours caps what the peer may have
  in flight towards us (more: DISCONNECT 0x93) [MQTT-3.3.4-7/9 (5.0)];
* topic aliases both ways and Maximum Packet Size both ways;
* keepalive: the deadline by which the peer must have sent something
  (server) or by which we must (client).

The outbound QoS 1/2 state lives in a :class:`~headwater.mqtt.session.Session`
(the packet identifiers in flight, the queue, the QoS 2 identifiers received),
because it outlives the connection: a server attaches the client's session at
:meth:`ServerConnection.accept`; a client connection keeps one of its own.

Errors from the peer's bytes are raised by ``next_event`` as
:class:`~headwater.mqtt.errors.MqttError` with the reason code to answer;
``fail`` then queues that answer (DISCONNECT in 5.0 once
connected, CONNACK 0x01 for an unsupported protocol version) and closes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from headwater.mqtt._connection import NO_LIMIT, Connection, Counters
from headwater.mqtt._fanout import PublishParts
from headwater.mqtt._state import Event, Role, State
from headwater.mqtt._writers import (
    PINGREQ_BYTES,
    PINGRESP_BYTES,
)
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    LocalProtocolError,
    MalformedPacket,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolError,
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
    encode,
)
from headwater.mqtt.reasons import connack_code_311
from headwater.mqtt.session import Delivery, Message, Session
from headwater.mqtt.topics import InvalidTopic, parse_filter

_CONNECTED = State.CONNECTED

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "ClientConnection",
    "ClientLimits",
    "PublishParts",
    "ServerConnection",
    "ServerLimits",
    "State",
]

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5


class _Paused(enum.Enum):
    PAUSED = "PAUSED"


PAUSED: Final = _Paused.PAUSED
"""``next_event`` of a server between CONNECT and its answer: what the client
sent after its CONNECT waits until the connection is accepted."""


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What a server allows a client (advertised in CONNACK where MQTT 5 can say it)."""

    #: Largest packet accepted, fixed header included (CONNACK Maximum Packet Size).
    max_packet_size: int = 1024 * 1024
    #: QoS 1/2 PUBLISHes a client may have unacknowledged towards us (Receive Maximum).
    receive_maximum: int = 1024
    #: Topic aliases we accept from a client (Topic Alias Maximum).
    topic_alias_maximum: int = 64
    maximum_qos: int = 2
    retain_available: bool = True
    #: QoS 1/2 messages we keep in flight towards a client, below its Receive Maximum.
    max_inflight: int = 1024
    #: If set, imposed on MQTT 5 clients through Server Keep Alive [MQTT-3.2.2-21].
    server_keep_alive: int | None = None


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What a client allows its server (advertised in CONNECT)."""

    max_packet_size: int = 1024 * 1024
    receive_maximum: int = 1024


class ServerConnection(Connection):
    """The broker's side of one connection."""

    role = Role.SERVER

    def __init__(self, limits: ServerLimits | None = None, counters: Counters | None = None):
        self.limits = limits = limits or ServerLimits()
        super().__init__(
            Decoder(server=True, max_packet_size=limits.max_packet_size), None, counters
        )
        self._receive_maximum = limits.receive_maximum
        self._alias_maximum_in = limits.topic_alias_maximum
        self._maximum_qos_in = limits.maximum_qos
        self._retain_in = limits.retain_available
        self.connect: Connect | None = None
        self.session_present = False

    def next_event(self) -> Packet | Literal[_Paused.PAUSED] | Any:
        """The next thing the client said, after the protocol's own bookkeeping.

        Returns :data:`NEED_DATA` when more bytes are needed, :data:`PAUSED`
        between CONNECT and :meth:`accept`/:meth:`refuse`; raises
        :class:`~headwater.mqtt.errors.MqttError` for a protocol violation.
        A resent QoS 2 PUBLISH is answered here and never handed out; a
        PUBACK/PUBCOMP (or a failed PUBREC) is handed out only if it ended a
        flow of ours, so the application can send what was queued. PINGREQ and
        PUBREL are handed out to be answered with :meth:`pong` and
        :meth:`complete`, so that the application keeps its answers in the order
        the packets came (a PINGRESP after the acks of the PUBLISHes before it).
        """
        state = self._machine.state
        if state is not State.CONNECTED:
            if state is State.AWAIT_CONNECT:
                packet = self._decoder.next_packet()
                if packet is NEED_DATA:
                    return packet
                # The decoder enforces [MQTT-3.1.0-1]: the first packet is CONNECT.
                assert isinstance(packet, Connect)
                self._machine.received(Event.CONNECT)
                self.connect = packet
                version = self._decoder.version
                assert version is not None
                self.version = version
                self.v5 = version == V5
                return packet
            if state is State.CONNECTING:
                return PAUSED
            return NEED_DATA  # closed: nothing more is read
        decoder = self._decoder
        handlers = _SERVER_HANDLERS
        while True:
            packet = decoder.next_packet()
            if packet is NEED_DATA:
                return packet
            kind = type(packet)
            result: Any
            if kind is Publish:  # the hot paths, without a table lookup
                result = self._inbound_publish(packet)  # type: ignore[arg-type]
            elif kind is Puback:
                done = self.session.puback(packet.packet_id)  # type: ignore[union-attr,arg-type]
                result = packet if done is not None else None
            else:
                handler = handlers.get(type(packet))
                if handler is None:
                    # CONNECT again is caught by the decoder [MQTT-3.1.0-2]; AUTH
                    # without an agreed authentication method is a protocol error (§4.12).
                    self._check(packet)
                result = handler(self, packet)  # type: ignore[misc]
            if result is not None:
                return result

    # -- CONNECT ---------------------------------------------------------------------------

    def accept(
        self,
        session: Session,
        session_present: bool,
        *,
        assigned_client_identifier: str | None = None,
        session_expiry_interval: int | None = None,
        response_information: str | None = None,
    ) -> None:
        """Send CONNACK (success) and attach ``session`` [MQTT-3.2.2-2/3 (5.0)].

        ``session_expiry_interval`` is sent when the server granted another value
        than the client asked for (§3.2.2.3.2).
        """
        connect = self.connect
        assert connect is not None
        limits = self.limits
        self.session = session
        self.session_present = session_present
        keep_alive = connect.keep_alive
        server_keep_alive: int | None = None
        if (
            self.v5
            and limits.server_keep_alive is not None
            and limits.server_keep_alive != keep_alive
        ):
            # [MQTT-3.2.2-21] the client must use the Server Keep Alive we send.
            keep_alive = server_keep_alive = limits.server_keep_alive
        self.keep_alive = keep_alive
        self.send_quota = limits.max_inflight
        if not self.v5:
            # [MQTT-3.2.2-1/2 (3.1.1)] Session Present.
            self._send(Connack(session_present, ReasonCode.SUCCESS), Event.CONNACK_OK)
            return
        props = connect.properties
        self.send_quota = min(props.receive_maximum or 65535, limits.max_inflight)
        self.peer_max_packet = props.maximum_packet_size or NO_LIMIT
        # [MQTT-3.1.2-26/27 (5.0)] no aliases towards the client unless it allows them.
        self.peer_alias_max = props.topic_alias_maximum or 0
        connack_props = Properties(
            session_expiry_interval=session_expiry_interval,
            receive_maximum=limits.receive_maximum,
            # [MQTT-3.2.2-9] advertise Maximum QoS when below 2.
            maximum_qos=limits.maximum_qos if limits.maximum_qos < 2 else None,
            # [MQTT-3.2.2-13] advertise Retain Available when not supported.
            retain_available=None if limits.retain_available else 0,
            maximum_packet_size=limits.max_packet_size,
            # [MQTT-3.2.2-16] the id we assigned.
            assigned_client_identifier=assigned_client_identifier,
            topic_alias_maximum=limits.topic_alias_maximum or None,
            server_keep_alive=server_keep_alive,
            response_information=response_information,
        )
        connack = Connack(session_present, ReasonCode.SUCCESS, connack_props)
        data = encode(connack, V5)
        if self.peer_max_packet and len(data) > self.peer_max_packet:
            # [MQTT-3.1.2-24 (5.0)] nothing larger than the client's Maximum Packet
            # Size, the CONNACK included: leave out what it can do without
            # (Response Information, and the values it would otherwise assume:
            # 3.2.2.3.x say how an absent property is read).
            connack = Connack(
                session_present,
                ReasonCode.SUCCESS,
                Properties(
                    session_expiry_interval=session_expiry_interval,
                    receive_maximum=limits.receive_maximum,
                    maximum_qos=connack_props.maximum_qos,
                    retain_available=connack_props.retain_available,
                    maximum_packet_size=limits.max_packet_size,
                    assigned_client_identifier=assigned_client_identifier,
                    server_keep_alive=server_keep_alive,
                ),
            )
            data = encode(connack, V5)
            if len(data) > self.peer_max_packet:
                raise LocalProtocolError(
                    f"the CONNACK needs {len(data)} bytes, over the client's Maximum "
                    f"Packet Size of {self.peer_max_packet}"
                )
        self._machine.sending(Event.CONNACK_OK)
        self._out.append(data)

    def refuse(self, code: ReasonCode) -> None:
        """CONNACK with a failure code, then closed [MQTT-3.2.2-5 (3.1.1) / 3.2.2-7 (5.0)].

        [MQTT-3.2.2-6 (3.1.1)] with no applicable 3.1.1 return code, close
        without a CONNACK.
        """
        if self.v5 or connack_code_311(code) is not None:
            self._send(Connack(reason_code=code), Event.CONNACK_REFUSED)
        self._machine.sending(Event.CLOSE)

    def keepalive_deadline(self) -> float | None:
        """When the connection is dead if nothing arrives before [MQTT-3.1.2-24 (3.1.1) /
        MQTT-3.1.2-22 (5.0)]: 1.5 x Keep Alive after the last bytes received."""
        if not self.keep_alive:
            return None
        return self.last_received + self.keep_alive * 1.5

    # -- inbound --------------------------------------------------------------------------

    def _on_puback(self, packet: Puback) -> Puback | None:
        return packet if self.session.puback(packet.packet_id) is not None else None  # type: ignore[union-attr]

    def _on_pubcomp(self, packet: Pubcomp) -> Pubcomp | None:
        return packet if self.session.pubcomp(packet.packet_id) is not None else None  # type: ignore[union-attr]

    def pong(self) -> None:
        """Answer a PINGREQ that ``next_event`` handed out [MQTT-3.12.4-1]."""
        if self._machine.state is not _CONNECTED:  # the table's answer there: allowed
            self._machine.sending(Event.PINGRESP)
        self._out.append(PINGRESP_BYTES)

    def complete(self, packet: Pubrel) -> None:
        """Answer a PUBREL that ``next_event`` handed out with PUBCOMP
        [MQTT-4.3.3-2 (3.1.1) / 4.3.3-11 (5.0)], ending that QoS 2 flow."""
        self._on_pubrel(packet)

    def _on_subscribe(self, packet: Subscribe) -> Subscribe:
        for text, _ in packet.subscriptions:
            _valid_filter(text)
        return packet

    def _on_unsubscribe(self, packet: Unsubscribe) -> Unsubscribe:
        for text in packet.topic_filters:
            _valid_filter(text)
        return packet

    def _on_disconnect(self, packet: Disconnect) -> Disconnect:
        session = self.session
        expiry = packet.properties.session_expiry_interval
        if expiry is not None and session is not None and session.expiry_interval == 0 and expiry:
            # §3.14.2.2.2: 0 in CONNECT, then non-zero in DISCONNECT: protocol error.
            raise ProtocolError("session expiry raised from 0")
        self._machine.received(Event.DISCONNECT)
        return packet

    # -- outbound -------------------------------------------------------------------------

    def suback(self, packet_id: int, codes: Iterable[ReasonCode]) -> None:
        """[MQTT-3.8.4-1] SUBACK with the SUBSCRIBE's packet id; one code per filter."""
        self._send(Suback(packet_id, tuple(codes)), Event.SUBACK)

    def unsuback(self, packet_id: int, codes: Iterable[ReasonCode]) -> None:
        """[MQTT-3.10.4-4/5 (3.1.1)] UNSUBACK even when nothing matched."""
        self._send(Unsuback(packet_id, tuple(codes)), Event.UNSUBACK)


def _handed_out(packet: Packet) -> Packet:
    return packet


def _valid_filter(text: str) -> None:
    """A topic filter a client sent: a malformed one is a protocol violation.

    [MQTT-4.7.3-1] at least one character; [MQTT-4.7.1-2] ``#`` last and on a
    level of its own; [MQTT-4.7.1-3] ``+`` on a level of its own. Both versions
    close the connection (3.1.1 [MQTT-4.8.0-1], 5.0 §4.13: DISCONNECT 0x81),
    as Mosquitto does; SUBACK 0x8F is for a well-formed filter the server
    does not accept.
    """
    try:
        parse_filter(text)
    except InvalidTopic as exc:
        raise MalformedPacket(f"invalid topic filter {text!r}: {exc}") from exc


def _handed_out_to(connection: ServerConnection, packet: Packet) -> Packet:
    return packet


#: What ``ServerConnection.next_event`` does with each kind of packet after
#: CONNECT: one table for every connection (a table of bound methods per
#: connection cost each CONNECT nine allocations the collector then scans).
_SERVER_HANDLERS: Final[dict[type, Callable[[ServerConnection, Any], Any]]] = {
    Publish: ServerConnection._inbound_publish,
    Puback: ServerConnection._on_puback,
    Pubrec: ServerConnection._on_pubrec,
    Pubrel: _handed_out_to,
    Pubcomp: ServerConnection._on_pubcomp,
    Subscribe: ServerConnection._on_subscribe,
    Unsubscribe: ServerConnection._on_unsubscribe,
    Pingreq: _handed_out_to,
    Disconnect: ServerConnection._on_disconnect,
}


class ClientConnection(Connection):
    """A client's side of one connection."""

    role = Role.CLIENT

    def __init__(
        self,
        version: ProtocolVersion = V5,
        limits: ClientLimits | None = None,
        session: Session | None = None,
    ) -> None:
        self.limits = limits = limits or ClientLimits()
        super().__init__(
            Decoder(server=False, version=version, max_packet_size=limits.max_packet_size),
            version,
            None,
        )
        self.v5 = version == V5
        self._receive_maximum = limits.receive_maximum
        self.session = self._session = session or Session("")
        self.connack: Connack | None = None
        #: Our requests awaiting their answer: SUBSCRIBE/UNSUBSCRIBE packet ids.
        self._requests: set[int] = set()
        self.maximum_qos = 2
        self.retain_available = True
        self.last_sent = 0.0
        self._handlers: dict[type, Callable[[Any], Any]] = {
            Publish: self._inbound_publish,
            Puback: self._on_ack,
            Pubcomp: self._on_ack,
            Pubrec: self._on_pubrec,
            Pubrel: self._on_pubrel,
            Suback: self._on_answer,
            Unsuback: self._on_answer,
            Pingresp: self._on_pingresp,
            Disconnect: self._on_disconnect,
        }

    def start(self, connect: Connect, now: float = 0.0) -> None:
        """Send CONNECT (the first packet [MQTT-3.1.0-1])."""
        props = connect.properties
        if self.v5 and props.receive_maximum is None:
            connect = Connect(
                connect.client_id,
                connect.clean_start,
                connect.keep_alive,
                connect.username,
                connect.password,
                connect.will,
                replace(props, receive_maximum=self.limits.receive_maximum),
            )
        self.keep_alive = connect.keep_alive
        self._send(connect, Event.CONNECT)
        self.last_sent = now

    def next_event(self) -> Packet | Any:
        """The next thing the server said; :data:`NEED_DATA` when more bytes are needed.

        PUBREL, a success PUBREC and PINGRESP are answered here and never handed
        out; a PUBACK/PUBCOMP/failed PUBREC ends one of our QoS 1/2 flows and is
        handed out so that the publisher can be told; PUBLISHes must be
        acknowledged with :meth:`ack`.
        """
        state = self._machine.state
        decoder = self._decoder
        if state is State.CONNECTING:
            packet = decoder.next_packet()
            if packet is NEED_DATA:
                return packet
            if not isinstance(packet, Connack):
                # [MQTT-3.2.0-1] the first packet from the server MUST be CONNACK.
                raise ProtocolError(f"{type(packet).__name__} before CONNACK")
            ok = packet.reason_code < 0x80 if self.v5 else packet.reason_code == 0
            self._machine.received(Event.CONNACK_OK if ok else Event.CONNACK_REFUSED)
            self.connack = packet
            if ok:
                self._connected(packet)
            return packet
        if state is not State.CONNECTED:
            return NEED_DATA
        handlers = self._handlers
        while True:
            packet = decoder.next_packet()
            if packet is NEED_DATA:
                return packet
            handler = handlers.get(type(packet))
            if handler is None:
                self._check(packet)  # raises: not allowed now
            result = handler(packet)  # type: ignore[misc]
            if result is not None:
                return result

    def _connected(self, connack: Connack) -> None:
        props = connack.properties
        session = self._session
        if not connack.session_present:
            # A new session at the server: nothing of ours is in flight there.
            session.inflight.clear()
            session.incoming_qos2.clear()
        if self.v5:
            self.send_quota = props.receive_maximum or 65535
            self.peer_max_packet = props.maximum_packet_size or NO_LIMIT
            self.maximum_qos = 2 if props.maximum_qos is None else props.maximum_qos
            self.retain_available = props.retain_available != 0
            if props.server_keep_alive is not None:
                # [MQTT-3.2.2-22] the client uses the Server Keep Alive.
                self.keep_alive = props.server_keep_alive

    def _on_ack(self, packet: Puback | Pubcomp) -> Puback | Pubcomp | None:
        session = self._session
        done = (
            session.puback(packet.packet_id)
            if isinstance(packet, Puback)
            else session.pubcomp(packet.packet_id)
        )
        return packet if done is not None else None

    def _on_answer(self, packet: Suback | Unsuback) -> Suback | Unsuback | None:
        if packet.packet_id not in self._requests:
            return None  # not ours (or answered already): nothing waits for it
        self._requests.discard(packet.packet_id)
        return packet

    def _on_pingresp(self, packet: Pingresp) -> None:
        return None

    def _on_disconnect(self, packet: Disconnect) -> Disconnect:
        self._machine.received(Event.DISCONNECT)
        return packet

    # -- outbound -------------------------------------------------------------------------

    def _next_request_id(self) -> int:
        session = self._session
        for _ in range(0xFFFF):
            pid = session.next_packet_id()
            if pid not in self._requests:
                return pid
        raise LocalProtocolError("no free packet identifier")

    def subscribe(
        self,
        filters: Iterable[tuple[str, SubscriptionOptions]],
        properties: Properties = EMPTY_PROPERTIES,
    ) -> int:
        """Send SUBSCRIBE; returns its packet id (the SUBACK carries it)."""
        pid = self._next_request_id()
        self._send(Subscribe(pid, tuple(filters), properties), Event.SUBSCRIBE)
        self._requests.add(pid)
        return pid

    def unsubscribe(self, filters: Iterable[str], properties: Properties = EMPTY_PROPERTIES) -> int:
        pid = self._next_request_id()
        self._send(Unsubscribe(pid, tuple(filters), properties), Event.UNSUBSCRIBE)
        self._requests.add(pid)
        return pid

    @property
    def window_full(self) -> bool:
        """Whether the server's Receive Maximum is used up [MQTT-3.3.4-7 (5.0)]."""
        return len(self._session.inflight) >= self.send_quota

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> int | None:
        """Send PUBLISH; returns the packet id of a QoS 1/2 one (its ack carries it).

        Raises :class:`LocalProtocolError` if the server's Receive Maximum is used
        up (check :attr:`window_full` first), the QoS or retain is more than the
        server allows, or the packet exceeds the server's Maximum Packet Size.
        """
        if qos > self.maximum_qos:
            # [MQTT-3.2.2-11 (5.0)] not above the server's Maximum QoS.
            raise LocalProtocolError(f"the server allows QoS {self.maximum_qos} at most")
        if retain and not self.retain_available:
            raise LocalProtocolError("the server does not support retained messages")
        pid: int | None = None
        if qos:
            if self.window_full:
                raise LocalProtocolError("the server's Receive Maximum is used up")
            pid = self._next_request_id()
        packet = Publish(topic, payload, qos, retain, False, pid, properties)
        data = encode(packet, self.version)
        if self.peer_max_packet and len(data) > self.peer_max_packet:
            raise LocalProtocolError(
                f"a {len(data)}-byte PUBLISH exceeds the server's Maximum Packet Size "
                f"of {self.peer_max_packet}"
            )
        if self._machine.state is not _CONNECTED:  # the table's answer there: allowed
            self._machine.sending(Event.PUBLISH)
        if pid is not None:
            message = Message(topic, payload, qos, retain)
            self._session.send(Delivery(message, qos, retain), pid)
        self._out.append(data)
        return pid

    def ping(self, now: float = 0.0) -> None:
        self._machine.sending(Event.PINGREQ)
        self._out.append(PINGREQ_BYTES)
        self.last_sent = now

    def ping_due(self, now: float) -> float | None:
        """When to send PINGREQ next: 3/4 of Keep Alive after the last bytes sent
        ([MQTT-3.1.2-23 (3.1.1)] at most Keep Alive may pass without a packet)."""
        if not self.keep_alive:
            return None
        return self.last_sent + self.keep_alive * 0.75

    def data_to_send(self, now: float | None = None) -> bytes:
        data = super().data_to_send()
        if data and now is not None:
            self.last_sent = now
        return data
