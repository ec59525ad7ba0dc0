"""The broker driven by paho-mqtt 2.x, MQTT 3.1.1 and 5.0."""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_until_blocking
from tests.integration.mqtt._clients import (
    BrokerThread,
    Paho,
    connect_properties,
    publish_properties,
    subscribe_properties,
    will_properties,
)

pytestmark = pytest.mark.integration

VERSIONS = [pytest.param(False, id="v3.1.1"), pytest.param(True, id="v5")]


@pytest.mark.parametrize("v5", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_each_qos(broker: BrokerThread, v5: bool, qos: int) -> None:
    sub = Paho(broker.port(), "sub", v5=v5)
    assert sub.connack()[0] == 0
    assert sub.subscribe("sensors/+/temp", qos) == [qos]
    pub = Paho(broker.port(), "pub", v5=v5)
    for i in range(20):
        pub.publish(f"sensors/{i}/temp", f"{i}", qos)
    got = [sub.get() for _ in range(20)]
    # [MQTT-4.6.0-6] per-topic order is the publish order; here all in order.
    assert [m.payload for m in got] == [str(i).encode() for i in range(20)]
    assert {m.qos for m in got} == {qos}
    assert not any(m.retain for m in got)
    sub.close()
    pub.close()


@pytest.mark.parametrize("v5", VERSIONS)
def test_granted_qos_caps_delivery(broker: BrokerThread, v5: bool) -> None:
    sub = Paho(broker.port(), "sub", v5=v5)
    sub.subscribe("t", 1)
    pub = Paho(broker.port(), "pub", v5=v5)
    pub.publish("t", "x", 2)
    assert sub.get().qos == 1  # min(published, granted)
    pub.publish("t", "y", 0)
    assert sub.get().qos == 0


@pytest.mark.parametrize("v5", VERSIONS)
def test_retained_messages(broker: BrokerThread, v5: bool) -> None:
    pub = Paho(broker.port(), "pub", v5=v5)
    pub.publish("home/lamp", "on", 1, retain=True)
    pub.publish("home/door", "closed", 0, retain=True)
    sub = Paho(broker.port(), "sub", v5=v5)
    sub.subscribe("home/#", 1)
    got = {m.topic: m for m in (sub.get(), sub.get())}
    # [MQTT-3.3.1-8 (3.1.1)] RETAIN=1 for messages sent because of a new subscription.
    assert got["home/lamp"].retain and got["home/lamp"].payload == b"on"
    assert got["home/door"].retain and got["home/door"].qos == 0
    # Live forwarding clears the flag [MQTT-3.3.1-9 (3.1.1)].
    pub.publish("home/lamp", "off", 1, retain=True)
    live = sub.get()
    assert (live.payload, live.retain) == (b"off", False)
    # An empty retained payload deletes [MQTT-3.3.1-10/11 (3.1.1)].
    pub.publish("home/door", "", 1, retain=True)
    assert sub.get().payload == b""
    late = Paho(broker.port(), "late", v5=v5)
    late.subscribe("home/#", 1)
    assert late.get().payload == b"off"
    assert late.nothing()
    # Re-subscribing re-sends retained messages [MQTT-3.8.4-3 (3.1.1)].
    late.subscribe("home/#", 1)
    assert late.get().retain


@pytest.mark.parametrize("v5", VERSIONS)
def test_persistent_session_queues_offline_messages(broker: BrokerThread, v5: bool) -> None:
    props = connect_properties(SessionExpiryInterval=300) if v5 else None
    sub = Paho(broker.port(), "device-7", v5=v5, clean=False, properties=props)
    assert sub.connack()[1] is False
    sub.subscribe("cmd/device-7", 1)
    sub.close()
    pub = Paho(broker.port(), "pub", v5=v5)
    for i in range(5):
        pub.publish("cmd/device-7", f"c{i}", 1)
    pub.publish("cmd/device-7", "qos0 is not queued", 0)
    again = Paho(broker.port(), "device-7", v5=v5, clean=False, properties=props)
    rc, present, _ = again.connack()
    assert (rc, present) == (0, True)  # [MQTT-3.2.2-2 (3.1.1) / 3.2.2-3 (5.0)]
    assert [again.get().payload for _ in range(5)] == [f"c{i}".encode() for i in range(5)]
    assert again.nothing()
    again.close()
    # A clean start discards the session and reports Session Present 0.
    fresh = Paho(broker.port(), "device-7", v5=v5, clean=True)
    assert fresh.connack()[1] is False
    fresh.close()
    wait_until_blocking(
        lambda: broker.call(lambda: "device-7" not in broker.broker.sessions),  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("v5", VERSIONS)
def test_will_published_on_abrupt_close_not_on_disconnect(broker: BrokerThread, v5: bool) -> None:
    watcher = Paho(broker.port(), "watcher", v5=v5)
    watcher.subscribe("status/#", 1)
    polite = Paho(broker.port(), "polite", v5=v5, will=("status/polite", b"gone", 1, False))
    polite.connack()
    polite.close()  # DISCONNECT: the will is discarded [MQTT-3.1.2-10]
    rude = Paho(broker.port(), "rude", v5=v5, will=("status/rude", b"gone", 1, False))
    rude.connack()
    rude.client.socket().close()  # network failure: the will is published [MQTT-3.1.2-8]
    message = watcher.get()
    assert (message.topic, message.payload) == ("status/rude", b"gone")
    assert watcher.nothing()
    rude.client.loop_stop()


def test_v5_will_delay_and_reconnect_cancels_it(broker: BrokerThread) -> None:
    watcher = Paho(broker.port(), "watcher")
    watcher.subscribe("status/#", 1)
    will_props = will_properties(WillDelayInterval=1)
    session = connect_properties(SessionExpiryInterval=60)
    client = Paho(
        broker.port(),
        "dev",
        will=("status/dev", b"offline", 1, False),
        will_properties=will_props,
        properties=session,
    )
    client.connack()
    client.client.socket().close()
    client.client.loop_stop()
    # Reconnected within the delay: no will [MQTT-3.1.3-9 (5.0)].
    again = Paho(broker.port(), "dev", clean=False, properties=session)
    again.connack()
    assert watcher.nothing(1.5)
    again.client.socket().close()
    again.client.loop_stop()
    # No will in the second connection: still nothing.  A third one with a will
    # that is not resumed in time is published after the delay.
    third = Paho(
        broker.port(),
        "dev",
        will=("status/dev", b"offline", 1, False),
        will_properties=will_props,
        properties=session,
        clean=False,
    )
    third.connack()
    started = time.monotonic()
    third.client.socket().close()
    third.client.loop_stop()
    assert watcher.get(5).payload == b"offline"
    assert time.monotonic() - started >= 0.9


def test_v5_disconnect_with_will_message_publishes_will(broker: BrokerThread) -> None:
    watcher = Paho(broker.port(), "watcher")
    watcher.subscribe("status/#", 0)
    client = Paho(broker.port(), "dev", will=("status/dev", b"bye", 0, False))
    client.connack()
    client.client.disconnect(reasoncode=_reason(0x04))
    assert watcher.get().payload == b"bye"


def _reason(code: int) -> object:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    return ReasonCode(PacketTypes.DISCONNECT, identifier=code)


def test_v5_properties_forwarded_in_order(broker: BrokerThread) -> None:
    sub = Paho(broker.port(), "sub")
    sub.subscribe("req/+", 1)
    pub = Paho(broker.port(), "pub")
    props = publish_properties(
        UserProperty=[("b", "2"), ("a", "1"), ("b", "3")],
        ResponseTopic="resp/pub",
        CorrelationData=b"\x01\x02",
        ContentType="application/json",
        PayloadFormatIndicator=1,
        MessageExpiryInterval=60,
    )
    pub.publish("req/x", b'{"v": 1}', 1, properties=props)
    got = sub.get().properties
    # [MQTT-3.3.2-17/18] user properties unaltered and in order.
    assert got.UserProperty == [("b", "2"), ("a", "1"), ("b", "3")]
    assert got.ResponseTopic == "resp/pub"  # [MQTT-3.3.2-15]
    assert got.CorrelationData == b"\x01\x02"  # [MQTT-3.3.2-16]
    assert got.ContentType == "application/json"  # [MQTT-3.3.2-20]
    assert got.PayloadFormatIndicator == 1  # [MQTT-3.3.2-4]
    assert 58 <= got.MessageExpiryInterval <= 60


def test_v5_message_expiry_remaining_time_and_drop(broker: BrokerThread) -> None:
    session = connect_properties(SessionExpiryInterval=60)
    sub = Paho(broker.port(), "sleepy", properties=session, clean=False)
    sub.subscribe("t/#", 1)
    sub.close()
    pub = Paho(broker.port(), "pub")
    pub.publish("t/short", "gone", 1, properties=publish_properties(MessageExpiryInterval=1))
    pub.publish("t/long", "kept", 1, properties=publish_properties(MessageExpiryInterval=30))
    time.sleep(2.1)
    again = Paho(broker.port(), "sleepy", properties=session, clean=False)
    message = again.get()
    # [MQTT-3.3.2-5] the expired copy is not delivered; [MQTT-3.3.2-6] the
    # forwarded interval is what is left.
    assert message.payload == b"kept"
    assert message.properties.MessageExpiryInterval <= 28
    assert again.nothing()


def test_v5_subscription_identifiers_and_overlap(broker: BrokerThread) -> None:
    sub = Paho(broker.port(), "sub")
    sub.subscribe("a/+", 0, properties=_sub_id(11))
    sub.subscribe("a/#", 2, properties=_sub_id(22))
    pub = Paho(broker.port(), "pub")
    pub.publish("a/b", "x", 2)
    message = sub.get()
    # One copy at the maximum QoS [MQTT-3.3.4-2 (5.0)] with both identifiers [MQTT-3.3.4-3/4].
    assert message.qos == 2
    assert sorted(message.properties.SubscriptionIdentifier) == [11, 22]
    assert sub.nothing()


def test_v311_overlapping_subscriptions_max_qos(broker: BrokerThread) -> None:
    sub = Paho(broker.port(), "sub", v5=False)
    sub.subscribe("a/+", 0)
    sub.subscribe("a/#", 2)
    pub = Paho(broker.port(), "pub", v5=False)
    pub.publish("a/b", "x", 2)
    assert sub.get().qos == 2  # [MQTT-3.3.5-1 (3.1.1)]
    assert sub.nothing()


def _sub_id(n: int) -> object:
    return subscribe_properties(SubscriptionIdentifier=n)


def test_v5_no_local_and_retain_as_published(broker: BrokerThread) -> None:
    client = Paho(broker.port(), "self")
    client.subscribe("echo", 1, noLocal=True)
    client.subscribe("rap", 1, retainAsPublished=True)
    other = Paho(broker.port(), "other")
    client.publish("echo", "mine", 1)
    assert client.nothing()  # [MQTT-3.8.3-3 (5.0)]
    other.publish("echo", "theirs", 1)
    assert client.get().payload == b"theirs"
    other.publish("rap", "r", 1, retain=True)
    assert client.get().retain  # [MQTT-3.3.1-13 (5.0)]


def test_v5_retain_handling(broker: BrokerThread) -> None:
    pub = Paho(broker.port(), "pub")
    pub.publish("cfg", "v1", 1, retain=True)
    sub = Paho(broker.port(), "sub")
    sub.subscribe("cfg", 1, retainHandling=2)
    assert sub.nothing()  # [MQTT-3.3.1-11]
    sub.subscribe("cfg", 1, retainHandling=1)
    assert sub.nothing()  # the subscription existed [MQTT-3.3.1-10]
    other = Paho(broker.port(), "other")
    other.subscribe("cfg", 1, retainHandling=1)
    assert other.get().payload == b"v1"
    other.subscribe("cfg", 1, retainHandling=0)
    assert other.get().payload == b"v1"  # [MQTT-3.3.1-9]


@pytest.mark.parametrize("v5", VERSIONS)
def test_shared_subscription_round_robin(broker: BrokerThread, v5: bool) -> None:
    members = [Paho(broker.port(), f"m{i}", v5=v5) for i in range(3)]
    for member in members:
        member.subscribe("$share/workers/jobs/#", 1)
    plain = Paho(broker.port(), "plain", v5=v5)
    plain.subscribe("jobs/#", 1)
    pub = Paho(broker.port(), "pub", v5=v5)
    for i in range(9):
        pub.publish(f"jobs/{i}", str(i), 1)
    assert len([plain.get() for _ in range(9)]) == 9
    counts = []
    for member in members:
        n = 0
        while True:
            try:
                member.get(0.5)
                n += 1
            except Exception:
                break
        counts.append(n)
    assert counts == [3, 3, 3]  # each message to exactly one member


def test_v5_assigned_client_identifier_and_server_limits(broker: BrokerThread) -> None:
    client = Paho(broker.port(), "")
    rc, present, props = client.connack()
    assert rc == 0 and not present
    assigned = props.AssignedClientIdentifier  # [MQTT-3.2.2-16]
    other = Paho(broker.port(), "")
    assert other.connack()[2].AssignedClientIdentifier != assigned  # unique
    assert props.ReceiveMaximum >= 1
    assert props.TopicAliasMaximum >= 1
    assert props.MaximumPacketSize == broker.config.max_packet_size


def test_v5_request_response_information(broker: BrokerThread) -> None:
    client = Paho(
        broker.port(), "asker", properties=connect_properties(RequestResponseInformation=1)
    )
    assert client.connack()[2].ResponseInformation == "response/asker"


def test_v311_empty_client_ids_are_unique(broker: BrokerThread) -> None:
    a = Paho(broker.port(), "", v5=False)
    b = Paho(broker.port(), "", v5=False)
    assert a.connack()[0] == 0 and b.connack()[0] == 0
    # Both stay connected: each got its own unique id [MQTT-3.1.3-6].
    wait_until_blocking(
        lambda: len(broker.call(lambda: broker.broker.connected_clients)) == 2,  # type: ignore[union-attr]
    )


def test_websocket_listener(make_broker) -> None:  # type: ignore[no-untyped-def]
    from headwater.mqtt.broker import BrokerConfig, Listener

    ws = make_broker(BrokerConfig(listeners=(Listener(port=0), Listener(port=0, websocket=True))))
    sub = Paho(ws.port(1), "ws-sub", transport="websockets")
    assert sub.connack()[0] == 0
    sub.subscribe("w/#", 1)
    tcp = Paho(ws.port(0), "tcp-pub")
    tcp.publish("w/1", "over tcp", 1)
    assert sub.get().payload == b"over tcp"
    sub.publish("w/2", "over ws", 1)
    assert sub.get().payload == b"over ws"
