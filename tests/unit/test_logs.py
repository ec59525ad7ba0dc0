"""The log throttle: one line per key per interval, the rest counted."""

from __future__ import annotations

import logging
import sys

import orjson
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


# -- structured lines ---------------------------------------------------------------


def json_line(record: logging.LogRecord) -> dict[str, object]:
    from headwater.logs import JsonFormatter

    text = JsonFormatter().format(record)
    assert "\n" not in text
    parsed = orjson.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_a_json_line_has_stable_fields_and_the_event_and_trace_ids() -> None:
    record = logging.LogRecord(
        "headwater.x", logging.WARNING, __file__, 1, "gave up on %s", ("e1",), None
    )
    record.event_id = "e1"
    record.trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    record.span_id = "00f067aa0ba902b7"
    line = json_line(record)
    assert list(line) == ["time", "level", "logger", "message", "event_id", "trace_id", "span_id"]
    assert line["level"] == "warning"
    assert line["message"] == "gave up on e1"
    assert str(line["time"]).endswith("Z")


def test_a_json_line_carries_a_traceback_as_one_field() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "headwater.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = json_line(record)
    assert "ValueError: boom" in str(line["exception"])


def test_throttled_lines_carry_extra_fields_and_the_suppressed_count(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    throttle = Throttle(logging.getLogger("t.extra"), interval=60, clock=clock)
    with caplog.at_level(logging.WARNING, "t.extra"):
        throttle.warning("k", "dropped %s", "a", extra={"event_id": "a", "trace_id": "t1"})
        throttle.warning("k", "dropped %s", "b", extra={"event_id": "b"})
        clock.now += 61
        throttle.warning("k", "dropped %s", "c", extra={"event_id": "c", "trace_id": "t3"})
    first, last = caplog.records
    assert (first.event_id, first.trace_id) == ("a", "t1")  # type: ignore[attr-defined]
    assert (last.event_id, last.trace_id, last.suppressed) == ("c", "t3", 1)  # type: ignore[attr-defined]
    assert json_line(last)["suppressed"] == 1


def test_a_library_logger_is_throttled_by_message_template(
    caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    library = logging.getLogger("t.library")
    throttle = Throttle(logging.getLogger("t.unused"), interval=60, clock=clock)
    library.addFilter(throttle.filter())
    with caplog.at_level(logging.WARNING, "t.library"):
        for code in range(5):
            library.warning("export failed: code %s", code)
        library.warning("queue full")
        clock.now += 61
        library.warning("export failed: code %s", 9)
    assert [r.getMessage() for r in caplog.records] == [
        "export failed: code 0",
        "queue full",
        "export failed: code 9 (and 4 more like it in the last 61 s)",
    ]


def test_configure_json_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from headwater.logs import configure

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("info", "json")
        logging.getLogger("headwater.test").info("hello %s", "world", extra={"event_id": "e9"})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    line = orjson.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["message"], line["event_id"], line["logger"]) == (
        "hello world",
        "e9",
        "headwater.test",
    )
