from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import time

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import (
    Deliverer,
    DeliveryError,
    DeliverySpec,
    Outcome,
    RecordingSink,
    backoff,
    dead_letter_event,
    effective_delivery,
    parse_retry_after,
    should_retry,
)
from headwater.eventing.delivery import ERROR_DATA_LIMIT, LatencyHistogram


def event(i: int = 1, **extra: object) -> CloudEvent:
    return CloudEvent(
        {"specversion": "1.0", "id": str(i), "source": "/test", "type": "t", **extra},
        b'{"n":1}',
    )


# -- pure policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        pytest.param(None, True, id="transport"),
        pytest.param(100, False, id="1xx"),
        pytest.param(301, False, id="3xx"),
        pytest.param(400, False, id="400"),
        pytest.param(401, False, id="401"),
        pytest.param(403, False, id="403"),
        pytest.param(404, True, id="404"),
        pytest.param(408, True, id="408"),
        pytest.param(409, True, id="409"),
        pytest.param(410, False, id="other-4xx"),
        pytest.param(413, False, id="413"),
        pytest.param(429, True, id="429"),
        pytest.param(500, True, id="500"),
        pytest.param(503, True, id="503"),
        pytest.param(599, True, id="5xx"),
    ],
)
def test_should_retry_follows_the_data_plane_table(status: int | None, retry: bool) -> None:
    assert should_retry(status) is retry


def test_backoff_linear_and_exponential() -> None:
    linear = DeliverySpec(retry=5, backoff_policy="linear", backoff_delay=0.5)
    assert [backoff(linear, n) for n in (1, 2, 3)] == [0.5, 1.0, 1.5]
    exponential = DeliverySpec(retry=5, backoff_policy="exponential", backoff_delay=0.5)
    assert [backoff(exponential, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff(exponential, 10_000) == 3600.0  # bounded
    with pytest.raises(ValueError):
        backoff(linear, 0)


def test_retry_after_stretches_but_is_capped() -> None:
    spec = DeliverySpec(retry=3, backoff_policy="linear", backoff_delay=0.1, retry_after_max=5.0)
    assert backoff(spec, 1, retry_after=2.0) == 2.0
    assert backoff(spec, 1, retry_after=600.0) == 5.0
    assert backoff(spec, 1, retry_after=0.01) == 0.1  # never shorter than the policy


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_trigger_delivery_overrides_broker_as_a_whole() -> None:
    broker = DeliverySpec(retry=5, backoff_delay=1.0)
    trigger = DeliverySpec(retry=1)
    assert effective_delivery(trigger, broker) is trigger
    assert effective_delivery(None, broker) is broker
    assert effective_delivery(None, None) == DeliverySpec()


def test_from_knative() -> None:
    dls = RecordingSink()
    spec = DeliverySpec.from_knative(
        {
            "retry": 3,
            "backoffPolicy": "linear",
            "backoffDelay": "PT0.5S",
            "timeout": "PT2S",
            "deadLetterSink": {"uri": "http://dls"},
        },
        lambda destination: (dls, destination["uri"]),
    )
    assert (spec.retry, spec.backoff_policy, spec.backoff_delay, spec.timeout) == (
        3,
        "linear",
        0.5,
        2.0,
    )
    assert spec.dead_letter_sink is dls
    assert spec.dead_letter_uri == "http://dls"
    with pytest.raises(ValueError, match="ISO 8601"):
        DeliverySpec.from_knative({"backoffDelay": "200ms"})
    with pytest.raises(ValueError, match="backoffPolicy"):
        DeliverySpec.from_knative({"backoffPolicy": "fibonacci"})


def test_dead_letter_event_extensions() -> None:
    body = b"x" * 5000
    dead = dead_letter_event(event(), "http://sub/", DeliveryError(400, False, body))
    assert dead["knativeerrordest"] == "http://sub/"
    assert dead["knativeerrorcode"] == "400"
    assert base64.b64decode(dead["knativeerrordata"]) == body[:ERROR_DATA_LIMIT]
    assert dead.data == event().data  # data untouched
    # No response: no code, no data (and none left over from an earlier dead-lettering).
    again = dead_letter_event(dead, "http://other/", DeliveryError(None, True))
    assert again["knativeerrordest"] == "http://other/"
    assert "knativeerrorcode" not in again
    assert "knativeerrordata" not in again


def test_latency_histogram() -> None:
    h = LatencyHistogram((0.01, 0.1, 1.0))
    for v in (0.005, 0.005, 0.05, 0.5, 5.0):
        h.observe(v)
    assert h.counts == [2, 1, 1, 1]
    assert h.count == 5
    assert h.sum == pytest.approx(5.56)
    assert h.snapshot()["buckets"] == {"0.01": 2, "0.1": 1, "1.0": 1, "+Inf": 1}


# -- the loop -------------------------------------------------------------------------


class Script:
    """A sink that fails according to a list of statuses, then accepts."""

    def __init__(self, *statuses: int | None, retry_after: float | None = None) -> None:
        self.statuses = list(statuses)
        self.retry_after = retry_after
        self.attempts = 0
        self.accepted: list[CloudEvent] = []

    async def deliver(self, e: CloudEvent) -> CloudEvent | None:
        self.attempts += 1
        if self.statuses:
            status = self.statuses.pop(0)
            raise DeliveryError(status, should_retry(status), b"nope", retry_after=self.retry_after)
        self.accepted.append(e)
        return None


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


async def test_retries_with_backoff_then_delivers() -> None:
    sink = Script(503, 429, None)
    sleeps = Sleeps()
    spec = DeliverySpec(retry=3, backoff_policy="exponential", backoff_delay=0.1)
    d = Deliverer(sink, spec, destination="sub", sleep=sleeps)
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert sink.attempts == 4
    assert sleeps.waits == [0.2, 0.4, 0.8]
    assert (d.stats.delivered, d.stats.failed_attempts, d.stats.retried) == (1, 3, 3)
    assert d.stats.latency.count == 1


async def test_non_retryable_goes_straight_to_the_dead_letter_sink() -> None:
    sink = Script(400)
    dls = RecordingSink()
    sleeps = Sleeps()
    spec = DeliverySpec(retry=5, dead_letter_sink=dls)
    d = Deliverer(sink, spec, destination="http://sub/", sleep=sleeps)
    assert await d.deliver(event()) is Outcome.DEAD_LETTERED
    assert sink.attempts == 1 and sleeps.waits == []
    (dead,) = dls.events
    assert dead["knativeerrorcode"] == "400"
    assert dead["knativeerrordest"] == "http://sub/"
    assert base64.b64decode(dead["knativeerrordata"]) == b"nope"
    assert (d.stats.dead_lettered, d.stats.dropped, d.stats.delivered) == (1, 0, 0)


async def test_exhausted_retries_without_dead_letter_sink_drop_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = Script(500, 500, 500)
    d = Deliverer(sink, DeliverySpec(retry=2), destination="sub", sleep=Sleeps())
    assert await d.deliver(event(7)) is Outcome.DROPPED
    assert sink.attempts == 3
    assert d.stats.dropped == 1
    assert d.stats.failed_attempts == 3 and d.stats.retried == 2
    assert "dropped event id=7" in caplog.text
    assert d.stats.last_error is not None and "HTTP 500" in d.stats.last_error


async def test_dead_letter_sink_is_retried_then_the_event_is_dropped() -> None:
    dls = Script(503, 503, 503)
    spec = DeliverySpec(retry=2, dead_letter_sink=dls)
    d = Deliverer(Script(400), spec, destination="sub", sleep=Sleeps())
    assert await d.deliver(event()) is Outcome.DROPPED
    assert dls.attempts == 3
    assert d.stats.failed_attempts == 1  # the dead letter sink's failures are not the subscriber's


async def test_retry_after_is_honoured() -> None:
    sleeps = Sleeps()
    spec = DeliverySpec(retry=1, backoff_delay=0.01, retry_after_max=3.0)
    d = Deliverer(Script(429, retry_after=2.0), spec, destination="s", sleep=sleeps)
    await d.deliver(event())
    assert sleeps.waits == [2.0]


async def test_timeout_is_a_retryable_failure() -> None:
    calls = 0

    async def slow(e: CloudEvent) -> CloudEvent | None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(10)
        return None

    d = Deliverer(RecordingSink(slow), DeliverySpec(retry=1, timeout=0.05), destination="s")
    d._sleep = Sleeps()
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert calls == 2
    assert d.stats.failed_attempts == 1


async def test_a_crashing_in_process_sink_is_retried_like_a_transport_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def flaky(e: CloudEvent) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    d = Deliverer(RecordingSink(flaky), DeliverySpec(retry=1), destination="s", sleep=Sleeps())
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert "boom" in caplog.text


async def test_reply_handler_failure_retries_the_whole_delivery() -> None:
    reply = event(99)
    sink = RecordingSink(lambda e: reply)
    stored: list[CloudEvent] = []
    fail_first = [True]

    async def on_reply(original: CloudEvent, r: CloudEvent) -> None:
        if fail_first.pop() if fail_first else False:
            raise OSError("log down")
        stored.append(r)

    d = Deliverer(sink, DeliverySpec(retry=2), destination="s", on_reply=on_reply, sleep=Sleeps())
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert len(sink.events) == 2  # delivered twice: at least once, reply stored once
    assert stored == [reply]
    assert d.stats.replies == 1


async def test_cancellation_reports_no_outcome() -> None:
    started = asyncio.Event()

    async def hang(e: CloudEvent) -> None:
        started.set()
        await asyncio.sleep(60)

    d = Deliverer(RecordingSink(hang), DeliverySpec(), destination="s")
    task = asyncio.create_task(d.deliver(event()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (d.stats.delivered, d.stats.dropped, d.stats.failed_attempts) == (0, 0, 0)


# -- the dead-letter record ---------------------------------------------------------


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.records: list[tuple[str, str, int | None]] = []

    async def __call__(self, deliverer: Deliverer, event: CloudEvent, error: DeliveryError) -> None:
        if self.fail:
            raise OSError("log down")
        self.records.append((deliverer.destination, event.id, error.status))


@pytest.mark.parametrize("with_dls", [True, False], ids=["with-dls", "without-dls"])
async def test_every_given_up_event_is_recorded_once(with_dls: bool) -> None:
    recorder = Recorder()
    dls = RecordingSink()
    spec = DeliverySpec(retry=1, dead_letter_sink=dls if with_dls else None, recorder=recorder)
    d = Deliverer(Script(503, 503), spec, destination="http://sub/", sleep=Sleeps())
    outcome = await d.deliver(event(3))
    # Kept in the dead-letter store: dead-lettered, with or without a dead letter sink.
    assert outcome is Outcome.DEAD_LETTERED
    assert recorder.records == [("http://sub/", "3", 503)]
    assert len(dls.events) == (1 if with_dls else 0)
    assert (d.stats.dead_lettered, d.stats.sent_to_dead_letter_sink, d.stats.dropped) == (
        1,
        1 if with_dls else 0,
        0,
    )


async def test_delivered_events_are_not_recorded() -> None:
    recorder = Recorder()
    spec = DeliverySpec(retry=1, recorder=recorder)
    d = Deliverer(Script(503), spec, destination="s", sleep=Sleeps())
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert recorder.records == []


async def test_a_failing_record_reports_no_outcome_and_skips_the_dead_letter_sink() -> None:
    # The event stays unacknowledged and comes back: nothing is lost between the two.
    dls = RecordingSink()
    spec = DeliverySpec(dead_letter_sink=dls, recorder=Recorder(fail=True))
    d = Deliverer(Script(400), spec, destination="s", sleep=Sleeps())
    with pytest.raises(OSError, match="log down"):
        await d.deliver(event())
    assert dls.events == []
    assert (d.stats.dead_lettered, d.stats.dropped) == (0, 0)


async def test_every_failed_attempt_shows_its_error_time_and_number_as_it_happens() -> None:
    """Not only once the event is given up on: after each attempt."""
    seen: list[tuple[str | None, int | None]] = []
    d: Deliverer

    class Watch:
        async def __call__(self, seconds: float) -> None:
            seen.append((d.stats.last_error, d.stats.last_error_attempt))

    d = Deliverer(Script(503, 502), DeliverySpec(retry=5), destination="sub", sleep=Watch())
    before = time.time()
    assert await d.deliver(event()) is Outcome.DELIVERED
    assert seen == [("sub: HTTP 503", 1), ("sub: HTTP 502", 2)]
    assert d.stats.last_error_time is not None and d.stats.last_error_time >= before
    snapshot = d.stats.snapshot()
    assert snapshot["lastErrorAttempt"] == 2
    assert snapshot["lastErrorTime"].endswith("+00:00")


async def test_a_failing_subscriber_logs_one_line_a_minute_per_trigger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    spec = DeliverySpec(recorder=recorder)
    # Names of their own: the throttle remembers a key across deliverers for a minute.
    flaky, other_name = (f"Trigger default/{n}-{time.monotonic_ns()}" for n in ("flaky", "other"))
    d = Deliverer(Script(*[400] * 50), spec, destination="sub", name=flaky, sleep=Sleeps())
    other = Deliverer(Script(400), spec, destination="sub", name=other_name)
    with caplog.at_level(logging.WARNING, logger="headwater.eventing.delivery"):
        for i in range(50):
            assert await d.deliver(event(i)) is Outcome.DEAD_LETTERED
        await other.deliver(event(99))
    lines = [r.getMessage() for r in caplog.records]
    assert len(recorder.records) == 51  # each one kept, however few lines
    assert len(lines) == 2
    assert lines[0].startswith(f"{flaky}: gave up on event id=0 source=/test")
    assert "kept as a dead letter (headwater deadletters list)" in lines[0]
    assert lines[1].startswith(f"{other_name}: gave up on event id=99")
