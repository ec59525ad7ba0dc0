"""The sans-IO connections: bytes in, events and bytes out; no socket, no event loop.

Every scenario is fed whole and one byte at a time (h11's habit): the events
and the answers must not depend on how the bytes were cut.
"""

from __future__ import annotations

from typing import Any

import pytest

from headwater.mqtt._state import ConnectionStateMachine, Event, Role, State
from headwater.mqtt.connection import (
    NEED_DATA,
    PAUSED,
    ClientConnection,
    ClientLimits,
    PublishParts,
    ServerConnection,
    ServerLimits,
)
from headwater.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    LocalProtocolError,
    MalformedPacket,
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
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    UnsupportedProtocolVersion,
    encode,
)
from headwater.mqtt.session import Delivery, Message, Session

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
CUTS = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])


def feed(conn: ServerConnection | ClientConnection, data: bytes, bytewise: bool) -> list[Any]:
    """Feed ``data`` and collect every event until the connection needs more."""
    events: list[Any] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        conn.receive_data(chunk, 1.0)
        while True:
            event = conn.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            events.append(event)
    return events


def sent(conn: ServerConnection, version: ProtocolVersion) -> list[Packet]:
    """What the server wrote, decoded as its client would."""
    decoder = Decoder(server=False, version=version)
    decoder.receive_data(conn.data_to_send())
    packets: list[Packet] = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        packets.append(packet)  # type: ignore[arg-type]
    return packets


def wire(version: ProtocolVersion, *packets: Packet) -> bytes:
    return b"".join(encode(p, version) for p in packets)


def connected(
    version: ProtocolVersion,
    limits: ServerLimits | None = None,
    session: Session | None = None,
    **connect: Any,
) -> ServerConnection:
    conn = ServerConnection(limits)
    [event] = feed(conn, wire(version, Connect(client_id="c", **connect)), False)
    assert isinstance(event, Connect)
    conn.accept(session or Session("c"), False)
    assert isinstance(sent(conn, version)[0], Connack)
    return conn


# -- the state machine as data --------------------------------------------------------------


def test_an_illegal_move_raises_and_leaves_the_state_unchanged() -> None:
    machine = ConnectionStateMachine(Role.SERVER)
    with pytest.raises(ProtocolError):
        machine.received(Event.PUBLISH)  # before CONNECT
    assert machine.state is State.AWAIT_CONNECT
    with pytest.raises(LocalProtocolError):
        machine.sending(Event.SUBACK)
    assert machine.state is State.AWAIT_CONNECT
    machine.received(Event.CONNECT)
    assert machine.state is State.CONNECTING
    machine.sending(Event.CONNACK_OK)
    assert machine.state is State.CONNECTED
    with pytest.raises(ProtocolError):
        machine.received(Event.CONNECT)
    assert machine.state is State.CONNECTED
    machine.received(Event.DISCONNECT)
    assert machine.state is State.CLOSED


# -- CONNECT first, CONNACK before anything else ------------------------------------------


@VERSIONS
@CUTS
def test_packets_after_connect_wait_for_the_answer(
    version: ProtocolVersion, bytewise: bool
) -> None:
    conn = ServerConnection()
    data = wire(
        version,
        Connect(client_id="c"),
        Pingreq(),
        Publish("t", b"x", 0, False, False, None, Properties()),
    )
    events = feed(conn, data, bytewise)
    assert [type(e) for e in events] == [Connect]
    assert conn.next_event() is PAUSED  # pipelined packets wait for the CONNACK
    assert conn.data_to_send() == b""
    conn.accept(Session("c"), False)
    later = []
    while (event := conn.next_event()) is not NEED_DATA:
        later.append(event)
    # PINGREQ is handed out, so that its answer keeps its place among the acks.
    assert [type(e) for e in later] == [Pingreq, Publish]
    conn.pong()
    assert [type(p) for p in sent(conn, version)] == [Connack, Pingresp]


@VERSIONS
def test_a_first_packet_other_than_connect_is_a_protocol_error(version: ProtocolVersion) -> None:
    conn = ServerConnection()
    conn.receive_data(encode(Pingreq(), version))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_an_unsupported_protocol_level_is_answered_with_connack_0x01() -> None:
    conn = ServerConnection()
    data = bytearray(wire(V311, Connect(client_id="c")))
    data[8] = 3  # MQTT 3.1's level
    conn.receive_data(bytes(data))
    with pytest.raises(UnsupportedProtocolVersion) as info:
        conn.next_event()
    conn.fail(info.value)
    assert conn.data_to_send() == b"\x20\x02\x00\x01"
    assert conn.closed


@VERSIONS
def test_refuse_sends_a_failure_connack_and_closes(version: ProtocolVersion) -> None:
    conn = ServerConnection()
    feed(conn, wire(version, Connect(client_id="c")), False)
    conn.refuse(ReasonCode.NOT_AUTHORIZED)
    [connack] = sent(conn, version)
    assert isinstance(connack, Connack)
    assert connack.reason_code == ReasonCode.NOT_AUTHORIZED  # 3.1.1: return code 5
    assert conn.closed
    with pytest.raises(LocalProtocolError):
        conn.suback(1, [ReasonCode.SUCCESS])


def test_refuse_without_a_311_return_code_closes_without_connack() -> None:
    conn = ServerConnection()
    feed(conn, wire(V311, Connect(client_id="c")), False)
    conn.refuse(ReasonCode.PAYLOAD_FORMAT_INVALID)  # a will that is not UTF-8: 5.0 only
    assert conn.data_to_send() == b""  # [MQTT-3.2.2-6 (3.1.1)]
    assert conn.closed


def test_connack_is_made_to_fit_the_clients_maximum_packet_size() -> None:
    conn = ServerConnection()
    props = Properties(maximum_packet_size=40, request_response_information=1)
    feed(conn, wire(V5, Connect(client_id="c", properties=props)), False)
    conn.accept(Session("c"), False, response_information="response/" + "x" * 60)
    data = conn.data_to_send()
    assert len(data) <= 40  # [MQTT-3.1.2-24]: the response information is left out
    decoder = Decoder(server=False, version=V5)
    decoder.receive_data(data)
    connack = decoder.next_packet()
    assert isinstance(connack, Connack) and connack.properties.response_information is None
    assert connack.properties.receive_maximum == ServerLimits().receive_maximum


def test_server_keep_alive_overrides_the_clients() -> None:
    conn = ServerConnection(ServerLimits(server_keep_alive=10))
    feed(conn, wire(V5, Connect(client_id="c", keep_alive=600)), False)
    conn.accept(Session("c"), False)
    [connack] = sent(conn, V5)
    assert connack.properties.server_keep_alive == 10  # type: ignore[union-attr]
    assert conn.keepalive_deadline() == 1.0 + 15  # [MQTT-3.2.2-21], 1.5 x from last bytes


# -- inbound QoS 1 and 2 ------------------------------------------------------------------


@VERSIONS
@CUTS
def test_qos1_is_acknowledged_by_the_application(version: ProtocolVersion, bytewise: bool) -> None:
    conn = connected(version)
    [publish] = feed(
        conn, wire(version, Publish("t", b"x", 1, False, False, 7, Properties())), bytewise
    )
    assert conn.unacked == 1
    assert conn.data_to_send() == b""  # nothing until the application says so
    conn.ack(publish)
    assert conn.data_to_send() == b"\x40\x02\x00\x07"
    assert conn.unacked == 0


@CUTS
def test_qos2_flow_and_duplicates(bytewise: bool) -> None:
    session = Session("c")
    conn = connected(V5, session=session)
    publish = Publish("t", b"x", 2, False, False, 9, Properties())
    [event] = feed(conn, wire(V5, publish), bytewise)
    # A resend while the application still has the first: not handed out again.
    assert feed(conn, wire(V5, publish), bytewise) == []
    conn.ack(event)
    assert sent(conn, V5) == [Pubrec(9)]
    # [MQTT-4.3.3-10] after PUBREC: acknowledged again, never handed out twice.
    assert feed(conn, wire(V5, publish), bytewise) == []
    assert sent(conn, V5) == [Pubrec(9)]
    [release] = feed(conn, wire(V5, Pubrel(9)), bytewise)
    conn.complete(release)
    assert sent(conn, V5) == [Pubcomp(9)]
    assert not session.incoming_qos2
    # An unknown PUBREL: PUBCOMP 0x92 in 5.0.
    [unknown] = feed(conn, wire(V5, Pubrel(10)), bytewise)
    conn.complete(unknown)
    assert sent(conn, V5) == [Pubcomp(10, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)]


@VERSIONS
def test_a_refused_publish(version: ProtocolVersion) -> None:
    conn = connected(version)
    q1, q2 = feed(
        conn,
        wire(
            version,
            Publish("t", b"x", 1, False, False, 1, Properties()),
            Publish("t", b"x", 2, False, False, 2, Properties()),
        ),
        False,
    )
    conn.ack(q1, ReasonCode.QUOTA_EXCEEDED)
    conn.ack(q2, ReasonCode.QUOTA_EXCEEDED)
    if version == V5:
        assert sent(conn, V5) == [
            Puback(1, ReasonCode.QUOTA_EXCEEDED),
            Pubrec(2, ReasonCode.QUOTA_EXCEEDED),
        ]
        assert not conn.session.incoming_qos2  # type: ignore[union-attr]  # [MQTT-4.3.3-9]
    else:
        assert sent(conn, V311) == [Puback(1), Pubrec(2)]  # 3.1.1 cannot say no


def test_more_than_receive_maximum_unacknowledged_is_0x93_in_50() -> None:
    conn = connected(V5, ServerLimits(receive_maximum=2))
    data = wire(V5, *(Publish("t", b"x", 1, False, False, i, Properties()) for i in (1, 2, 3)))
    conn.receive_data(data)
    conn.next_event()
    conn.next_event()
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.reason_code == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED
    conn.fail(info.value)
    assert sent(conn, V5) == [Disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)]


def test_a_311_client_past_the_window_is_read_later_not_failed() -> None:
    conn = connected(V311, ServerLimits(receive_maximum=2))
    events = feed(
        conn,
        wire(V311, *(Publish("t", b"x", 1, False, False, i, Properties()) for i in (1, 2))),
        False,
    )
    assert conn.receive_window_full
    conn.ack(events[0])
    assert not conn.receive_window_full


@CUTS
def test_topic_aliases_from_the_client(bytewise: bool) -> None:
    conn = connected(V5, ServerLimits(topic_alias_maximum=2))
    first = Publish("long/topic", b"1", 0, False, False, None, Properties(topic_alias=1))
    again = Publish("", b"2", 0, False, False, None, Properties(topic_alias=1))
    events = feed(conn, wire(V5, first, again), bytewise)
    assert [(e.topic, e.payload) for e in events] == [("long/topic", b"1"), ("long/topic", b"2")]
    conn.receive_data(wire(V5, Publish("", b"3", 0, False, False, None, Properties(topic_alias=2))))
    with pytest.raises(ProtocolError):
        conn.next_event()  # an alias never set


def test_a_topic_alias_above_our_maximum_is_0x94() -> None:
    conn = connected(V5, ServerLimits(topic_alias_maximum=2))
    conn.receive_data(wire(V5, Publish("t", b"", 0, False, False, None, Properties(topic_alias=3))))
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.reason_code == ReasonCode.TOPIC_ALIAS_INVALID


@pytest.mark.parametrize(
    ("limits", "publish", "code"),
    [
        (ServerLimits(maximum_qos=1), Publish("t", b"", 2, False, False, 1, Properties()), 0x9B),
        (
            ServerLimits(retain_available=False),
            Publish("t", b"", 0, True, False, None, Properties()),
            0x9A,
        ),
    ],
    ids=["qos", "retain"],
)
def test_what_connack_said_we_do_not_support(
    limits: ServerLimits, publish: Publish, code: int
) -> None:
    conn = connected(V5, limits)
    conn.receive_data(wire(V5, publish))
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.reason_code == code


# -- SUBSCRIBE / UNSUBSCRIBE: malformed filters close the connection ----------------------


@VERSIONS
@pytest.mark.parametrize("bad", ["", "ab/+e", "a/#/b", "#x"])
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_a_malformed_topic_filter_is_a_protocol_violation(
    version: ProtocolVersion, bad: str, kind: str
) -> None:
    conn = connected(version)
    packet: Packet = (
        Subscribe(1, ((bad, SubscriptionOptions()),))
        if kind == "subscribe"
        else Unsubscribe(1, (bad,))
    )
    conn.receive_data(wire(version, packet))
    # [MQTT-4.7.3-1], [MQTT-4.7.1-2/3]; 3.1.1 [MQTT-4.8.0-1]: close (5.0: DISCONNECT 0x81).
    with pytest.raises(MalformedPacket) as info:
        conn.next_event()
    conn.fail(info.value)
    assert sent(conn, version) == (
        [Disconnect(ReasonCode.MALFORMED_PACKET)] if version == V5 else []
    )
    assert conn.closed


@VERSIONS
def test_subscribe_is_handed_out_and_answered(version: ProtocolVersion) -> None:
    conn = connected(version)
    [subscribe] = feed(
        conn, wire(version, Subscribe(3, (("a/+", SubscriptionOptions(qos=1)),))), False
    )
    assert isinstance(subscribe, Subscribe)
    conn.suback(3, [ReasonCode.GRANTED_QOS_1])
    conn.unsuback(4, [ReasonCode.SUCCESS])
    assert [type(p) for p in sent(conn, version)] == [Suback, Unsuback]


def test_auth_without_a_method_is_a_protocol_error() -> None:
    conn = connected(V5)
    conn.receive_data(wire(V5, Auth()))
    with pytest.raises(ProtocolError):
        conn.next_event()


def test_disconnect_closes_and_a_raised_session_expiry_is_an_error() -> None:
    conn = connected(V5)
    [event] = feed(conn, wire(V5, Disconnect()), False)
    assert isinstance(event, Disconnect) and conn.closed
    other = connected(V5)
    other.receive_data(wire(V5, Disconnect(properties=Properties(session_expiry_interval=60))))
    with pytest.raises(ProtocolError):
        other.next_event()  # §3.14.2.2.2: 0 in CONNECT, non-zero in DISCONNECT


# -- outbound: the client's Receive Maximum, Maximum Packet Size, aliases ------------------


def _delivery(
    topic: str = "t", payload: bytes = b"x", qos: int = 1
) -> tuple[Delivery, PublishParts]:
    message = Message(topic, payload, qos)
    return Delivery(message, qos, False), PublishParts(message, 0.0)


def test_the_clients_receive_maximum_queues_the_rest_until_acknowledged() -> None:
    session = Session("c")
    conn = connected(V5, session=session, properties=Properties(receive_maximum=1))
    conn.deliver(*_delivery(payload=b"1"))
    conn.deliver(*_delivery(payload=b"2"))
    [first] = sent(conn, V5)
    assert isinstance(first, Publish) and first.payload == b"1"
    assert len(session.queue) == 1
    [ack] = feed(conn, wire(V5, Puback(first.packet_id)), False)  # type: ignore[arg-type]
    assert isinstance(ack, Puback)
    conn.pump(0.0)
    [second] = sent(conn, V5)
    assert isinstance(second, Publish) and second.payload == b"2"
    # An ack of nothing in flight is not handed out.
    assert feed(conn, wire(V5, Puback(999)), False) == []


def test_too_large_for_the_client_is_dropped_and_counted() -> None:
    conn = connected(V5, properties=Properties(maximum_packet_size=50))
    conn.deliver(*_delivery(payload=b"x" * 100))
    conn.send_qos0(_delivery(payload=b"x" * 100, qos=0)[1], False, ())
    assert conn.data_to_send() == b""
    assert conn.counters.dropped_too_large == 2
    assert not conn.session.inflight  # type: ignore[union-attr]


def test_aliases_towards_the_client_up_to_its_maximum() -> None:
    conn = connected(V5, properties=Properties(topic_alias_maximum=1))
    for topic in ("a/long/topic", "a/long/topic", "other"):
        conn.send_qos0(PublishParts(Message(topic, b"x"), 0.0), False, ())
    first, second, third = sent(conn, V5)
    assert first.topic == "a/long/topic" and first.properties.topic_alias == 1  # type: ignore[union-attr]
    assert second.topic == "" and second.properties.topic_alias == 1  # type: ignore[union-attr]
    assert third.topic == "other" and third.properties.topic_alias is None  # type: ignore[union-attr]


def test_a_closed_connection_queues_for_the_next_one() -> None:
    session = Session("c")
    conn = connected(V311, session=session)
    conn.close()
    conn.deliver(*_delivery())
    conn.send_qos0(_delivery(qos=0)[1], False, ())
    assert conn.data_to_send() == b""
    assert len(session.queue) == 1


def test_resend_inflight_on_a_resumed_session() -> None:
    session = Session("c")
    first = connected(V311, session=session)
    first.deliver(*_delivery(payload=b"1"))
    first.deliver(*_delivery(payload=b"2", qos=2))
    [p1, p2] = sent(first, V311)
    feed(first, wire(V311, Pubrec(p2.packet_id)), False)  # type: ignore[union-attr]
    first.close()
    second = connected(V311, session=session)
    second.resend_inflight(0.0)
    resent = sent(second, V311)
    assert resent[0] == Publish("t", b"1", 1, False, True, p1.packet_id, Properties())  # type: ignore[union-attr]
    assert resent[1] == Pubrel(p2.packet_id)  # type: ignore[union-attr]  # released: PUBREL only


def _unacked_on_a_resumed_session(
    version: ProtocolVersion, qos: tuple[int, ...], **connect: Any
) -> tuple[Session, list[Publish]]:
    """A session whose first connection left one PUBLISH per ``qos`` unacknowledged."""
    session = Session("c")
    first = connected(version, session=session, **connect)
    for i, q in enumerate(qos):
        first.deliver(*_delivery(payload=b"%d" % i, qos=q))
    published = sent(first, version)
    assert len(published) == len(qos)
    first.close()
    return session, published  # type: ignore[return-value]


def test_resend_inflight_keeps_to_the_new_receive_maximum() -> None:
    # [MQTT-3.3.4-9 (5.0)] no more unacknowledged PUBLISHes than the Receive Maximum
    # of the new connection: the rest are resent, in order, as acks free the quota.
    session, first = _unacked_on_a_resumed_session(
        V5, (1, 1, 1, 1, 1), properties=Properties(receive_maximum=10)
    )
    second = connected(V5, session=session, properties=Properties(receive_maximum=2))
    second.resend_inflight(0.0)
    resent = sent(second, V5)
    assert [(p.packet_id, p.dup) for p in resent] == [(p.packet_id, True) for p in first[:2]]  # type: ignore[union-attr]
    second.deliver(*_delivery(payload=b"new"))  # queued behind the resends
    second.pump(0.0)
    assert sent(second, V5) == []
    outstanding, later = resent, []
    for _ in range(4):  # each ack frees one slot, for the next in line
        feed(second, wire(V5, Puback(outstanding[0].packet_id)), False)  # type: ignore[union-attr]
        second.pump(0.0)
        [publish] = sent(second, V5)
        outstanding = [*outstanding[1:], publish]
        later.append(publish)
    assert (
        [(p.packet_id, p.dup, p.payload) for p in later]
        == [  # type: ignore[union-attr]
            *((p.packet_id, True, p.payload) for p in first[2:]),
            (later[3].packet_id, False, b"new"),  # type: ignore[union-attr]
        ]
    )
    for p in outstanding:
        feed(second, wire(V5, Puback(p.packet_id)), False)  # type: ignore[union-attr]
    assert not session.inflight and not session.queue


def test_resend_inflight_sends_every_pubrel_and_counts_them() -> None:
    # A released QoS 2 flow holds its place in the quota until its PUBCOMP; its
    # PUBREL is resent whatever the quota [MQTT-4.4.0-1].
    session, first = _unacked_on_a_resumed_session(V5, (2, 2, 1))
    conn = connected(V5, session=session)
    for p in first[:2]:
        feed(conn, wire(V5, Pubrec(p.packet_id)), False)  # type: ignore[arg-type]
    conn.close()
    second = connected(V5, session=session, properties=Properties(receive_maximum=2))
    second.resend_inflight(0.0)
    assert sent(second, V5) == [Pubrel(first[0].packet_id), Pubrel(first[1].packet_id)]  # type: ignore[arg-type]
    feed(second, wire(V5, Pubcomp(first[0].packet_id)), False)  # type: ignore[arg-type]
    second.pump(0.0)
    [publish] = sent(second, V5)
    assert isinstance(publish, Publish)
    assert (publish.packet_id, publish.dup) == (first[2].packet_id, True)


def test_a_message_not_resent_yet_may_be_acknowledged_or_vetoed() -> None:
    session, first = _unacked_on_a_resumed_session(V5, (1, 1, 1, 2))
    second = connected(V5, session=session, properties=Properties(receive_maximum=1))
    second.resend_inflight(0.0, allowed=lambda topic: True)
    [p1] = sent(second, V5)
    # The ack the first connection lost, for one not resent yet: that flow ends.
    feed(second, wire(V5, Puback(first[1].packet_id)), False)  # type: ignore[arg-type]
    # And the PUBREC it lost: released, so PUBREL, never the PUBLISH again.
    feed(second, wire(V5, Pubrec(first[3].packet_id)), False)  # type: ignore[arg-type]
    assert sent(second, V5) == [Pubrel(first[3].packet_id)]  # type: ignore[arg-type]
    feed(second, wire(V5, Pubcomp(first[3].packet_id)), False)  # type: ignore[arg-type]
    second.pump(0.0)
    assert sent(second, V5) == []  # p1 still holds the only slot
    feed(second, wire(V5, Puback(p1.packet_id)), False)  # type: ignore[union-attr]
    second.pump(0.0)
    [p3] = sent(second, V5)
    assert (p3.packet_id, p3.dup) == (first[2].packet_id, True)  # type: ignore[union-attr]
    assert list(session.inflight) == [first[2].packet_id]


def test_resend_inflight_vetoed_when_its_turn_comes() -> None:
    session, _ = _unacked_on_a_resumed_session(V5, (1, 1, 1))
    second = connected(V5, session=session, properties=Properties(receive_maximum=1))
    second.resend_inflight(0.0)
    [p1] = sent(second, V5)
    feed(second, wire(V5, Puback(p1.packet_id)), False)  # type: ignore[union-attr]
    second.pump(0.0, allowed=lambda topic: False)  # the ACL changed meanwhile
    assert sent(second, V5) == []
    assert not session.inflight


def test_resend_inflight_in_311_keeps_to_the_brokers_inflight_limit() -> None:
    session, first = _unacked_on_a_resumed_session(V311, (1, 1, 1))
    second = connected(V311, ServerLimits(max_inflight=2), session=session)
    second.resend_inflight(0.0)
    resent = sent(second, V311)
    assert [p.packet_id for p in resent] == [p.packet_id for p in first[:2]]  # type: ignore[union-attr]
    feed(second, wire(V311, Puback(first[0].packet_id)), False)  # type: ignore[arg-type]
    second.pump(0.0)
    [p3] = sent(second, V311)
    assert (p3.packet_id, p3.dup) == (first[2].packet_id, True)  # type: ignore[union-attr]


# -- the client side ----------------------------------------------------------------------


@VERSIONS
@CUTS
def test_client_connect_publish_subscribe(version: ProtocolVersion, bytewise: bool) -> None:
    client = ClientConnection(version, ClientLimits(receive_maximum=10))
    client.start(Connect(client_id="me", keep_alive=30), now=100.0)
    [connect] = sent_by_client(client, version)
    assert isinstance(connect, Connect) and connect.client_id == "me"
    with pytest.raises(LocalProtocolError):
        client.publish("t", b"x")  # not before CONNACK
    props = Properties(receive_maximum=1) if version == V5 else Properties()
    [connack] = feed(client, wire(version, Connack(False, ReasonCode.SUCCESS, props)), bytewise)
    assert isinstance(connack, Connack) and client.connected
    pid = client.publish("t", b"x", qos=1)
    assert pid is not None
    if version == V5:
        assert client.window_full
        with pytest.raises(LocalProtocolError):
            client.publish("t", b"y", qos=1)
    sub = client.subscribe([("a/#", SubscriptionOptions(qos=1))])
    assert [type(p) for p in sent_by_client(client, version)] == [Publish, Subscribe]
    events = feed(
        client,
        wire(version, Puback(pid), Suback(sub, (ReasonCode.GRANTED_QOS_1,)), Pingresp()),
        bytewise,
    )
    assert [type(e) for e in events] == [Puback, Suback]
    assert not client.window_full
    # An inbound QoS 2 message, acknowledged by the application.
    [incoming] = feed(
        client, wire(version, Publish("a/b", b"m", 2, False, False, 5, Properties())), bytewise
    )
    client.ack(incoming)
    feed(client, wire(version, Pubrel(5)), bytewise)
    assert [type(p) for p in sent_by_client(client, version)] == [Pubrec, Pubcomp]
    assert client.ping_due(100.0) == 100.0 + 22.5


def sent_by_client(client: ClientConnection, version: ProtocolVersion) -> list[Packet]:
    decoder = Decoder(server=True)
    if client.state is not State.CONNECTING or client.connack is not None:
        # After CONNECT the server-side decoder needs a CONNECT first: prime it.
        decoder.receive_data(encode(Connect(client_id="prime"), version))
        decoder.next_packet()
    decoder.receive_data(client.data_to_send())
    packets: list[Packet] = []
    while (packet := decoder.next_packet()) is not NEED_DATA:
        packets.append(packet)  # type: ignore[arg-type]
    return packets


def test_client_refused_by_the_server() -> None:
    client = ClientConnection(V5)
    client.start(Connect(client_id="me"))
    client.data_to_send()
    [connack] = feed(client, wire(V5, Connack(reason_code=ReasonCode.NOT_AUTHORIZED)), False)
    assert connack.reason_code == ReasonCode.NOT_AUTHORIZED
    assert client.closed


def test_client_first_packet_must_be_connack() -> None:
    client = ClientConnection(V311)
    client.start(Connect(client_id="me"))
    client.receive_data(wire(V311, Pingresp()))
    with pytest.raises(MqttError):
        client.next_event()


def test_client_server_disconnect_is_handed_out() -> None:
    client = ClientConnection(V5)
    client.start(Connect(client_id="me"))
    feed(client, wire(V5, Connack()), False)
    [event] = feed(client, wire(V5, Disconnect(ReasonCode.SESSION_TAKEN_OVER)), False)
    assert event == Disconnect(ReasonCode.SESSION_TAKEN_OVER)
    assert client.closed


def test_client_and_server_talk_to_each_other_bytewise() -> None:
    """The two sides against each other, through bytes only."""
    server = ServerConnection()
    client = ClientConnection(V5)
    client.start(Connect(client_id="pair", clean_start=True))
    [connect] = feed(server, client.data_to_send(), True)
    server.accept(Session(connect.client_id), False)
    [connack] = feed(client, server.data_to_send(), True)
    assert isinstance(connack, Connack)
    pid = client.publish("x/y", b"hello", qos=2)
    [publish] = feed(server, client.data_to_send(), True)
    server.ack(publish)
    assert feed(client, server.data_to_send(), True) == []  # PUBREC: answered with PUBREL
    [release] = feed(server, client.data_to_send(), True)
    server.complete(release)  # PUBREL: answered with PUBCOMP
    [done] = feed(client, server.data_to_send(), True)
    assert done == Pubcomp(pid)  # type: ignore[arg-type]
    client.disconnect()
    [bye] = feed(server, client.data_to_send(), True)
    assert isinstance(bye, Disconnect) and server.closed and client.closed
