"""The expiresat extension, and deliveries that stop once it has passed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing import Deliverer, DeliveryError, DeliverySpec, Outcome, RecordingSink
from headwater.eventing.expiry import expired, expires_at

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def command(expiry: object = None) -> CloudEvent:
    attributes: dict[str, object] = {
        "specversion": "1.0",
        "id": "c1",
        "source": "/cloud",
        "type": "dev.headwater.command",
    }
    if expiry is not None:
        attributes["expiresat"] = expiry
    return CloudEvent(attributes, {"open": True})


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("2026-03-01T12:00:00Z", NOW.timestamp(), id="Z"),
        pytest.param("2026-03-01T13:00:00+01:00", NOW.timestamp(), id="offset"),
        pytest.param("2026-03-01T12:00:00.250Z", NOW.timestamp() + 0.25, id="fraction"),
        pytest.param(NOW, NOW.timestamp(), id="a datetime becomes its RFC 3339 string"),
        pytest.param("2026-03-01T12:00:00", None, id="no offset: ambiguous, ignored"),
        pytest.param("tomorrow", None, id="unreadable: ignored"),
        pytest.param(7, None, id="not a timestamp"),
    ],
)
def test_expires_at(value: object, seconds: float | None) -> None:
    assert expires_at(command(value)) == seconds


def test_expired() -> None:
    now = NOW.timestamp()
    assert not expired(command(), now)
    assert not expired(command("2026-03-01T12:00:01Z"), now)
    assert expired(command("2026-03-01T12:00:00Z"), now)
    assert expired(command("2026-03-01T11:00:00Z"), now)
    assert not expired(command("not a time"), now)  # delivered: the mistake stays visible


def soon(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


async def test_an_expired_event_is_not_attempted() -> None:
    sink = RecordingSink()
    deliverer = Deliverer(sink, DeliverySpec(), destination="actuator")
    assert await deliverer.deliver(command(soon(-1))) is Outcome.EXPIRED
    assert sink.attempts == 0
    assert deliverer.stats.expired == 1
    assert deliverer.stats.dropped == deliverer.stats.dead_lettered == 0
    assert await deliverer.deliver(command(soon(3600))) is Outcome.DELIVERED


async def test_retries_stop_when_the_event_expires_and_nothing_is_dead_lettered() -> None:
    attempts = 0

    def refuse(event: CloudEvent) -> None:
        nonlocal attempts
        attempts += 1
        raise DeliveryError(503, True)

    dls = RecordingSink()
    recorded: list[CloudEvent] = []

    async def recorder(deliverer: Deliverer, event: CloudEvent, error: DeliveryError) -> None:
        recorded.append(event)

    waits: list[float] = []
    event = command(soon(0.5))

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # time passes during the second wait
            import asyncio

            await asyncio.sleep(0.6)

    spec = DeliverySpec(retry=10, backoff_delay=0.01, dead_letter_sink=dls, recorder=recorder)
    deliverer = Deliverer(RecordingSink(refuse), spec, destination="actuator", sleep=sleep)
    assert await deliverer.deliver(event) is Outcome.EXPIRED
    assert attempts == 2
    assert dls.events == [] and recorded == []
    assert deliverer.stats.expired == 1
