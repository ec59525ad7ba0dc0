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
    r.begin("dev", 1, 11)
    waiting = asyncio.ensure_future(r.is_resend("dev", 1, 11))
    await asyncio.sleep(0)
    assert not waiting.done()
    r.end("dev", 1, 11, ok=True)
    assert await waiting is True
    assert r.suppressed == 1
    r.begin("dev", 2, 22)
    waiting = asyncio.ensure_future(r.is_resend("dev", 2, 22))
    await asyncio.sleep(0)
    r.end("dev", 2, 22, ok=False)  # the first copy never made it: append the resend
    assert await waiting is False
    assert await r.is_resend("dev", 3, 33) is False  # never seen
    assert r.suppressed == 1


def test_end_many_records_a_batch_and_wakes_waiting_resends() -> None:
    async def run() -> None:
        r = Redeliveries(window=3)
        for pid in (1, 2, 3, 4):
            r.begin("dev", pid, pid * 10)
        waiting = asyncio.ensure_future(r.is_resend("dev", 2, 20))
        await asyncio.sleep(0)
        assert not waiting.done()  # the first copy's append is still under way
        r.end_many("dev", [(1, 10), (2, 20), (3, 30), (4, 40)], True)
        assert await waiting is True
        # The window keeps the newest three.
        assert not r.was_appended("dev", 1, 10)
        assert all(r.was_appended("dev", pid, pid * 10) for pid in (2, 3, 4))
        r.begin("dev", 5, 50)
        r.end_many("dev", [(5, 50)], False)
        assert not r.was_appended("dev", 5, 50)

    asyncio.run(run())
