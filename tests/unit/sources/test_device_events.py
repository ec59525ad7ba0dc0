"""Device events: their content, one append per window, failures counted, waiters released."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import orjson
import pytest

from headwater.cloudevents import CloudEvent
from headwater.logs import Throttle
from headwater.mqtt.config import ClientInfo
from headwater.mqtt.packets import ProtocolVersion
from headwater.sources.device_events import CONNECTED_TYPE, DISCONNECTED_TYPE, DeviceEvents
from headwater.sources.mapping import IdSequence

LISTENER = "mqtt://127.0.0.1:1883"


class Sink:
    """``emit_many`` that records its calls; ``gate`` holds them back, ``failure`` fails them."""

    def __init__(self) -> None:
        self.calls: list[list[CloudEvent]] = []
        self.gate: asyncio.Event | None = None
        self.failure: Exception | None = None

    async def emit_many(self, events: Sequence[CloudEvent]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        self.calls.append(list(events))


class Failures:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, count: int) -> None:
        self.count += count


def events(sink: Sink, failures: Failures, *, timeout: float = 10.0, **kw: object) -> DeviceEvents:
    return DeviceEvents(
        sink.emit_many,
        IdSequence(),
        append_timeout=timeout,
        name="test",
        on_failure=failures,
        throttle=Throttle(logging.getLogger("test.device_events")),
        **kw,  # type: ignore[arg-type]
    )


def info(client_id: str = "dev-1", **kw: object) -> ClientInfo:
    fields: dict[str, object] = {
        "username": None,
        "protocol_version": ProtocolVersion.MQTT311,
        "listener": LISTENER,
        "peer": "127.0.0.1:50000",
    }
    fields.update(kw)
    return ClientInfo(client_id, **fields)  # type: ignore[arg-type]


async def test_the_event_carries_the_connection_and_what_the_plane_adds() -> None:
    sink, failures = Sink(), Failures()
    device_events = events(sink, failures, stamped=(("knativebrokerttl", 255),))
    extra = ({"device": "pump-1"}, {"device": "pump-1", "labels": {"room": "a"}})
    v5 = info("pump-1", username="pump-1", protocol_version=ProtocolVersion.MQTT5)
    await device_events.record(v5, CONNECTED_TYPE, extra)
    await device_events.record(info("plain"), DISCONNECTED_TYPE)
    [[first], [second]] = sink.calls
    attributes = dict(first.attributes)
    assert attributes.pop("id") != second["id"]
    assert attributes.pop("time").endswith("Z")
    assert attributes == {
        "specversion": "1.0",
        "source": "mqtt://127.0.0.1:1883",
        "type": CONNECTED_TYPE,
        "subject": "pump-1",
        "mqttclientid": "pump-1",
        "mqttprotocol": "5.0",
        "mqttusername": "pump-1",
        "knativebrokerttl": 255,
        "device": "pump-1",
        "datacontenttype": "application/json",
    }
    assert orjson.loads(first.data) == {"device": "pump-1", "labels": {"room": "a"}}
    assert second.type == DISCONNECTED_TYPE
    assert second["mqttprotocol"] == "3.1.1"
    assert "mqttusername" not in second.attributes and second.data is None
    # Built without the validator, but exactly what it would have made.
    for event in (first, second):
        assert CloudEvent(event.attributes, event.data) == event
    assert failures.count == 0


async def test_the_events_of_one_window_are_one_append_in_order() -> None:
    sink, failures = Sink(), Failures()
    device_events = events(sink, failures)
    waiters = [device_events.record(info(f"dev-{n}"), CONNECTED_TYPE) for n in range(50)]
    await asyncio.gather(*waiters)
    assert len(sink.calls) == 1
    assert [e["subject"] for e in sink.calls[0]] == [f"dev-{n}" for n in range(50)]


async def test_a_waiter_cancelled_leaves_its_batch_and_the_others_alone() -> None:
    sink, failures = Sink(), Failures()
    sink.gate = asyncio.Event()
    device_events = events(sink, failures)

    async def wait(client_id: str) -> None:
        await device_events.record(info(client_id), CONNECTED_TYPE)

    gone = asyncio.ensure_future(wait("gone"))
    staying = asyncio.ensure_future(wait("staying"))
    await asyncio.sleep(0)  # both recorded
    gone.cancel()  # its connection closed while it waited
    sink.gate.set()
    await staying
    assert gone.cancelled()
    assert [e["subject"] for e in sink.calls[0]] == ["gone", "staying"]  # nothing lost
    assert failures.count == 0


async def test_a_failed_append_counts_and_logs_each_event_and_releases_the_waiters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, failures = Sink(), Failures()
    sink.failure = OSError("disk gone")
    device_events = events(sink, failures)
    with caplog.at_level(logging.WARNING, "test.device_events"):
        await asyncio.gather(
            device_events.record(info("a"), CONNECTED_TYPE),
            device_events.record(info("b"), CONNECTED_TYPE),
        )
    assert failures.count == 2
    # The throttle: one line for the first, the second counted into the next one.
    [line] = [r.getMessage() for r in caplog.records]
    assert "dev.headwater.device.connected event for a failed: disk gone" in line


async def test_an_append_past_its_deadline_fails_and_releases_the_waiters() -> None:
    sink, failures = Sink(), Failures()
    sink.gate = asyncio.Event()  # never set: the log hangs
    device_events = events(sink, failures, timeout=0.05)
    await device_events.record(info("a"), CONNECTED_TYPE)
    assert failures.count == 1 and not sink.calls


@pytest.mark.parametrize(
    "connection",
    [
        pytest.param(info("dev\x7f"), id="client id with a control character"),
        pytest.param(info("dev", username="a\x00b"), id="username with NUL"),
    ],
)
async def test_what_no_cloudevent_can_carry_is_a_counted_failure(
    connection: ClientInfo,
) -> None:
    sink, failures = Sink(), Failures()
    device_events = events(sink, failures)
    await device_events.record(connection, CONNECTED_TYPE)
    assert failures.count == 1
    await device_events.record(info("fine"), CONNECTED_TYPE)
    assert [e["subject"] for call in sink.calls for e in call] == ["fine"]


async def test_a_bad_attribute_from_the_plane_is_a_counted_failure() -> None:
    sink, failures = Sink(), Failures()
    device_events = events(sink, failures)
    for extension in ({"Bad-Name": "x"}, {"device": "a\x00"}, {"count": 1.5}):
        await device_events.record(info(), CONNECTED_TYPE, (extension, {}))
    assert failures.count == 3 and not sink.calls
