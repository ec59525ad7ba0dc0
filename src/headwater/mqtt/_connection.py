"""What both sides of an MQTT connection share: bytes in and out, state, flows.

How this works: :class:`Connection` is the common core of
:class:`~headwater.mqtt.connection.ServerConnection` and
:class:`~headwater.mqtt.connection.ClientConnection` (see that module for the
whole design): the decoder and the output buffer, the state machine, topic
aliases and Maximum Packet Size both ways, the inbound Receive Maximum, the
acknowledgement of received QoS 1/2 messages and the outbound QoS 1/2 flows
over the connection's :class:`~headwater.mqtt.session.Session`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from headwater.mqtt._fanout import PublishParts
from headwater.mqtt._state import ConnectionStateMachine, Event, Role, State
from headwater.mqtt._writers import (
    PUBACK_FIRST,
    PUBCOMP_FIRST,
    PUBREC_FIRST,
    PUBREL_FIRST,
    write_ack_ok,
)
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MqttError,
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
    Unsuback,
    Unsubscribe,
    UnsupportedProtocolVersion,
    encode,
    encode_properties,
    encode_publish,
)
from headwater.mqtt.reasons import DISCONNECT_REASON_CODES, PUBACK_REASON_CODES
from headwater.mqtt.session import Delivery, Outgoing, Session

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
_CONNECTED = State.CONNECTED

#: Answers to a client whose DISCONNECT reason codes a server may use.
NO_LIMIT: Final = 0


class Counters(Protocol):
    """Where a connection counts what it sent and what it had to drop."""

    messages_sent: int
    dropped_too_large: int


@dataclass(slots=True)
class OwnCounters:
    messages_sent: int = 0
    dropped_too_large: int = 0


_EVENTS: Final[dict[type, Event]] = {
    Connect: Event.CONNECT,
    Publish: Event.PUBLISH,
    Puback: Event.ACK,
    Pubrec: Event.ACK,
    Pubrel: Event.ACK,
    Pubcomp: Event.ACK,
    Subscribe: Event.SUBSCRIBE,
    Suback: Event.SUBACK,
    Unsubscribe: Event.UNSUBSCRIBE,
    Unsuback: Event.UNSUBACK,
    Pingreq: Event.PINGREQ,
    Pingresp: Event.PINGRESP,
    Disconnect: Event.DISCONNECT,
    Auth: Event.AUTH,
}


class Connection:
    """What both sides share: bytes in and out, the state, aliases, sizes, flows."""

    role: Role

    def __init__(
        self, decoder: Decoder, version: ProtocolVersion | None, counters: Counters | None
    ) -> None:
        self._decoder = decoder
        self.version: ProtocolVersion = version or V311
        self.v5 = version == V5
        self._machine = ConnectionStateMachine(self.role)
        self._out: list[bytes] = []
        self.counters: Counters = counters if counters is not None else OwnCounters()
        #: The session of this connection (outbound flows, QoS 2 ids received).
        self.session: Session | None = None
        #: Keep Alive in force (seconds; 0: none) and when we last heard the peer.
        self.keep_alive = 0
        self.last_received = 0.0
        #: The peer's Maximum Packet Size (0: no limit) and Topic Alias Maximum.
        self.peer_max_packet = NO_LIMIT
        self.peer_alias_max = 0
        #: Aliases we assigned towards the peer, and those it assigned towards us.
        self._alias_out: dict[str, int] = {}
        self._alias_in: dict[int, str] = {}
        #: QoS 1/2 PUBLISHes we may have in flight (the peer's Receive Maximum).
        self.send_quota = 65535
        #: Packet ids of a resumed session's in-flight PUBLISHes not resent on this
        #: connection yet, in their original order: the send quota was used up.
        #: They go out first (``pump``), before anything queued, as acks free it.
        self._unsent: deque[int] = deque()
        #: QoS 1/2 PUBLISHes handed out and not yet acknowledged, and the QoS 2
        #: identifiers among them (a resend meanwhile is not handed out twice).
        self._unacked_in = 0
        self._pending_qos2: set[int] = set()
        self._receive_maximum = 65535
        self._alias_maximum_in = 0
        self._maximum_qos_in = 2
        self._retain_in = True

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._machine.state

    @property
    def connected(self) -> bool:
        return self._machine.state is State.CONNECTED

    @property
    def closed(self) -> bool:
        return self._machine.state is State.CLOSED

    # -- bytes in -------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> None:
        """Bytes from the peer (``b""`` is ignored); ``now`` marks when, for keepalive."""
        self._decoder.receive_data(data)
        if now is not None:
            self.last_received = now

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as part of a packet."""
        return self._decoder.buffered

    def release(self) -> None:
        """Drop every byte held, in and out (the connection is gone)."""
        self._decoder.release()
        self._out.clear()
        self._machine.sending(Event.CLOSE)

    # -- bytes out ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """What to write to the peer now (``b""``: nothing)."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    def _send(self, packet: Packet, event: Event) -> None:
        self._machine.sending(event)
        self._out.append(encode(packet, self.version))

    def fail(self, exc: MqttError) -> None:
        """The peer broke the protocol (``exc`` from :meth:`next_event`): answer and close.

        [MQTT-4.13.1-1 (5.0)] a DISCONNECT with the reason code, once connected;
        [MQTT-3.1.2-2 (3.1.1)] CONNACK 0x01 for an unsupported protocol level;
        otherwise (3.1.1, or before CONNACK) the connection just closes.
        """
        if isinstance(exc, UnsupportedProtocolVersion) and self.role is Role.SERVER:
            if self.state is State.AWAIT_CONNECT:
                self._out.append(encode(Connack(reason_code=exc.reason_code), exc.answer_version))
        else:
            self.disconnect(exc.reason_code)
        self._machine.sending(Event.CLOSE)

    def disconnect(
        self,
        code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION,
        properties: Properties | None = None,
    ) -> None:
        """Send DISCONNECT where the protocol lets us, and close.

        A server sends DISCONNECT only in 5.0 and only after CONNACK
        [MQTT-3.14.0-1 (5.0)]; a 3.1.1 server just closes. A client sends it
        whenever connected (3.1.1 carries no reason code).
        """
        if self.connected and (self.v5 or self.role is Role.CLIENT):
            if self.v5 and code not in DISCONNECT_REASON_CODES:
                code = ReasonCode.UNSPECIFIED_ERROR
            self._send(Disconnect(code, properties or EMPTY_PROPERTIES), Event.DISCONNECT)
        self._machine.sending(Event.CLOSE)

    def close(self) -> None:
        """The network connection ended (or we end it without a word)."""
        self._machine.received(Event.CLOSE)

    # -- events ---------------------------------------------------------------------------

    def _check(self, packet: Packet) -> None:
        self._machine.received(_EVENTS[type(packet)])

    def _inbound_publish(self, packet: Publish) -> Publish | None:
        """Aliases, QoS and retain rules, QoS 2 duplicates, our Receive Maximum."""
        props = packet.properties
        if props is not EMPTY_PROPERTIES and props.topic_alias is not None:
            alias = props.topic_alias
            # [MQTT-3.3.2-8/9 (5.0)] alias 1..our Topic Alias Maximum, else 0x94.
            if alias > self._alias_maximum_in:
                raise ProtocolError(f"topic alias {alias}", ReasonCode.TOPIC_ALIAS_INVALID)
            topic = packet.topic
            if topic:
                self._alias_in[alias] = topic
            else:
                known = self._alias_in.get(alias)
                if known is None:
                    raise ProtocolError(f"unknown topic alias {alias}")
                packet = Publish(
                    known,
                    packet.payload,
                    packet.qos,
                    packet.retain,
                    packet.dup,
                    packet.packet_id,
                    props,
                )
        qos = packet.qos
        if qos > self._maximum_qos_in:
            # [MQTT-3.2.2-11 (5.0)] QoS above the Maximum QoS we sent: DISCONNECT 0x9B.
            raise ProtocolError(f"QoS {qos}", ReasonCode.QOS_NOT_SUPPORTED)
        if packet.retain and not self._retain_in:
            # [MQTT-3.2.2-14 (5.0)] RETAIN when Retain Available is 0: DISCONNECT 0x9A.
            raise ProtocolError("retain is not available", ReasonCode.RETAIN_NOT_SUPPORTED)
        if not qos:
            return packet
        pid: int = packet.packet_id  # type: ignore[assignment]
        if qos == 2:
            session = self.session
            assert session is not None
            if pid in session.incoming_qos2:
                # [MQTT-4.3.3-2 (3.1.1) / 4.3.3-10 (5.0)] a duplicate: PUBREC again,
                # but no second delivery.
                self._out.append(write_ack_ok(PUBREC_FIRST, pid))
                return None
            if pid in self._pending_qos2:
                return None  # a resend while the first is with the application
            self._pending_qos2.add(pid)
            waiting = self._unacked_in + len(session.incoming_qos2)
        else:
            waiting = self._unacked_in
        if waiting >= self._receive_maximum and self.v5 and self.role is Role.SERVER:
            # [MQTT-3.3.4-9 (5.0)] "If it receives more than Receive Maximum QoS 1 and
            # QoS 2 PUBLISH packets where it has not sent a PUBACK or PUBCOMP in
            # response, the Server uses a DISCONNECT packet with Reason Code 0x93".
            # 3.1.1 has no such limit: there the reader waits (receive_window_full).
            # A client is lenient with a server that sends more (Mosquitto may,
            # after a session resumes): it stops reading until it acked some.
            raise ProtocolError("receive maximum exceeded", ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)
        self._unacked_in += 1
        return packet

    @property
    def receive_window_full(self) -> bool:
        """Whether as many QoS 1/2 PUBLISHes as our Receive Maximum await their ack.

        An MQTT 5 peer must not send more (``next_event`` raises 0x93 if it
        does); a 3.1.1 peer knows no such limit, so the application stops
        reading it until it has acknowledged some (backpressure).
        """
        return self._unacked_in >= self._receive_maximum

    @property
    def unacked(self) -> int:
        """QoS 1/2 PUBLISHes handed out by ``next_event`` and not yet acknowledged."""
        return self._unacked_in

    def ack(self, packet: Publish, code: ReasonCode = ReasonCode.SUCCESS) -> None:
        """Acknowledge a QoS 1/2 PUBLISH that ``next_event`` handed out (QoS 0: nothing).

        A failure ``code`` (>= 0x80) refuses it: MQTT 5 peers hear it in the
        PUBACK/PUBREC and [MQTT-4.3.3-9 (5.0)] a refused QoS 2 identifier is not
        kept; 3.1.1 has no failure acks, so there the message is acknowledged.
        """
        qos = packet.qos
        if not qos:
            return
        pid: int = packet.packet_id  # type: ignore[assignment]
        self._unacked_in -= 1
        if qos == 2:
            self._pending_qos2.discard(pid)
        if code and self.v5:
            if code not in PUBACK_REASON_CODES:
                code = ReasonCode.UNSPECIFIED_ERROR
            ack = Puback(pid, code) if qos == 1 else Pubrec(pid, code)
            self._send(ack, Event.ACK)
            return
        if self._machine.state is not _CONNECTED:  # the table's answer there: allowed
            self._machine.sending(Event.ACK)
        if qos == 1:
            self._out.append(write_ack_ok(PUBACK_FIRST, pid))
        else:
            self.session.receive_qos2(pid)  # type: ignore[union-attr]
            self._out.append(write_ack_ok(PUBREC_FIRST, pid))

    def _on_pubrel(self, packet: Pubrel) -> None:
        pid = packet.packet_id
        known = self.session.release_qos2(pid)  # type: ignore[union-attr]
        if known or not self.v5:
            # [MQTT-4.3.3-2 (3.1.1) / 4.3.3-11 (5.0)] PUBREL is answered with PUBCOMP.
            self._out.append(write_ack_ok(PUBCOMP_FIRST, pid))
        else:
            self._send(Pubcomp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), Event.ACK)

    def _on_pubrec(self, packet: Pubrec) -> Pubrec | None:
        """A PUBREC for a QoS 2 message we sent: release it, or end a refused flow."""
        pid = packet.packet_id
        failed = packet.reason_code >= 0x80
        out = self.session.pubrec(pid, failed)  # type: ignore[union-attr]
        if failed:
            # [MQTT-4.4.0-2 (5.0)] a failure code ends the flow; no PUBREL.
            return packet if out is not None else None
        if out is None and self.v5:
            self._send(Pubrel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND), Event.ACK)
            return None
        # [MQTT-4.3.3-1 (3.1.1) / 4.3.3-4 (5.0)] answer PUBREC with PUBREL.
        self._out.append(write_ack_ok(PUBREL_FIRST, pid))
        return None

    # -- outbound PUBLISH -----------------------------------------------------------------

    def publish_bytes(
        self,
        parts: PublishParts,
        qos: int,
        retain: bool,
        subscription_ids: tuple[int, ...],
        packet_id: int | None,
        dup: bool = False,
    ) -> bytes | None:
        """The PUBLISH for this peer, or ``None`` if it exceeds its Maximum Packet Size."""
        if not self.v5:
            if not qos:
                return parts.qos0_packet(False, retain, subscription_ids)
            m = parts.message
            return encode_publish(
                parts.topic_bytes,
                m.payload,
                V311,
                qos=qos,
                retain=retain,
                dup=dup,
                packet_id=packet_id,
            )
        new_alias = 0
        topic_bytes = parts.topic_bytes
        props = parts.properties(subscription_ids)
        if self.peer_alias_max:
            topic = parts.message.topic
            alias = self._alias_out.get(topic)
            if alias is None and len(self._alias_out) < self.peer_alias_max:
                # Aliases are per connection [MQTT-3.3.2-7] and never above the
                # peer's Topic Alias Maximum [MQTT-3.3.2-11 (5.0)].
                alias = new_alias = len(self._alias_out) + 1
                self._alias_out[topic] = alias
            elif alias is not None:
                topic_bytes = b""
            if alias is not None:
                props = props + encode_properties(Properties(topic_alias=alias))
        elif not qos:
            packet = parts.qos0_packet(True, retain, subscription_ids)
            if self.peer_max_packet and len(packet) > self.peer_max_packet:
                self.counters.dropped_too_large += 1
                return None
            return packet
        packet = encode_publish(
            topic_bytes,
            parts.message.payload,
            V5,
            qos=qos,
            retain=retain,
            dup=dup,
            packet_id=packet_id,
            properties=props,
        )
        if self.peer_max_packet and len(packet) > self.peer_max_packet:
            # [MQTT-3.1.2-24/25 (5.0)] never send more than the peer's Maximum
            # Packet Size: discard as if delivered (and forget an alias it never saw).
            if new_alias:
                del self._alias_out[parts.message.topic]
            self.counters.dropped_too_large += 1
            return None
        return packet

    def send_qos0(
        self, parts: PublishParts, retain: bool, subscription_ids: tuple[int, ...]
    ) -> None:
        """Send a QoS 0 message now (nothing once the connection is over)."""
        if self._machine.state is not State.CONNECTED:
            return
        packet = self.publish_bytes(parts, 0, retain, subscription_ids, None)
        if packet is not None:
            self.counters.messages_sent += 1
            self._out.append(packet)

    def deliver(self, delivery: Delivery, parts: PublishParts) -> None:
        """Send a QoS 1/2 delivery now if the peer's Receive Maximum allows, else queue it.

        [MQTT-4.6.0-6] keep order: nothing overtakes what is queued already;
        [MQTT-3.3.4-9 (5.0)] never more unacknowledged than the peer's Receive Maximum.
        """
        session = self.session
        assert session is not None
        if (
            session.queue
            or self._unsent
            or len(session.inflight) >= self.send_quota
            or self._machine.state is not State.CONNECTED
        ):
            session.enqueue(delivery)  # a connection that is over: for the next one
            return
        self._transmit(delivery, parts)

    def _transmit(self, delivery: Delivery, parts: PublishParts) -> None:
        session = self.session
        assert session is not None
        out = session.send(delivery)
        packet = self.publish_bytes(
            parts, delivery.qos, delivery.retain, delivery.subscription_ids, out.packet_id
        )
        if packet is None:
            session.drop_inflight(out.packet_id)
            return
        if self._machine.state is not _CONNECTED:  # the table's answer there: allowed
            self._machine.sending(Event.PUBLISH)
        self.counters.messages_sent += 1
        self._out.append(packet)

    @property
    def waiting(self) -> bool:
        """Whether messages wait for the send quota: queued, or in flight since a
        previous connection and not resent yet (``pump`` sends them when it frees)."""
        session = self.session
        return bool(self._unsent or (session is not None and session.queue))

    def pump(self, now: float, allowed: Callable[[str], bool] | None = None) -> None:
        """Move waiting messages into flight while the peer's Receive Maximum allows:
        first the resumed session's PUBLISHes not resent yet, then the queue.

        ``allowed(topic)`` may veto a message (an ACL that changed since).
        """
        session = self.session
        if session is None or not self.connected:
            return
        inflight = session.inflight
        quota = self.send_quota
        if self._unsent:
            # Meanwhile the peer may have acknowledged one it got on an earlier
            # connection (PUBACK: gone; PUBREC: released, its PUBREL went out).
            unsent = self._unsent = deque(
                pid for pid in self._unsent if (o := inflight.get(pid)) and not o.released
            )
            # [MQTT-3.3.4-9 (5.0)] in flight: all but those not resent yet.
            while unsent and len(inflight) - len(unsent) < quota:
                self._resend(inflight[unsent.popleft()], now, allowed)
            if unsent:
                return  # [MQTT-4.6.0-6] nothing queued overtakes them
        if not session.queue:
            return
        while len(inflight) < quota:
            delivery = session.pop_queued(now)
            if delivery is None:
                break
            if allowed is None or allowed(delivery.message.topic):
                self._transmit(delivery, PublishParts(delivery.message, now))

    def resend_inflight(self, now: float, allowed: Callable[[str], bool] | None = None) -> None:
        """[MQTT-4.4.0-1] on a resumed session, resend unacknowledged PUBLISH (DUP=1)
        and PUBREL with their original packet ids, in the original order.

        Every PUBREL goes out now. PUBLISHes only while the send quota of this
        connection allows [MQTT-3.3.4-9 (5.0)] (a released QoS 2 flow holds its
        place in it until its PUBCOMP, as it does on the connection that sent
        it); the rest wait, in order, until acks free the quota (``pump``).
        """
        session = self.session
        assert session is not None
        unsent = self._unsent
        unsent.clear()
        quota = self.send_quota
        outstanding = sum(out.released for out in session.inflight.values())
        for out in list(session.inflight.values()):
            if out.released:
                self._out.append(write_ack_ok(PUBREL_FIRST, out.packet_id))
            elif outstanding < quota:
                outstanding += self._resend(out, now, allowed)
            else:
                unsent.append(out.packet_id)

    def _resend(self, out: Outgoing, now: float, allowed: Callable[[str], bool] | None) -> bool:
        """Resend one unacknowledged PUBLISH; ``False`` if it was dropped instead."""
        session = self.session
        assert session is not None
        pid = out.packet_id
        d = out.delivery
        if allowed is not None and not allowed(d.message.topic):
            session.drop_inflight(pid)
            return False
        # [MQTT-3.3.1-1] DUP=1 on a re-delivery.
        packet = self.publish_bytes(
            PublishParts(d.message, now), d.qos, d.retain, d.subscription_ids, pid, dup=True
        )
        if packet is None:
            session.drop_inflight(pid)
            return False
        self._out.append(packet)
        return True
