"""Session state, retained store and their SQLite persistence."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from headwater.mqtt.retained import RetainedStore
from headwater.mqtt.session import (
    NEVER_EXPIRES,
    Delivery,
    Message,
    OverflowPolicy,
    PacketIdsExhausted,
    Session,
    Subscription,
)
from headwater.mqtt.stores import SqliteSessionStore, StoreChanges, dump


def _delivery(n: int, qos: int = 1, topic: str = "t", expires_at: float | None = None) -> Delivery:
    return Delivery(Message(topic, str(n).encode(), qos, expires_at=expires_at), qos, False)


def test_packet_ids_skip_ids_in_flight_and_wrap() -> None:
    s = Session("c")
    first = s.send(_delivery(1))
    assert first.packet_id == 1
    s._next_id = 0xFFFF
    assert s.send(_delivery(2)).packet_id == 0xFFFF
    # Wraps to 1, which is still in flight, so 2 is used [MQTT-2.2.1-4].
    assert s.send(_delivery(3)).packet_id == 2
    assert s.puback(1) is first
    assert s.puback(1) is None


def test_packet_ids_exhausted() -> None:
    s = Session("c")
    s.inflight = dict.fromkeys(range(1, 0x10000))  # type: ignore[arg-type]
    with pytest.raises(PacketIdsExhausted):
        s.next_packet_id()


def test_qos2_outbound_flow() -> None:
    s = Session("c")
    out = s.send(_delivery(1, qos=2))
    assert s.puback(out.packet_id) is None  # PUBACK does not end a QoS 2 flow
    assert s.pubrec(out.packet_id, failed=False) is out
    assert out.released
    assert s.pubcomp(out.packet_id) is out
    assert not s.inflight


def test_qos2_failed_pubrec_ends_flow() -> None:
    s = Session("c")
    out = s.send(_delivery(1, qos=2))
    assert s.pubrec(out.packet_id, failed=True) is out  # [MQTT-4.4.0-2]
    assert not s.inflight


def test_qos2_inbound_dedup() -> None:
    s = Session("c")
    assert s.receive_qos2(7)
    assert not s.receive_qos2(7)  # duplicate: PUBREC again, no delivery
    assert s.release_qos2(7)
    assert not s.release_qos2(7)
    assert s.receive_qos2(7)  # after PUBCOMP the id starts a new message


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (OverflowPolicy.DROP_OLDEST, [b"2", b"3", b"4"]),
        (OverflowPolicy.DROP_NEWEST, [b"0", b"1", b"2"]),
    ],
)
def test_bounded_queue_overflow_is_counted(policy: OverflowPolicy, kept: list[bytes]) -> None:
    s = Session("c", max_queued=3, overflow=policy)
    results = [s.enqueue(_delivery(n)) for n in range(5)]
    assert s.dropped == 2
    assert results == [True, True, True] + [policy is OverflowPolicy.DROP_OLDEST] * 2
    got = []
    while (d := s.pop_queued(0.0)) is not None:
        got.append(d.message.payload)
    assert got == kept


def test_expired_messages_are_not_dequeued() -> None:
    s = Session("c")
    s.enqueue(_delivery(1, expires_at=10.0))
    s.enqueue(_delivery(2, expires_at=30.0))
    d = s.pop_queued(20.0)
    assert d is not None
    assert d.message.payload == b"2"
    assert s.pop_queued(20.0) is None


def test_remaining_expiry_rounds_up() -> None:
    m = Message("t", b"x", expires_at=100.0)
    assert m.remaining_expiry(90.0) == 10
    assert m.remaining_expiry(90.5) == 10
    assert m.remaining_expiry(99.99) == 1
    assert Message("t", b"x").remaining_expiry(0) is None


def test_session_expiry() -> None:
    s = Session("c", expiry_interval=60)
    assert not s.is_expired(1e9)  # connected
    s.disconnected_at = 1000.0
    assert not s.is_expired(1059.0)
    assert s.is_expired(1060.0)
    s.expiry_interval = NEVER_EXPIRES
    assert not s.is_expired(1e12)


def test_session_and_retained_survive_store_reopen(tmp_path: Path) -> None:
    s = Session("dev/1", expiry_interval=3600)
    sub = Subscription("$share/g/a/+", 2, False, True, 1, 42, "g", "a/+")
    s.subscriptions[sub.topic_filter] = sub
    msg = Message(
        "a/b",
        b"\x00\xff",
        2,
        retain=True,
        payload_format_indicator=0,
        expires_at=2e9,
        content_type="application/json",
        response_topic="r/1",
        correlation_data=b"\x01",
        user_properties=(("k", "v"), ("k", "v2")),
        origin="pub",
    )
    out = s.send(Delivery(msg, 2, True, (42, 7)))
    s.pubrec(out.packet_id, failed=False)
    s.enqueue(Delivery(msg, 1, False))
    s.receive_qos2(9)
    s.disconnected_at = 123.5
    retained = RetainedStore()
    retained.set(msg)
    upserts, _ = retained.take_changes()

    store = SqliteSessionStore(tmp_path)
    store.save_now(
        StoreChanges(
            [(s.client_id, dump(s.to_json()))],
            retained=[(m.topic, dump(m.to_json())) for m in upserts],
        )
    )
    asyncio.run(store.close())

    store = SqliteSessionStore(tmp_path)
    (loaded,) = store.load_sessions()
    assert loaded.client_id == "dev/1"
    assert loaded.subscriptions == s.subscriptions
    assert loaded.inflight == s.inflight
    assert list(loaded.queue) == list(s.queue)
    assert loaded.incoming_qos2 == {9}
    assert loaded.disconnected_at == 123.5
    assert loaded.next_packet_id() == s.next_packet_id()
    assert store.load_retained() == [msg]
    store.save_now(StoreChanges(deleted_sessions=["dev/1"], deleted_retained=["a/b"]))
    assert store.load_sessions() == []
    assert store.load_retained() == []
    asyncio.run(store.close())


def test_retained_set_replace_delete() -> None:
    r = RetainedStore()
    r.set(Message("a/b", b"1", retain=True))
    r.set(Message("a/b", b"2", retain=True))
    assert len(r) == 1
    assert [m.payload for m in r.match("a/b", 0)] == [b"2"]
    # [MQTT-3.3.1-10/11] an empty retained payload deletes and is not stored.
    r.set(Message("a/b", b"", retain=True))
    assert len(r) == 0
    assert r.match("#", 0) == []
    upserts, deletes = r.take_changes()
    assert upserts == []
    assert deletes == ["a/b"]


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("#", ["sport", "sport/tennis", "sport/tennis/p1", "x"]),
        ("sport/#", ["sport", "sport/tennis", "sport/tennis/p1"]),
        ("sport/+", ["sport/tennis"]),
        ("+", ["sport", "x"]),
        ("+/+/p1", ["sport/tennis/p1"]),
        ("$SYS/#", ["$SYS/up"]),
        ("+/up", []),  # [MQTT-4.7.2-1]
        ("sport/tennis", ["sport/tennis"]),
        ("nothing/#", []),
    ],
)
def test_retained_match(topic_filter: str, expected: list[str]) -> None:
    r = RetainedStore()
    for topic in ["sport", "sport/tennis", "sport/tennis/p1", "x", "$SYS/up"]:
        r.set(Message(topic, b"v", retain=True))
    assert sorted(m.topic for m in r.match(topic_filter, 0)) == expected


def test_retained_expiry_and_capacity() -> None:
    r = RetainedStore(max_retained=2)
    r.set(Message("a", b"1", expires_at=10.0))
    r.set(Message("b", b"1"))
    assert not r.set(Message("c", b"1"))
    assert r.rejected == 1
    assert r.set(Message("b", b"2"))  # replacing is allowed when full
    r.take_changes()
    assert [m.topic for m in r.match("#", 20.0)] == ["b"]
    assert len(r) == 1
    assert r.take_changes() == ([], ["a"])
