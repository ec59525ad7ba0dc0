"""The broker's side of one network connection: bytes between a link and a ServerConnection.

How this works: :class:`ClientHandler` reads from its
:class:`~headwater.mqtt.transports.Link`, feeds a sans-IO
:class:`~headwater.mqtt.connection.ServerConnection` and applies what comes
out (a CONNECT, PUBLISHes, SUBSCRIBEs, ...) to the broker: authentication,
sessions, ACLs, the ``on_publish`` hook, routing. The connection owns the
protocol (states, flows, acks, aliases, limits); this class owns the policy
and the I/O.

* Handlers are synchronous; only CONNECT (password check in a thread, the
  connect hook) and PUBLISHes a :class:`~headwater.mqtt.config.PublishHook`
  selects await. The selected PUBLISHes of one socket read go to the hook as
  one batch (one task, one durable append for the Broker source); batches are
  pipelined (the next read is decoded while a batch is with the hook, up to
  ``receive_maximum`` messages, then reading waits), and their outcomes (ack,
  routing) are applied strictly in arrival order. A PUBLISH the hook does not
  select is acknowledged and routed at once. Any other packet waits until
  every earlier PUBLISH is settled, so a connection's packets still take
  effect in order. A window of QoS 1 messages thus gets its PUBACKs in one
  write, and the log sees many appends at once (group commit).
* Outgoing bytes collect in the connection and are written once per event
  loop iteration (``call_soon`` flush), so a burst of deliveries to a
  subscriber costs one ``write``. A reader whose own transport is above
  :data:`WRITE_HIGH_WATER` awaits ``drain()`` before reading more
  (backpressure on that client only). QoS 0 messages for a subscriber whose
  buffer exceeds ``max_write_buffer`` are dropped and counted; QoS 1/2 are
  bounded by the send quota and queue in the session.
* Bytes held for packets still arriving count against the broker-wide
  ``max_incomplete_bytes``, and are given back the moment the connection ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

from headwater.mqtt._admission import Refused, admit
from headwater.mqtt._pipeline import MAX_BATCH, Pipeline
from headwater.mqtt.auth import Acl
from headwater.mqtt.config import (
    CONNECT_TIMEOUT,
    READ_CACHE_MAX,
    ClientInfo,
    Credentials,
    Hooked,
    Identity,
    Listener,
    PeerCertificate,
)
from headwater.mqtt.connection import NEED_DATA, PublishParts, ServerConnection
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    Connect,
    Disconnect,
    MqttError,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Subscribe,
    SubscriptionOptions,
    Unsubscribe,
)
from headwater.mqtt.router import RoutingUnavailable, subscription_ids
from headwater.mqtt.session import NEVER_EXPIRES, Delivery, Message, Session, Subscription
from headwater.mqtt.topics import parse_filter
from headwater.mqtt.transports import Link

if TYPE_CHECKING:
    from headwater.mqtt.broker import MqttBroker

__all__ = ["WRITE_HIGH_WATER", "ClientHandler"]

logger = logging.getLogger("headwater.mqtt.broker")

#: A reader stops reading from its client while more than this is waiting to
#: be sent to that client (its acks and deliveries), until the transport drains.
WRITE_HIGH_WATER = 256 * 1024


_tuple_new = tuple.__new__
"""``_tuple_new(Hooked, (message, packet id, dup))``: a :class:`Hooked` for every
selected PUBLISH without the named tuple's Python-level ``__new__`` (a third of
the cost)."""


class _Close(Exception):
    """Internal: stop serving this connection (after whatever was queued is flushed)."""


def is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _only_alias(props: Properties) -> bool:
    return props == Properties(topic_alias=props.topic_alias)


class ClientHandler:
    """The server side of one network connection."""

    def __init__(
        self,
        broker: MqttBroker,
        link: Link,
        listener: Listener,
        certificate: PeerCertificate | None,
    ) -> None:
        self.broker = broker
        self.config = broker.config
        self.link = link
        self.listener = listener
        self.certificate = certificate
        #: Set at CONNECT: who the client is, and its own ACL if its identity has one.
        self.identity: Identity | None = None
        self._own_acl: Acl | None = None
        self.conn = ServerConnection(broker.limits, broker.stats)
        self.loop = asyncio.get_running_loop()
        self.client_id = ""
        self.username: str | None = None
        self.session: Session | None = None
        self.info: ClientInfo | None = None
        self.closing = False  # this side ends the connection (or the client said DISCONNECT)
        self.taken_over = False
        self.will: Any = None
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._flush_scheduled = False
        self.hook = broker.hook
        #: Bytes the connection holds, as counted in ``broker._incomplete``.
        self._held = 0
        #: Per-delivery ACL checks: the broker's ACL generation these were made
        #: under, whether every subscription is wholly readable (then no topic
        #: needs checking), and per-topic verdicts otherwise.
        self._acl_generation = -1
        self._all_readable = False
        self._readable: dict[str, bool] = {}
        #: PUBLISHes with the hook, and the batch being collected from the current read.
        self.pipeline = Pipeline(self)

    @property
    def v5(self) -> bool:
        return self.conn.v5

    @property
    def connected(self) -> bool:
        return self.info is not None

    # -- output -------------------------------------------------------------------------------

    def wake(self) -> None:
        """Write what the connection queued, once this event loop iteration ends."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.conn.data_to_send()
        if data:
            self.link.write(data)

    def disconnect(self, code: ReasonCode) -> None:
        """Send DISCONNECT (MQTT 5, after a CONNACK only [MQTT-3.14.0-1]) and close."""
        if not self.closing:
            self.conn.disconnect(code)
        self.close()

    def close(self) -> None:
        self.closing = True
        self.flush()
        self.link.close()

    def fail(self, code: ReasonCode, why: str) -> None:
        """A protocol violation by the client: log, DISCONNECT with ``code``, close."""
        self.broker.stats.protocol_errors += 1
        peer = self.client_id or self.link.peer
        self.broker.throttle.info(("protocol", code), "closing %s (%s): %s", peer, code.name, why)
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
            if not self.closing:
                self.conn.fail(exc)  # DISCONNECT / CONNACK 0x01, as the protocol says
            self.close()
        except (ConnectionError, TimeoutError, OSError) as exc:
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
                await self.pipeline.settled()
            finally:
                self.closing = True
                self.flush()
                self.link.close()
                self._release()
                await self.broker._connection_closed(self)

    def _release(self) -> None:
        """Give back at once what the connection held for packets still arriving.

        Not left to the garbage collector: the pipeline refers back to this object,
        so only a full collection would free it and the partial packet its
        connection holds (a megabyte per connection under a probe).
        """
        held = self._held
        self.broker._incomplete -= held
        self._held = 0
        self.conn.release()
        self.broker.released(held)
        self._readable.clear()
        self.pipeline.close()

    def _count_incoming(self) -> None:
        """Account the connection's bytes in the broker-wide budget; over it: close."""
        held = self.conn.buffered
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
        conn = self.conn
        loop = self.loop
        event: Any = NEED_DATA
        # [MQTT-3.1.0-1] the first packet must be CONNECT (the connection enforces it).
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while event is NEED_DATA:
                data = await link.read()
                if not data:
                    return
                conn.receive_data(data, loop.time())
                self._count_incoming()
                event = conn.next_event()
        assert isinstance(event, Connect)
        await self._on_connect(event)
        handlers = _HANDLERS
        pipeline = self.pipeline
        while not self.closing:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    break
                if type(event) is Publish:
                    result = self._on_publish_packet(event)
                else:
                    if pipeline.batch:
                        pipeline.start()
                    if pipeline.in_flight:
                        await pipeline.settled()  # earlier PUBLISHes take effect first
                        if self.closing:
                            return
                    result = handlers[type(event)](self, event)
                if result is not None:
                    await result
                if self.closing:
                    return
            if pipeline.batch:
                waiting = pipeline.start()
                if waiting is not None:
                    await waiting
                if self.closing:
                    return
            if conn.has_data_to_send:
                self.wake()
            if self._held:
                self._count_incoming()  # what the packets just handled no longer hold
            if link.buffered() > WRITE_HIGH_WATER:
                # Backpressure: stop reading this client until its socket drains.
                self.flush()
                await link.drain()
            data = await link.read()
            if not data:
                return
            conn.receive_data(data, loop.time())
            self._count_incoming()

    # -- CONNECT ------------------------------------------------------------------------------

    def _refuse(self, code: ReasonCode, why: str) -> NoReturn:
        """CONNACK with a failure code, then close [MQTT-3.2.2-5 (3.1.1) / 3.2.2-7 (5.0)]."""
        self.broker.throttle.info(
            ("refused", code), "refusing %s from %s: %s", code.name, self.link.peer, why
        )
        self.conn.refuse(code)
        self.close()
        raise _Close

    async def _on_connect(self, connect: Connect) -> None:
        broker = self.broker
        config = self.config
        conn = self.conn
        v5 = conn.v5
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

        admitted = await admit(
            broker,
            Credentials(
                client_id,
                connect.username,
                connect.password,
                self.certificate,
                self.listener,
                self.link.peer,
                conn.version,
            ),
        )
        if isinstance(admitted, Refused):
            self._refuse(admitted.code, admitted.why)
        identity: Identity = admitted
        username = identity.username
        will = connect.will
        if (
            v5
            and will is not None
            and will.properties.payload_format_indicator == 1
            and not is_utf8(will.payload)
        ):
            # MQTT 5.0 §3.1.3.2.3: Payload Format Indicator 1 says the will is UTF-8;
            # "the Server MAY validate [it] ... and if it is not send a CONNACK with
            # the Reason Code of 0x99 (Payload format invalid)".
            broker.stats.payload_format_invalid += 1
            self._refuse(ReasonCode.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
        if v5 and will is not None:
            # [MQTT-3.2.2-12 (5.0)] a Will QoS above what the server supports, and
            # [MQTT-3.2.2-13 (5.0)] a Will Retain where retained messages are not
            # available, reject the connection (0x9B / 0x9A); 3.1.1 has no such codes
            # (its will is sent at the Maximum QoS, not retained).
            if will.qos > config.maximum_qos:
                self._refuse(ReasonCode.QOS_NOT_SUPPORTED, f"will QoS {will.qos}")
            if will.retain and not config.retain_available:
                self._refuse(ReasonCode.RETAIN_NOT_SUPPORTED, "will retain")
        if len(broker._online) >= config.max_connections and client_id not in broker._online:
            self._refuse(ReasonCode.SERVER_BUSY, "connection limit reached")
        if self.closing:
            raise _Close

        self.client_id = client_id
        self.username = username
        self.identity = identity
        self._own_acl = identity.acl
        if v5:
            expiry = props.session_expiry_interval or 0
        else:
            # 3.1.1: CleanSession=0 sessions last until the client cleans them.
            expiry = 0 if connect.clean_start else NEVER_EXPIRES
        granted_expiry = min(expiry, config.max_session_expiry)
        try:
            # A session store shared by several nodes hands the session over first.
            await broker.claim(self, client_id, connect.clean_start, identity.user, will)
        except RoutingUnavailable as exc:
            self._refuse(ReasonCode.SERVER_UNAVAILABLE, f"the session cannot be claimed: {exc}")

        # From here on no awaits until the session is attached (no interleaving).
        self.session, present = broker._attach(
            self, connect.clean_start, granted_expiry, identity.user
        )
        self.will = will
        response_information = None
        if v5 and props.request_response_information and config.response_information_prefix:
            response_information = f"{config.response_information_prefix}/{client_id}"
        conn.accept(
            self.session,
            present,
            assigned_client_identifier=assigned,
            session_expiry_interval=granted_expiry if granted_expiry != expiry else None,
            response_information=response_information,
        )
        self.info = ClientInfo(
            client_id,
            username,
            conn.version,
            self.listener.label,
            self.link.peer,
            identity.user,
            identity.labels,
        )
        broker.stats.connections_total += 1
        deadline = conn.keepalive_deadline()
        if deadline is not None:
            self._keepalive_handle = self.loop.call_at(deadline, self._check_keepalive)
        now = time.time()
        if present:
            conn.resend_inflight(now, self.may_read)
        conn.pump(now, self.may_read)
        self.wake()
        if broker._on_connect is not None:
            try:
                await broker._on_connect(self.info)
            except Exception:
                logger.exception("on_connect hook failed for %s", client_id)

    @property
    def acl(self) -> Acl | None:
        """The ACL that applies to this client: its identity's own, or the broker's."""
        own = self._own_acl
        return own if own is not None else self.broker.acl

    def _check_keepalive(self) -> None:
        if self.closing:
            return
        deadline = self.conn.keepalive_deadline()
        if deadline is None:
            return
        if self.loop.time() < deadline:
            self._keepalive_handle = self.loop.call_at(deadline, self._check_keepalive)
            return
        # [MQTT-3.1.2-24 (3.1.1) / MQTT-3.1.2-22 (5.0)] nothing for 1.5 x Keep Alive:
        # close as if the network failed, so the will is published.
        self.broker.throttle.info("keepalive", "keepalive timeout for %s", self.client_id)
        self.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)

    def take_over(self) -> None:
        """Another connection claimed our client id [MQTT-3.1.4-2 (3.1.1) / 3.1.4-3 (5.0)]."""
        self.taken_over = True
        self.disconnect(ReasonCode.SESSION_TAKEN_OVER)

    # -- inbound PUBLISH ----------------------------------------------------------------------

    def _on_publish_packet(self, packet: Publish) -> Awaitable[None] | None:
        broker = self.broker
        topic = packet.topic
        props = packet.properties
        broker.stats.messages_received += 1
        acl = self.acl
        if acl is not None and not acl.can_publish(self.username, self.client_id, topic):
            broker.stats.denied_publish += 1
            broker.throttle.warning(
                ("denied-publish", self.client_id),
                "denied PUBLISH by %s to %r",
                self.client_id,
                topic,
            )
            # 5.0: PUBACK/PUBREC 0x87 Not authorized (the id is not kept); 3.1.1 has no
            # negative ack: acknowledged and dropped (counted as denied above).
            self.refuse_publish(packet, ReasonCode.NOT_AUTHORIZED, counted=True)
            return None
        if props.payload_format_indicator == 1 and not is_utf8(packet.payload):
            # [MQTT-3.3.2-4] Payload Format Indicator 1 promises UTF-8; "the receiver
            # MAY validate ... and if it is not, send a PUBACK, PUBREC, or DISCONNECT
            # with Reason Code of 0x99 (Payload format invalid)" (§3.3.2.3.2).
            broker.stats.payload_format_invalid += 1
            self.refuse_publish(packet, ReasonCode.PAYLOAD_FORMAT_INVALID)
            return None
        if props is EMPTY_PROPERTIES or (props.topic_alias is not None and _only_alias(props)):
            message = Message(
                topic, packet.payload, packet.qos, packet.retain, origin=self.client_id
            )
        else:
            message = Message.from_properties(
                topic,
                packet.payload,
                packet.qos,
                packet.retain,
                props,
                self.client_id,
                time.time(),
            )
        hook = self.hook
        if hook is not None and hook.selects(topic):
            pipeline = self.pipeline
            batch = pipeline.batch
            batch.append(_tuple_new(Hooked, (message, packet.packet_id, packet.dup)))
            pipeline.packets.append(packet)
            if len(batch) >= MAX_BATCH:
                return pipeline.start()
            return None
        broker.route(message)
        self.conn.ack(packet)
        return None

    def refuse_publish(self, packet: Publish, code: ReasonCode, *, counted: bool = False) -> None:
        """Tell a publisher its message was refused for good (nothing for QoS 0).

        MQTT 5 clients hear ``code``. 3.1.1 has no negative ack, and resending can
        never succeed: acknowledge and drop, as Mosquitto does with a denied
        publish; a disconnect would make the client resend it on every reconnect,
        forever. ``counted``: the caller counted the refusal already.
        """
        if not packet.qos:
            return
        if not self.v5 and not counted:
            self.broker.stats.refused_acknowledged += 1
        self.conn.ack(packet, code)
        self.wake()

    # -- outbound -----------------------------------------------------------------------------

    def _on_flow_ended(self, packet: Puback | Pubcomp | Pubrec) -> None:
        """One of our QoS 1/2 flows ended: room for what waits for the send quota."""
        if self.conn.waiting:
            self.pump()

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
        acl = self.acl
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
        self, parts: PublishParts, qos: int, retain: bool, subscription_ids: tuple[int, ...]
    ) -> None:
        """Send (or queue, for QoS > 0 beyond the send quota) one message to this client."""
        if not self._all_readable and not self.may_read(parts.message.topic):
            return
        if not qos:
            if self.link.buffered() > self.config.max_write_buffer:
                self.broker.stats.dropped_slow_consumer += 1
                return
            self.conn.send_qos0(parts, retain, subscription_ids)
        else:
            self.conn.deliver(Delivery(parts.message, qos, retain, subscription_ids), parts)
        if not self._flush_scheduled:  # wake(), inline: once per delivered message
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def pump(self) -> None:
        """Move waiting messages into flight while the send quota allows."""
        if self.closing or not self.conn.waiting:
            return
        self.conn.pump(time.time(), self.may_read)
        self.wake()

    # -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------

    def _on_subscribe(self, packet: Subscribe) -> Awaitable[None] | None:
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
        granted: list[Subscription] = []
        for text, options in packet.subscriptions:
            code, sub, is_new = self._subscribe_one(text, options, identifier)
            codes.append(code)
            if sub is not None:
                granted.append(sub)
            if sub is None or sub.share is not None or not config.retain_available:
                # §4.8.2: retained messages are not sent for a shared subscription.
                continue
            handling = sub.retain_handling
            # [MQTT-3.3.1-9/10/11 (5.0)] Retain Handling 0: send; 1: only if new; 2: never.
            # [MQTT-3.8.4-3 (3.1.1)] a repeated SUBSCRIBE re-sends the retained messages.
            if handling == 0 or (handling == 1 and is_new):
                retained.append((sub, broker.retained.match(sub.match_filter, now)))
        waiting = self._router_pending()
        if waiting is not None:
            return self._answer_later(
                waiting, lambda: self._suback(packet, codes, granted, retained, now)
            )
        self._suback(packet, codes, granted, retained, now)
        return None

    def _router_pending(self) -> Awaitable[None] | None:
        """What a router spanning nodes must finish before a SUBACK/UNSUBACK."""
        spanning = self.broker.spanning_router
        return spanning.pending(self.client_id) if spanning is not None else None

    async def _answer_later(self, waiting: Awaitable[None], answer: Callable[[], None]) -> None:
        try:
            await waiting
        except RoutingUnavailable as exc:
            # Not kept across the mesh: no SUBACK; the client subscribes again after
            # reconnecting, and the session as stored does not have it.
            self.broker.throttle.warning(
                ("routing", self.client_id), "closing %s: %s", self.client_id, exc
            )
            self.disconnect(ReasonCode.UNSPECIFIED_ERROR)
            raise _Close from exc
        if not self.closing:
            answer()

    def _suback(
        self,
        packet: Subscribe,
        codes: list[ReasonCode],
        granted: list[Subscription],
        retained: list[tuple[Subscription, list[Message]]],
        now: float,
    ) -> None:
        # [MQTT-3.8.4-1] SUBACK with the same packet id, before any retained message.
        self.conn.suback(packet.packet_id, codes)
        broker = self.broker
        if granted and broker._on_subscribe is not None:
            assert self.info is not None
            try:
                broker._on_subscribe(self.info, granted)
            except Exception:
                logger.exception("on_subscribe hook failed for %s", self.client_id)
        for sub, messages in retained:
            sub_ids = subscription_ids(sub)
            for message in messages:
                if message.origin == self.client_id and sub.no_local:
                    continue
                qos = min(message.qos, sub.qos)
                # [MQTT-3.3.1-8 (3.1.1)] RETAIN=1 for messages sent because of a new
                # subscription (5.0 §3.3.1.3 likewise, whatever Retain As Published says).
                self.deliver(PublishParts(message, now), qos, True, sub_ids)
        self.wake()

    def _subscribe_one(
        self, text: str, options: SubscriptionOptions, identifier: int | None
    ) -> tuple[ReasonCode, Subscription | None, bool]:
        config = self.config
        session = self.session
        assert session is not None
        # $share/{ShareName}/{filter} is honoured for 3.1.1 clients too, as
        # Mosquitto does (3.1.1 has no shared subscriptions of its own). The
        # connection closed already on a malformed filter.
        parsed = parse_filter(text)
        if parsed.share is not None and options.no_local and self.v5:
            # [MQTT-3.8.3-4 (5.0)] No Local on a shared subscription is a protocol error.
            self.fail(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")
        broker = self.broker
        acl = self.acl
        if acl is not None and not acl.can_subscribe(
            self.username, self.client_id, parsed.topic_filter
        ):
            broker.stats.denied_subscribe += 1
            broker.throttle.warning(
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
        broker.router.subscribe(self.client_id, sub)
        return ReasonCode(granted), sub, existing is None

    def _on_unsubscribe(self, packet: Unsubscribe) -> Awaitable[None] | None:
        session = self.session
        assert session is not None
        codes: list[ReasonCode] = []
        for text in packet.topic_filters:
            sub = session.subscriptions.pop(text, None)
            if sub is None:
                codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
                continue
            session.dirty = True
            self.broker.router.unsubscribe(self.client_id, sub)
            self._acl_generation = -1  # what remains may now be wholly readable
            codes.append(ReasonCode.SUCCESS)
        waiting = self._router_pending()
        if waiting is not None:
            return self._answer_later(waiting, lambda: self._unsuback(packet, codes))
        self._unsuback(packet, codes)
        return None

    def _unsuback(self, packet: Unsubscribe, codes: list[ReasonCode]) -> None:
        self.conn.unsuback(packet.packet_id, codes)
        self.wake()

    def _on_pingreq(self, packet: Pingreq) -> None:
        self.conn.pong()

    def _on_pubrel(self, packet: Pubrel) -> None:
        self.conn.complete(packet)

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        assert session is not None
        expiry = packet.properties.session_expiry_interval
        if expiry is not None:
            session.expiry_interval = min(expiry, self.config.max_session_expiry)
            session.dirty = True
        if packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
            # [MQTT-3.1.2-10] / [MQTT-3.14.4-3 (5.0)] a normal DISCONNECT discards the will;
            # 0x04 keeps it so that it is published.
            self.will = None
        self.closing = True


#: What the connection handler does with each packet after CONNECT: one table for
#: every connection (a table of bound methods per connection cost each CONNECT
#: ten allocations, and a reference cycle ``_release`` had to break).
_HANDLERS: Final[dict[type, Callable[[ClientHandler, Any], Awaitable[None] | None]]] = {
    Publish: ClientHandler._on_publish_packet,
    Puback: ClientHandler._on_flow_ended,
    Pubcomp: ClientHandler._on_flow_ended,
    Pubrec: ClientHandler._on_flow_ended,
    Subscribe: ClientHandler._on_subscribe,
    Unsubscribe: ClientHandler._on_unsubscribe,
    Disconnect: ClientHandler._on_disconnect,
    Pingreq: ClientHandler._on_pingreq,
    Pubrel: ClientHandler._on_pubrel,
}
