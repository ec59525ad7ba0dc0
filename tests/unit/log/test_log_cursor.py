"""Low-water-mark bookkeeping of a consumer (headwater.log._cursor)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.log import InvalidAck
from headwater.log._cursor import Cursor


def test_the_position_is_the_lowest_unacked_minus_one() -> None:
    cursor = Cursor(0)
    cursor.handed_out(range(1, 11))
    assert cursor.ack(2) is False
    assert cursor.position == 0
    assert cursor.ack(1) is True
    assert cursor.position == 2
    assert cursor.ack(5) is False
    assert cursor.ack(3) is True
    assert cursor.position == 3
    assert cursor.ack(4) is True
    assert cursor.position == 5


def test_acks_at_or_below_the_position_or_twice_do_nothing() -> None:
    cursor = Cursor(7)
    cursor.handed_out([8, 9])
    assert cursor.ack(3) is False
    assert cursor.ack(7) is False
    assert cursor.ack(9) is False
    assert cursor.ack(9) is False
    assert cursor.position == 7


def test_an_offset_never_handed_out_is_an_invalid_ack() -> None:
    cursor = Cursor(0)
    cursor.handed_out([1, 2])
    with pytest.raises(InvalidAck):
        cursor.ack(3)


def test_gaps_from_retention_do_not_hold_the_position() -> None:
    cursor = Cursor(0)
    cursor.handed_out([1, 2, 8, 9])  # 3..7 were dropped before anyone read them
    for offset in (1, 2, 8):
        cursor.ack(offset)
    assert cursor.position == 8
    cursor.ack(9)
    assert cursor.position == 9


def test_given_back_offsets_are_redelivered_first_in_order() -> None:
    cursor = Cursor(0)
    cursor.handed_out(range(1, 7))
    cursor.ack(2)
    cursor.give_back([5, 1, 2, 3])  # 2 was acked: not given back
    assert cursor.take_redeliveries(2) == [1, 3]
    assert cursor.take_redeliveries(10) == [5]
    assert cursor.take_redeliveries(10) == []


def test_acks_behind_one_unacked_offset_keep_the_heap_bounded() -> None:
    # One early event keeps failing (retries with backoff) while everything
    # after it is delivered and acked: memory must follow what is pending, not
    # what was delivered meanwhile.
    cursor = Cursor(0)
    cursor.handed_out([1])
    for offset in range(2, 100_002):
        cursor.handed_out([offset])
        assert cursor.ack(offset) is False
        assert cursor.position == 0
    assert len(cursor._heap) < 200
    cursor.handed_out([100_002, 100_003])
    assert cursor.ack(100_003) is False
    assert cursor.ack(1) is True
    assert cursor.position == 100_001
    assert cursor.ack(100_002) is True
    assert cursor.position == 100_003


@given(
    st.integers(min_value=1, max_value=400),
    st.integers(min_value=0, max_value=5),
    st.randoms(use_true_random=False),
)
def test_any_ack_order_ends_at_the_last_offset_with_a_bounded_heap(
    count: int, held: int, rnd: random.Random
) -> None:
    # A few offsets stay unacked while the rest are acked in any order (enough
    # of them to rebuild the heap several times); then the held ones are acked.
    cursor = Cursor(0)
    cursor.handed_out(range(1, count + 1))
    order = list(range(1, count + 1))
    rnd.shuffle(order)
    order = order[held:] + order[:held]
    acked: set[int] = set()
    for offset in order:
        cursor.ack(offset)
        acked.add(offset)
        expected = 0
        while expected + 1 in acked:
            expected += 1
        assert cursor.position == expected
        assert len(cursor._heap) <= 2 * (count - len(acked)) + 65
    assert cursor.position == count
