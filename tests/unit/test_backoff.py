"""The one backoff helper: capped exponential delays, optionally with full jitter."""

from __future__ import annotations

import random

import pytest

from headwater.backoff import Backoff


def test_delays_double_up_to_the_cap_and_reset() -> None:
    backoff = Backoff(0.1, 1.0)
    assert [backoff.next() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    backoff.reset()
    assert backoff.next() == pytest.approx(0.1)


def test_full_jitter_stays_under_the_ceiling() -> None:
    backoff = Backoff(0.5, 4.0, jitter=True, _random=random.Random(7))
    for ceiling in (0.5, 1.0, 2.0, 4.0, 4.0):
        assert 0 <= backoff.next() <= ceiling


def test_no_overflow_after_many_attempts() -> None:
    backoff = Backoff(0.1, 30.0)
    for _ in range(10_000):
        backoff.next()
    assert backoff.next() == 30.0


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_nonsense_is_refused(initial: float, maximum: float, factor: float) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, factor)
