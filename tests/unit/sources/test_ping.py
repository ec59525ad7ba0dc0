from __future__ import annotations

from datetime import UTC, datetime

from headwater.cloudevents import CloudEvent
from headwater.sources.ping import PingSchedule, PingSourceRunner


def test_schedule_in_time_zone() -> None:
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    # 03:00 Berlin on the day summer time starts is 01:00 UTC.
    nxt = PingSchedule("0 3 * * *", "Europe/Berlin").next_after(start)
    assert nxt.astimezone(UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert PingSchedule("*/5 * * * *").next_after(start) == datetime(2026, 3, 29, 0, 35, tzinfo=UTC)


async def test_tick_emits_knative_shaped_event() -> None:
    sent: list[CloudEvent] = []

    async def emit(event: CloudEvent) -> None:
        sent.append(event)

    runner = PingSourceRunner(
        namespace="default",
        name="beat",
        schedule=PingSchedule("* * * * *"),
        emit=emit,
        data=b'{"message": "hello"}',
        content_type="application/json",
        extensions={"zone": "north"},
    )
    tick = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    await runner.tick(tick)
    (event,) = sent
    assert event.type == "dev.knative.sources.ping"
    assert event.source == "/apis/v1/namespaces/default/pingsources/beat"
    assert event.time == "2026-11-28T12:00:00Z"
    assert event.datacontenttype == "application/json"
    assert event["zone"] == "north"
    assert event.data == b'{"message": "hello"}'
    assert runner.sent == 1


async def test_emit_failure_is_counted_not_raised() -> None:
    async def emit(event: CloudEvent) -> None:
        raise ConnectionError("log unavailable")

    runner = PingSourceRunner(
        namespace="default", name="p", schedule=PingSchedule("* * * * *"), emit=emit
    )
    await runner.tick(datetime(2026, 1, 1, tzinfo=UTC))
    assert (runner.sent, runner.failed) == (0, 1)
    assert runner.last_error == "ConnectionError: log unavailable"
