"""Redeliveries: which resent QoS 1/2 messages were already appended."""

from __future__ import annotations

import asyncio

import pytest

from headwater.sources.redelivery import Redeliveries, fingerprint


def test_only_the_same_message_under_the_same_id_is_recognised() -> None:
    r = Redeliveries()
    print_ = fingerprint("a/b", b"1")
    r.appended("dev", 7, print_)
    assert r.was_appended("dev", 7, print_)
    assert not r.was_appended("dev", 7, fingerprint("a/b", b"2"))
    assert not r.was_appended("dev", 7, fingerprint("a/c", b"1"))
    assert not r.was_appended("dev", 8, print_)
    assert not r.was_appended("other", 7, print_)


def test_memory_is_bounded_per_sender_and_in_senders() -> None:
    r = Redeliveries(window=3, max_senders=2)
    for pid in range(1, 6):
        r.appended("a", pid, pid)
    assert [pid for pid in range(1, 6) if r.was_appended("a", pid, pid)] == [3, 4, 5]
    r.appended("a", 3, 3)  # reused: now the newest
    r.appended("a", 6, 6)
    assert r.was_appended("a", 3, 3) and not r.was_appended("a", 4, 4)
    r.appended("b", 1, 1)
    r.appended("a", 7, 7)  # "a" active again: "b" is the least recent
    r.appended("c", 1, 1)
    assert not r.was_appended("b", 1, 1)
    assert r.was_appended("a", 7, 7) and r.was_appended("c", 1, 1)
    r.forget("a")
    assert not r.was_appended("a", 7, 7)


async def test_a_resend_waits_for_the_first_copy_and_follows_its_outcome() -> None:
    r = Redeliveries()
    flight = r.begin("dev", {1: 11})
    waiting = asyncio.ensure_future(r.is_resend("dev", 1, 11))
    await asyncio.sleep(0)
    assert not waiting.done()
    r.end("dev", flight, flight.prints)
    assert await waiting is True
    assert r.suppressed == 1
    flight = r.begin("dev", {2: 22})
    waiting = asyncio.ensure_future(r.is_resend("dev", 2, 22))
    await asyncio.sleep(0)
    r.end("dev", flight, {})  # the first copy never made it: append the resend
    assert await waiting is False
    assert await r.is_resend("dev", 3, 33) is False  # never seen
    assert r.suppressed == 1


async def test_a_batch_is_recorded_at_its_end_and_wakes_waiting_resends() -> None:
    r = Redeliveries(window=3)
    first = r.begin("dev", {1: 10, 2: 20})
    second = r.begin("dev", {3: 30, 4: 40})
    waiting = asyncio.ensure_future(r.is_resend("dev", 4, 40))
    other = asyncio.ensure_future(r.is_resend("dev", 2, 21))  # same id, another message
    await asyncio.sleep(0)
    assert not waiting.done()  # the first copy's append is still under way
    assert await other is False  # never waits for a batch that does not hold it
    r.end("dev", second, second.prints)  # batches may end in any order
    assert await waiting is True
    r.end("dev", first, first.prints)
    # The window keeps the newest three, a reused id counting as new.
    assert not r.was_appended("dev", 3, 30)
    assert all(r.was_appended("dev", pid, pid * 10) for pid in (4, 1, 2))
    flight = r.begin("dev", {4: 41, 5: 50})
    r.end("dev", flight, {5: 50})  # partly appended (one by one, one refused)
    assert r.was_appended("dev", 5, 50) and r.was_appended("dev", 2, 20)
    assert not r.was_appended("dev", 4, 41)
    assert not r._flights  # nothing under way is remembered after its end


def test_a_packet_id_used_again_for_a_new_message_forgets_the_old_one() -> None:
    """A door that opens twice: the same topic and payload under a reused packet id.
    The new message's resend (its append failed) is not the old one's."""
    r = Redeliveries()
    print_ = fingerprint("door/1", b"open")
    r.appended("dev", 5, print_)
    r.reused("dev", 5)  # the new message arrives (DUP=0) under id 5
    assert not r.was_appended("dev", 5, print_)


async def test_the_mqtt_source_appends_a_resent_new_message_under_a_reused_id() -> None:
    from types import SimpleNamespace

    from headwater.cloudevents import CloudEvent
    from headwater.mqtt.client import ClientConfig, ConnectionLost
    from headwater.mqtt.packets import Properties, ProtocolVersion, ReasonCode
    from headwater.sources.mapping import Mapping
    from headwater.sources.mqtt import MqttSourceRunner

    class Message:
        def __init__(self, pid: int, *, dup: bool = False) -> None:
            self.topic, self.payload, self.packet_id, self.dup = "door/1", b"open", pid, dup
            self.qos, self.retain, self.properties = 1, False, Properties()
            self.acked: ReasonCode | None = None

        async def ack(self, reason: ReasonCode = ReasonCode.SUCCESS) -> None:
            self.acked = reason

    log: list[CloudEvent] = []
    failing = False

    async def append(event: CloudEvent) -> None:
        if failing:
            raise OSError("the log is away")
        log.append(event)

    config = ClientConfig("127.0.0.1", 1883, "c", ProtocolVersion.MQTT5)
    runner = MqttSourceRunner(config, [("#", 1)], Mapping.compile(), append)
    client = SimpleNamespace(version=5)
    await runner._append(client, [Message(5)])  # type: ignore[arg-type]
    failing = True
    with pytest.raises(ConnectionLost):
        await runner._append(client, [Message(5)])  # type: ignore[arg-type]
    failing = False
    await runner._append(client, [Message(5, dup=True)])  # type: ignore[arg-type]
    assert len(log) == 2 and runner.stats.duplicates_suppressed == 0
