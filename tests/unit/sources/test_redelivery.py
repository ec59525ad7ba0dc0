"""Redeliveries: which resent QoS 1/2 messages were already appended."""

from __future__ import annotations

import asyncio

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
