"""Hostile clients: another user's client id, anonymous access, partial packets, bad payloads.

Each test reproduces what a probe did to the broker and fails on the code
before the fix.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Pubrec,
    ReasonCode,
    Subscribe,
    SubscriptionOptions,
    Will,
)
from headwater.mqtt.session import Delivery, Message
from tests.helpers import wait_until_blocking
from tests.integration.mqtt._clients import V5, V311, BrokerThread, Raw
from tests.integration.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.integration

ACL = "user alice\ntopic readwrite alice/#\nuser bob\ntopic readwrite bob/#\n"


def _users() -> PasswordFile:
    passwords = PasswordFile()
    passwords.add_user("alice", "a-pass")
    passwords.add_user("bob", "b-pass")
    return passwords


def _secured(make_broker: MakeBroker, acl: str = ACL) -> BrokerThread:
    return make_broker(
        BrokerConfig(listeners=(Listener(port=0),), passwords=_users(), acl=Acl.parse(acl))
    )


def _login(broker: BrokerThread, version, user: str, client_id: str, clean: bool) -> Raw:  # type: ignore[no-untyped-def]
    raw = Raw(broker.port(), version)
    props = Properties(session_expiry_interval=3600) if version == V5 and not clean else None
    extra = {"properties": props} if props is not None else {}
    connack = raw.connect(
        client_id,
        clean_start=clean,
        username=user,
        password=f"{user[0]}-pass".encode(),
        **extra,
    )
    assert connack.reason_code == ReasonCode.SUCCESS, connack
    raw.last_connack = connack  # type: ignore[attr-defined]
    return raw


def _subscribe(raw: Raw, topic_filter: str, qos: int = 1) -> None:
    raw.send(Subscribe(1, ((topic_filter, SubscriptionOptions(qos=qos)),)))
    suback = raw.recv()
    assert list(suback.reason_codes) == [qos], suback  # type: ignore[attr-defined]


def _publishes(packets: list[object]) -> list[tuple[str, bytes]]:
    return [(p.topic, p.payload) for p in packets if isinstance(p, Publish)]


# -- 1. a session belongs to the user who created it ---------------------------------


@pytest.mark.parametrize("version", [V311, V5])
def test_another_user_cannot_resume_a_session_by_its_client_id(
    make_broker: MakeBroker, version
) -> None:  # type: ignore[no-untyped-def]
    broker = _secured(make_broker)
    alice = _login(broker, version, "alice", "shared-id", clean=False)
    _subscribe(alice, "alice/#")
    alice.send(Disconnect())
    assert alice.is_closed()
    # Alice's session is offline; a message for her is queued in it.
    publisher = _login(broker, version, "alice", "alice-pub", clean=True)
    publisher.send(Publish("alice/diary", b"secret", 1, packet_id=1))
    assert publisher.recv() == Puback(1)
    wait_until_blocking(
        lambda: broker.call(lambda: len(broker.broker.sessions["shared-id"].queue)) == 1
    )  # type: ignore[union-attr]

    bob = _login(broker, version, "bob", "shared-id", clean=False)
    assert bob.last_connack.session_present is False  # type: ignore[attr-defined]
    publisher.send(Publish("alice/diary", b"live secret", 1, packet_id=2))
    assert publisher.recv() == Puback(2)
    assert _publishes(bob.recv_all()) == []
    assert broker.broker.stats.sessions_reset_owner == 1  # type: ignore[union-attr]
    # Nothing of Alice's survives for a later resume either.
    bob.send(Disconnect())
    assert bob.is_closed()
    alice = _login(broker, version, "alice", "shared-id", clean=False)
    assert alice.last_connack.session_present is False  # type: ignore[attr-defined]
    assert _publishes(alice.recv_all()) == []


@pytest.mark.parametrize("version", [V311, V5])
def test_the_same_user_resumes_their_session(make_broker: MakeBroker, version) -> None:  # type: ignore[no-untyped-def]
    broker = _secured(make_broker)
    alice = _login(broker, version, "alice", "mine", clean=False)
    _subscribe(alice, "alice/#")
    alice.send(Disconnect())
    assert alice.is_closed()
    broker.run(broker.broker.publish("alice/news", b"queued", qos=1))  # type: ignore[union-attr]
    again = _login(broker, version, "alice", "mine", clean=False)
    assert again.last_connack.session_present is True  # type: ignore[attr-defined]
    assert _publishes(again.recv_all()) == [("alice/news", b"queued")]


@pytest.mark.parametrize("version", [V311, V5])
def test_every_delivery_is_checked_against_the_acl_in_force(
    make_broker: MakeBroker, version
) -> None:  # type: ignore[no-untyped-def]
    broker = _secured(make_broker)
    alice = _login(broker, version, "alice", "reader", clean=True)
    _subscribe(alice, "alice/#")
    narrower = Acl.parse(ACL + "user alice\ntopic deny alice/private/#\n")
    broker.call(lambda: broker.broker.reload_auth(_users(), narrower))  # type: ignore[union-attr]
    for topic in ("alice/private/key", "alice/public/news"):
        broker.run(broker.broker.publish(topic, b"x", qos=1))  # type: ignore[union-attr]
    assert _publishes(alice.recv_all()) == [("alice/public/news", b"x")]
    assert broker.broker.stats.denied_delivery == 1  # type: ignore[union-attr]
    # Widened again: the verdicts cached under the old ACL are gone.
    broker.call(lambda: broker.broker.reload_auth(_users(), Acl.parse(ACL)))  # type: ignore[union-attr]
    broker.run(broker.broker.publish("alice/private/key", b"y", qos=1))  # type: ignore[union-attr]
    assert _publishes(alice.recv_all()) == [("alice/private/key", b"y")]


def test_a_session_saved_without_an_owner_is_filtered_by_the_resumers_acl(
    make_broker: MakeBroker,
) -> None:
    broker = _secured(make_broker)
    alice = _login(broker, V311, "alice", "legacy", clean=False)
    _subscribe(alice, "alice/#")
    alice.send(Disconnect())
    assert alice.is_closed()

    def make_legacy() -> None:
        session = broker.broker.sessions["legacy"]  # type: ignore[union-attr]
        session.owner = None  # as loaded from a file written before owners were kept
        for topic in ("alice/diary", "bob/notes"):
            session.enqueue(Delivery(Message(topic, b"q", 1), 1, False))

    broker.call(make_legacy)
    bob = _login(broker, V311, "bob", "legacy", clean=False)
    assert bob.last_connack.session_present is True  # type: ignore[attr-defined]
    assert _publishes(bob.recv_all()) == [("bob/notes", b"q")]


# -- 2. no anonymous access where authentication is configured -----------------------


@pytest.mark.parametrize("version", [V311, V5])
def test_anonymous_is_refused_on_loopback_when_a_password_file_is_set(
    make_broker: MakeBroker, version
) -> None:  # type: ignore[no-untyped-def]
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), passwords=_users()))
    raw = Raw(broker.port(), version)
    connack = raw.connect("anon")
    assert connack.reason_code == ReasonCode.NOT_AUTHORIZED  # 3.1.1: return code 5
    assert raw.is_closed()
    opened = make_broker(
        BrokerConfig(listeners=(Listener(port=0, allow_anonymous=True),), passwords=_users())
    )
    assert Raw(opened.port(), version).connect("anon").reason_code == ReasonCode.SUCCESS


def test_anonymous_default() -> None:
    loopback, lan = Listener(host="127.0.0.1"), Listener(host="0.0.0.0")
    assert loopback.admits_anonymous(authentication=False)
    assert not loopback.admits_anonymous(authentication=True)
    assert not lan.admits_anonymous(authentication=False)
    assert Listener(allow_anonymous=True).admits_anonymous(authentication=True)
    assert not Listener(allow_anonymous=False).admits_anonymous(authentication=False)


# -- 3. incomplete packets: a global budget, released at once ------------------------


def _partial_publish(port: int, size: int, sent: int) -> Raw:
    """A client that sends ``sent`` bytes of a PUBLISH of ``size`` bytes, then stalls."""
    raw = Raw(port, V311)
    raw.connect("")
    header = bytearray([0x30])
    remaining = size
    while True:
        byte, remaining = remaining & 0x7F, remaining >> 7
        header.append(byte | (0x80 if remaining else 0))
        if not remaining:
            break
    body = b"\x00\x01t" + b"x" * (sent - 3)
    raw.send_bytes(bytes(header) + body)
    return raw


@pytest.fixture
def no_gc() -> Iterator[None]:
    """Cycles are not collected meanwhile: what is freed is freed by reference counts."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_incomplete_packets_are_bounded_across_connections_and_released_on_close(
    make_broker: MakeBroker, no_gc: None
) -> None:
    budget = 1024 * 1024
    broker = make_broker(
        BrokerConfig(
            listeners=(Listener(port=0),),
            max_packet_size=2 * budget,
            max_incomplete_bytes=budget,
        )
    )
    core = broker.broker
    assert core is not None
    held: list[Raw] = []
    refs: list[weakref.ref[object]] = []
    for _ in range(2):
        held.append(_partial_publish(broker.port(), 900_000, 400_000))
        wait_until_blocking(
            lambda: broker.call(lambda: core.incomplete_bytes) >= 400_000 * len(held)
        )
    refs = broker.call(lambda: [weakref.ref(c) for c in core._connections])
    # A third would take the total past the budget: that connection is closed.
    third = _partial_publish(broker.port(), 900_000, 400_000)
    assert third.is_closed()
    assert core.stats.incomplete_over_budget == 1
    assert all(not raw.is_closed(0.1) for raw in held)
    for raw in held:
        raw.close()
    wait_until_blocking(lambda: broker.call(lambda: core.incomplete_bytes) == 0)
    # Freed by reference counting at once, not left for a full garbage collection.
    wait_until_blocking(lambda: all(ref() is None for ref in refs))


def test_incomplete_bytes_fall_as_packets_complete(make_broker: MakeBroker) -> None:
    broker = make_broker()
    core = broker.broker
    assert core is not None
    raw = _partial_publish(broker.port(), 200_000, 100_000)
    wait_until_blocking(lambda: broker.call(lambda: core.incomplete_bytes) == 100_000 + 4)
    raw.send_bytes(b"x" * 100_000)
    wait_until_blocking(lambda: broker.call(lambda: core.incomplete_bytes) == 0)


# -- 8. Payload Format Indicator 1 with a payload that is not UTF-8 -------------------


def test_payload_format_invalid_is_refused_with_0x99(make_broker: MakeBroker) -> None:
    broker = make_broker()
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    _subscribe(sub, "t/#")
    pub = Raw(broker.port(), V5)
    pub.connect("pub")
    bad = Properties(payload_format_indicator=1)
    pub.send(Publish("t/a", b"\xff\xfe", 1, packet_id=1, properties=bad))
    assert pub.recv() == Puback(1, ReasonCode.PAYLOAD_FORMAT_INVALID)
    pub.send(Publish("t/a", b"\xff\xfe", 2, packet_id=2, properties=bad))
    assert pub.recv() == Pubrec(2, ReasonCode.PAYLOAD_FORMAT_INVALID)
    pub.send(Publish("t/a", b"\xc3\xa9t\xc3\xa9", 1, packet_id=3, properties=bad))
    assert pub.recv() == Puback(3)
    assert _publishes(sub.recv_all()) == [("t/a", "été".encode())]
    assert broker.broker.stats.payload_format_invalid == 2  # type: ignore[union-attr]


def test_a_will_that_is_not_utf8_is_refused_at_connect(make_broker: MakeBroker) -> None:
    broker = make_broker()
    raw = Raw(broker.port(), V5)
    will = Will("w", b"\xff", 0, False, Properties(payload_format_indicator=1))
    raw.send(Connect(client_id="w", will=will))
    connack = raw.recv()
    assert isinstance(connack, Connack)
    assert connack.reason_code == ReasonCode.PAYLOAD_FORMAT_INVALID
    assert raw.is_closed()


# -- 4. sockets are capped: a flood of MQTT connections leaves descriptors for others --


def test_silent_sockets_beyond_the_cap_are_closed_on_accept(make_broker: MakeBroker) -> None:
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), max_pending_connections=3))
    core = broker.broker
    assert core is not None
    idle = [Raw(broker.port(), V311) for _ in range(3)]  # no CONNECT yet
    wait_until_blocking(lambda: broker.call(lambda: len(core._connections)) == 3)
    extra = Raw(broker.port(), V311)
    assert extra.is_closed()
    assert core.stats.connections_refused == 1
    idle[0].close()
    wait_until_blocking(lambda: broker.call(lambda: len(core._connections)) == 2)
    assert Raw(broker.port(), V311).connect("late").reason_code == ReasonCode.SUCCESS
    # Connected clients no longer count as pending: room for another.
    assert Raw(broker.port(), V311).connect("later").reason_code == ReasonCode.SUCCESS
