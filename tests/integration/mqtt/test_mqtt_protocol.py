"""Exact protocol behaviour, checked packet by packet with a raw-socket client."""

from __future__ import annotations

import asyncio
import time

import pytest

from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.mqtt.packets import (
    Connack,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
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
    Will,
)
from tests.helpers import WAIT, wait_until_blocking
from tests.integration.mqtt._clients import V5, V311, BrokerThread, Raw

pytestmark = pytest.mark.integration


def _subscribe(client: Raw, *filters: tuple[str, int], pid: int = 1, **props: object) -> Suback:
    client.send(
        Subscribe(
            pid,
            tuple((f, SubscriptionOptions(qos=q)) for f, q in filters),
            Properties(**props),  # type: ignore[arg-type]
        )
    )
    suback = client.recv()
    assert isinstance(suback, Suback)
    return suback


def test_v311_empty_client_id_with_persistent_session_is_refused(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V311)
    connack = client.connect("", clean_start=False)
    # [MQTT-3.1.3-8 (3.1.1)] CONNACK 0x02 Identifier rejected, then close.
    assert connack.reason_code == ReasonCode.CLIENT_IDENTIFIER_NOT_VALID
    assert client.is_closed()


def test_unsupported_protocol_level_gets_connack_0x01(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V311)
    body = b"\x00\x04MQTT\x03\x02\x00\x3c\x00\x01c"  # level 3 = MQTT 3.1
    client.send_bytes(b"\x10" + bytes((len(body),)) + body)
    assert client.sock.recv(16) == b"\x20\x02\x00\x01"  # [MQTT-3.1.2-2 (3.1.1)]
    assert client.is_closed()


def test_first_packet_must_be_connect(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V311)
    client.send(Pingreq())
    assert client.is_closed()  # [MQTT-3.1.0-1]


def test_malformed_packet_closes_only_that_connection(broker: BrokerThread) -> None:
    good = Raw(broker.port(), V5)
    good.connect("good")
    _subscribe(good, ("t", 0))
    bad = Raw(broker.port(), V5)
    bad.connect("bad")
    bad.send_bytes(b"\x82\x02\x00\x01")  # SUBSCRIBE without a filter
    assert bad.recv() == Disconnect(ReasonCode.MALFORMED_PACKET) or bad.is_closed()
    assert bad.is_closed()
    other = Raw(broker.port(), V311)
    other.connect("pub", clean_start=True)
    other.send_bytes(b"\x36\x05\x00\x01t\x00\x01")  # QoS 3: malformed [MQTT-3.3.1-4]
    assert other.is_closed()
    pub = Raw(broker.port(), V5)
    pub.connect("pub2")
    pub.send(Publish("t", b"still here"))
    assert good.recv() == Publish("t", b"still here")


def test_second_connect_is_a_protocol_error(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("twice")
    client.send_bytes(b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x00")
    assert client.is_closed()  # [MQTT-3.1.0-2]


@pytest.mark.parametrize("version", [V311, V5])
def test_redelivery_on_reconnect_with_dup_and_same_ids(broker: BrokerThread, version) -> None:  # type: ignore[no-untyped-def]
    props = Properties(session_expiry_interval=300) if version == V5 else Properties()
    sub = Raw(broker.port(), version)
    sub.connect("dev", clean_start=False, properties=props)
    _subscribe(sub, ("q/#", 2))
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    pub.send(Publish("q/1", b"one", 1, packet_id=1))
    pub.send(Publish("q/2", b"two", 2, packet_id=2))
    first = sub.recv()
    second = sub.recv()
    assert isinstance(first, Publish) and isinstance(second, Publish)
    assert (first.payload, first.qos, first.dup) == (b"one", 1, False)
    # Acknowledge only the PUBREC of the QoS 2 message, then drop the connection.
    sub.send(Pubrec(second.packet_id))  # type: ignore[arg-type]
    assert sub.recv() == Pubrel(second.packet_id)  # type: ignore[arg-type]
    sub.close()
    again = Raw(broker.port(), version)
    connack = again.connect("dev", clean_start=False, properties=props)
    assert connack.session_present
    # [MQTT-4.4.0-1] unacknowledged PUBLISH (DUP=1, same id) and PUBREL, in order.
    redelivered = again.recv()
    assert isinstance(redelivered, Publish)
    assert (redelivered.payload, redelivered.dup, redelivered.packet_id) == (
        b"one",
        True,
        first.packet_id,
    )
    assert again.recv() == Pubrel(second.packet_id)  # type: ignore[arg-type]
    again.send(Puback(first.packet_id))  # type: ignore[arg-type]
    again.send(Pubcomp(second.packet_id))  # type: ignore[arg-type]
    assert again.recv_all() == []
    wait_until_blocking(
        lambda: broker.call(lambda: not broker.broker.sessions["dev"].inflight),  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("version", [V311, V5])
def test_qos2_duplicate_is_acknowledged_not_redelivered(broker: BrokerThread, version) -> None:  # type: ignore[no-untyped-def]
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    _subscribe(sub, ("x", 0))
    pub = Raw(broker.port(), version)
    pub.connect("pub")
    pub.send(Publish("x", b"once", 2, packet_id=7))
    assert pub.recv() == Pubrec(7)
    pub.send(Publish("x", b"once", 2, dup=True, packet_id=7))
    assert pub.recv() == Pubrec(7)  # [MQTT-4.3.3-2 (3.1.1) / 4.3.3-10 (5.0)]
    pub.send(Pubrel(7))
    assert pub.recv() == Pubcomp(7)
    assert [p for p in sub.recv_all() if isinstance(p, Publish)] == [Publish("x", b"once")]
    # After PUBCOMP the id starts a new message.
    pub.send(Publish("x", b"again", 2, packet_id=7))
    assert pub.recv() == Pubrec(7)
    assert sub.recv() == Publish("x", b"again")


def test_client_receive_maximum_is_respected(broker: BrokerThread) -> None:
    sub = Raw(broker.port(), V5)
    sub.connect("slow", properties=Properties(receive_maximum=2))
    _subscribe(sub, ("r", 1))
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    for i in range(5):
        pub.send(Publish("r", bytes([i]), 1, packet_id=i + 1))
    first = sub.recv_all()
    # [MQTT-3.3.4-9 (5.0)] never more than Receive Maximum unacknowledged.
    assert [p.payload for p in first] == [b"\x00", b"\x01"]  # type: ignore[union-attr]
    sub.send(Puback(first[0].packet_id))  # type: ignore[union-attr,arg-type]
    nxt = sub.recv_all()
    assert [p.payload for p in nxt] == [b"\x02"]  # type: ignore[union-attr]


def test_client_maximum_packet_size(broker: BrokerThread) -> None:
    sub = Raw(broker.port(), V5)
    sub.connect("small", properties=Properties(maximum_packet_size=64))
    _subscribe(sub, ("big", 1))
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    pub.send(Publish("big", b"x" * 200, 1, packet_id=1))
    pub.send(Publish("big", b"ok", 1, packet_id=2))
    # [MQTT-3.1.2-24/25 (5.0)] the oversize one is discarded as if delivered.
    got = sub.recv_all()
    assert [p.payload for p in got] == [b"ok"]  # type: ignore[union-attr]
    assert broker.broker.stats.dropped_too_large == 1  # type: ignore[union-attr]


def test_server_maximum_packet_size(make_broker) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), max_packet_size=128))
    client = Raw(broker.port(), V5)
    assert client.connect("c").properties.maximum_packet_size == 128
    client.send(Publish("t", b"x" * 200))
    assert client.recv() == Disconnect(ReasonCode.PACKET_TOO_LARGE)
    assert client.is_closed()


def test_topic_aliases_both_ways(broker: BrokerThread) -> None:
    sub = Raw(broker.port(), V5)
    sub.connect("sub", properties=Properties(topic_alias_maximum=5))
    _subscribe(sub, ("long/topic/name", 0))
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    pub.send(Publish("long/topic/name", b"1", properties=Properties(topic_alias=3)))
    pub.send(Publish("", b"2", properties=Properties(topic_alias=3)))
    first, second = sub.recv(), sub.recv()
    assert isinstance(first, Publish) and isinstance(second, Publish)
    # Outbound: the first carries topic and alias, the next only the alias.
    assert (first.topic, first.properties.topic_alias) == ("long/topic/name", 1)
    assert (second.topic, second.properties.topic_alias, second.payload) == ("", 1, b"2")
    # An alias above our Topic Alias Maximum: DISCONNECT 0x94.
    pub.send(Publish("t", b"3", properties=Properties(topic_alias=1000)))
    assert pub.recv() == Disconnect(ReasonCode.TOPIC_ALIAS_INVALID)


def test_no_topic_alias_for_clients_that_do_not_allow_them(broker: BrokerThread) -> None:
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    _subscribe(sub, ("t", 0))
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    pub.send(Publish("t", b"1"))
    pub.send(Publish("t", b"2"))
    for packet in (sub.recv(), sub.recv()):
        assert packet.properties.topic_alias is None  # type: ignore[union-attr]


@pytest.mark.parametrize("version", [V311, V5])
def test_session_takeover(broker: BrokerThread, version) -> None:  # type: ignore[no-untyped-def]
    # MQTT 5: a session outlives its connection only with a Session Expiry (3.1.2.11.2).
    props = Properties(session_expiry_interval=60) if version == V5 else Properties()
    old = Raw(broker.port(), version)
    old.connect("same", clean_start=False, properties=props)
    new = Raw(broker.port(), version)
    assert new.connect("same", clean_start=False, properties=props).session_present
    if version == V5:
        # [MQTT-3.1.4-3 (5.0)] DISCONNECT 0x8E to the existing connection.
        assert old.recv() == Disconnect(ReasonCode.SESSION_TAKEN_OVER)
    assert old.is_closed()  # [MQTT-3.1.4-2 (3.1.1)]
    new.send(Pingreq())
    assert new.recv() == Pingresp()


@pytest.mark.parametrize("version", [V311, V5])
def test_a_takeover_never_resumes_a_session_that_ended_with_its_connection(
    broker: BrokerThread, version: int
) -> None:
    """[MQTT-3.1.2-6 (3.1.1)] a CleanSession=1 session's state is never reused; MQTT 5:
    Session Expiry 0 ends the session with its connection (here: the one taken over)."""
    old = Raw(broker.port(), version)
    old.connect("same", clean_start=True)
    _subscribe(old, ("t", 1))
    props = Properties(session_expiry_interval=60) if version == V5 else Properties()
    new = Raw(broker.port(), version)
    assert not new.connect("same", clean_start=False, properties=props).session_present
    _subscribe(new, ("sync", 0))
    publisher = Raw(broker.port(), V5)
    publisher.connect("publisher")
    publisher.send(Publish("t", b"not yours", qos=0))
    publisher.send(Publish("sync", b"now", qos=0))
    assert new.recv() == Publish("sync", b"now")  # never the old session's "t"


@pytest.mark.parametrize("takeover", [False, True], ids=["reconnect", "takeover"])
def test_a_delayed_will_goes_when_a_clean_start_ends_its_session(
    broker: BrokerThread, takeover: bool
) -> None:
    """[MQTT-3.1.2-8 (5.0)] the will goes when its delay passes or the session ends,
    whichever is first; a Clean Start ends it (only a connection resuming the session
    stops the will [MQTT-3.1.3-9])."""
    watcher = Raw(broker.port(), V5)
    watcher.connect("watcher")
    _subscribe(watcher, ("w/#", 0))
    will = Will("w/a", b"gone", 0, False, Properties(will_delay_interval=300))
    first = Raw(broker.port(), V5)
    first.connect(
        "a", clean_start=True, will=will, properties=Properties(session_expiry_interval=600)
    )
    if not takeover:
        first.close()  # the network drops: the will waits for its delay
    second = Raw(broker.port(), V5)
    second.connect("a", clean_start=True)
    assert watcher.recv(timeout=WAIT) == Publish("w/a", b"gone")


@pytest.mark.parametrize("version", [V311, V5])
def test_keepalive_timeout_publishes_will(broker: BrokerThread, version) -> None:  # type: ignore[no-untyped-def]
    watcher = Raw(broker.port(), V5)
    watcher.connect("watcher")
    _subscribe(watcher, ("lwt/#", 0))
    client = Raw(broker.port(), version)
    client.connect("sleepy", keep_alive=1, will=Will("lwt/sleepy", b"dead"))
    started = time.monotonic()
    message = watcher.recv(timeout=WAIT)
    elapsed = time.monotonic() - started
    # [MQTT-3.1.2-24 (3.1.1) / 3.1.2-22 (5.0)] closed after 1.5 x keepalive, then the will;
    # not before (how soon after is the sans-IO connection's, tested with its clock).
    assert message == Publish("lwt/sleepy", b"dead")
    assert elapsed >= 1.3
    assert client.is_closed()


def test_pings_keep_the_connection_alive(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V311)
    client.connect("pinger", keep_alive=1)
    for _ in range(4):
        time.sleep(0.5)
        client.send(Pingreq())
        assert client.recv() == Pingresp()  # [MQTT-3.12.4-1]


def test_server_keep_alive_is_imposed(make_broker) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), server_keep_alive=1))
    client = Raw(broker.port(), V5)
    connack = client.connect("c", keep_alive=600)
    assert connack.properties.server_keep_alive == 1  # [MQTT-3.2.2-21]
    assert client.recv(3) == Disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)


@pytest.mark.parametrize("version", [V311, V5])
@pytest.mark.parametrize("bad", ["bad/#/x", "a+", "ab/+e", ""])
@pytest.mark.parametrize("unsubscribe", [False, True], ids=["subscribe", "unsubscribe"])
def test_a_malformed_filter_closes_the_connection(  # type: ignore[no-untyped-def]
    broker: BrokerThread, version, bad: str, unsubscribe: bool
) -> None:
    """[MQTT-4.7.3-1], [MQTT-4.7.1-2/3]: a malformed filter is a protocol violation.

    3.1.1 closes the connection [MQTT-4.8.0-1]; 5.0 sends DISCONNECT 0x81 first
    (as Mosquitto does). SUBACK 0x8F is for a well-formed filter not allowed.
    """
    client = Raw(broker.port(), version)
    client.connect("c")
    if unsubscribe:
        client.send(Unsubscribe(1, ("ok/#", bad)))
    else:
        client.send(
            Subscribe(1, (("ok/#", SubscriptionOptions(qos=1)), (bad, SubscriptionOptions())))
        )
    if version == V5:
        assert client.recv() == Disconnect(ReasonCode.MALFORMED_PACKET)
    assert client.is_closed()
    # Nothing of that packet took effect.
    assert broker.call(lambda: list(broker.broker.router.filters())) == []  # type: ignore[union-attr]


def test_unsubscribe_codes(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("c")
    _subscribe(client, ("a", 0))
    client.send(Unsubscribe(2, ("a", "never")))
    assert client.recv() == Unsuback(2, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED))
    legacy = Raw(broker.port(), V311)
    legacy.connect("l")
    legacy.send(Unsubscribe(3, ("nothing",)))
    assert legacy.recv() == Unsuback(3)  # [MQTT-3.10.4-5 (3.1.1)] even if nothing matched


def test_no_local_on_shared_subscription_is_a_protocol_error(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("c")
    # The codec refuses to build this packet, so it is written by hand: options 0x05.
    body = b"\x00\x01\x00\x00\x0a$share/g/t\x05"
    client.send_bytes(b"\x82" + bytes((len(body),)) + body)
    assert client.recv() == Disconnect(ReasonCode.PROTOCOL_ERROR)  # [MQTT-3.8.3-4 (5.0)]


def test_dollar_topics_not_matched_by_leading_wildcards(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("c")
    _subscribe(client, ("#", 0), ("+/status", 0), pid=1)
    _subscribe(client, ("$SYS/#", 0), pid=2)
    pub = Raw(broker.port(), V5)
    pub.connect("p")
    pub.send(Publish("$SYS/status", b"s"))
    # [MQTT-4.7.2-1] only the $SYS/# subscription matches.
    assert client.recv_all() == [Publish("$SYS/status", b"s")]


def test_session_expiry_changed_on_disconnect(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("e", properties=Properties(session_expiry_interval=300))
    client.send(Disconnect(properties=Properties(session_expiry_interval=0)))
    assert client.is_closed()
    wait_until_blocking(
        lambda: broker.call(lambda: "e" not in broker.broker.sessions),  # type: ignore[union-attr]
    )
    zero = Raw(broker.port(), V5)
    zero.connect("z")
    zero.send(Disconnect(properties=Properties(session_expiry_interval=30)))
    # 0 in CONNECT then non-zero in DISCONNECT: protocol error (§3.14.2.2.2).
    assert zero.recv() == Disconnect(ReasonCode.PROTOCOL_ERROR)


def test_session_expires_after_interval(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    client.connect("short", properties=Properties(session_expiry_interval=1))
    _subscribe(client, ("t", 1))
    client.close()
    wait_until_blocking(
        lambda: broker.call(lambda: "short" in broker.broker.sessions),  # type: ignore[union-attr]
    )
    wait_until_blocking(
        lambda: broker.call(lambda: "short" not in broker.broker.sessions),  # type: ignore[union-attr]
    )
    again = Raw(broker.port(), V5)
    assert not again.connect("short", clean_start=False).session_present


def test_inbound_receive_maximum_exceeded(make_broker) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), receive_maximum=2))
    client = Raw(broker.port(), V5)
    assert client.connect("c").properties.receive_maximum == 2
    for pid in (1, 2, 3):
        client.send(Publish("t", b"x", 2, packet_id=pid))
    assert client.recv() == Pubrec(1)
    assert client.recv() == Pubrec(2)
    assert client.recv() == Disconnect(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED)


def test_enhanced_auth_is_refused(broker: BrokerThread) -> None:
    client = Raw(broker.port(), V5)
    connack = client.connect("c", properties=Properties(authentication_method="SCRAM-SHA-1"))
    assert connack == Connack(reason_code=ReasonCode.BAD_AUTHENTICATION_METHOD)
    assert client.is_closed()


@pytest.mark.parametrize("version", [V311, V5])
def test_connection_limit(make_broker, version) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), max_connections=2))
    first, second = Raw(broker.port(), version), Raw(broker.port(), version)
    first.connect("a")
    second.connect("b")
    third = Raw(broker.port(), version)
    # 5.0: 0x89 Server busy; 3.1.1: return code 0x03 Server unavailable.
    expected = ReasonCode.SERVER_BUSY if version == V5 else ReasonCode.SERVER_UNAVAILABLE
    assert third.connect("c").reason_code == expected
    assert third.is_closed()
    # Reconnecting an existing client id is a takeover, not a new connection.
    again = Raw(broker.port(), version)
    assert again.connect("a").reason_code == ReasonCode.SUCCESS


def test_subscription_limit(make_broker) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), max_subscriptions=2))
    client = Raw(broker.port(), V5)
    client.connect("c")
    suback = _subscribe(client, ("a", 0), ("b", 1), ("c", 0), ("a", 2))
    # The third filter exceeds the quota (0x97); replacing an existing one does not.
    assert list(suback.reason_codes) == [0, 1, ReasonCode.QUOTA_EXCEEDED, 2]


def test_autosave_persists_without_shutdown(make_broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from headwater.mqtt.stores import SqliteSessionStore

    config = BrokerConfig(listeners=(Listener(port=0),), data_dir=tmp_path, autosave_interval=0.1)
    broker = make_broker(config)
    client = Raw(broker.port(), V5)
    client.connect("saver", properties=Properties(session_expiry_interval=60))
    _subscribe(client, ("s/#", 1))
    client.send(Publish("s/r", b"kept", 1, retain=True, packet_id=3))

    def saved() -> bool:
        store = SqliteSessionStore(tmp_path)
        try:
            sessions = store.load_sessions()
            retained = store.load_retained()
        finally:
            asyncio.run(store.close())
        return [s.client_id for s in sessions] == ["saver"] and [m.topic for m in retained] == [
            "s/r"
        ]

    wait_until_blocking(saved)


def test_without_a_store_ended_sessions_and_cleared_topics_leave_nothing_behind(
    broker: BrokerThread,
) -> None:
    """Nothing persists them, so nothing records them (one id per client ever seen)."""
    for i in range(50):
        client = Raw(broker.port(), V311)
        client.connect(f"client-{i}", clean_start=True)
        client.send(Publish(f"r/{i}", b"x", retain=True))
        client.send(Publish(f"r/{i}", b"", retain=True))
        client.send(Disconnect())
        assert client.is_closed()
    mqtt = broker.broker
    wait_until_blocking(
        lambda: broker.call(lambda: not mqtt._sessions and not len(mqtt.retained)),
        what="every session ended and every retained message cleared",
    )
    assert broker.call(lambda: (len(mqtt._deleted_sessions), len(mqtt.retained.deleted))) == (0, 0)


@pytest.mark.parametrize(
    ("settings", "will", "code"),
    [
        ({"maximum_qos": 1}, Will("w/q", b"x", 2), ReasonCode.QOS_NOT_SUPPORTED),
        ({"retain_available": False}, Will("w/r", b"x", 0, True), ReasonCode.RETAIN_NOT_SUPPORTED),
    ],
    ids=["will-qos", "will-retain"],
)
def test_a_will_the_server_cannot_honour_refuses_the_connection(
    make_broker,  # type: ignore[no-untyped-def]
    settings: dict[str, object],
    will: Will,
    code: ReasonCode,
) -> None:
    """[MQTT-3.2.2-12/13 (5.0)]: refused with 0x9B / 0x9A, not quietly downgraded."""
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), **settings))
    client = Raw(broker.port(), V5)
    assert client.connect("c", will=will).reason_code == code
    assert client.is_closed()
