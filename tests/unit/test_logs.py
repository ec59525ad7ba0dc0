"""The log throttle: one line per key per interval, the rest counted."""

from __future__ import annotations

import logging

import pytest

from headwater.logs import Throttle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_first_line_written_repeats_counted(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    throttle = Throttle(logging.getLogger("t.first"), interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, "t.first"):
        assert throttle.warning("abort", "peer %s aborted", "a")
        for _ in range(406):
            assert not throttle.warning("abort", "peer %s aborted", "b")
    assert [r.getMessage() for r in caplog.records] == ["peer a aborted"]
    assert throttle.total("abort") == 407


def test_next_line_after_interval_says_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    throttle = Throttle(logging.getLogger("t.next"), interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, "t.next"):
        throttle.warning("k", "bad request from %s", "x")
        clock.now += 10
        throttle.warning("k", "bad request from %s", "y")
        throttle.warning("k", "bad request from %s", "z")
        clock.now += 60
        assert throttle.warning("k", "bad request from %s", "w")
        clock.now += 61
        assert throttle.warning("k", "bad request from %s", "v")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad request from x",
        "bad request from w (and 2 more like it in the last 70 s)",
        "bad request from v",
    ]


def test_keys_are_independent(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    throttle = Throttle(logging.getLogger("t.keys"), interval=60, clock=clock)
    with caplog.at_level(logging.ERROR, "t.keys"):
        assert throttle.error(("trigger", "a"), "a failed")
        assert throttle.error(("trigger", "b"), "b failed")
        assert not throttle.error(("trigger", "a"), "a failed")
    assert len(caplog.records) == 2


def test_keys_are_bounded(clock: FakeClock) -> None:
    throttle = Throttle(logging.getLogger("t.bound"), interval=60, max_keys=3, clock=clock)
    for peer in range(100):
        throttle.warning(("peer", peer), "slow peer")
    assert len(throttle.counts) <= 3
    assert len(throttle._windows) <= 3
    # A forgotten key is written again at once (the safe side).
    assert throttle.warning(("peer", 0), "slow peer")


def test_disabled_level_still_counts(clock: FakeClock) -> None:
    logger = logging.getLogger("t.disabled")
    logger.setLevel(logging.ERROR)
    try:
        throttle = Throttle(logger, clock=clock)
        assert not throttle.warning("k", "quiet")
        assert throttle.total("k") == 1
    finally:
        logger.setLevel(logging.NOTSET)
