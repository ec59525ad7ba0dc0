"""MqttSink over a recording publisher: topics, content modes, errors, request/response."""

from __future__ import annotations

import asyncio

import pytest

from headwater.cloudevents import CloudEvent, from_json
from headwater.cloudevents.mqtt import from_mqtt, to_mqtt
from headwater.eventing import DeliveryError
from headwater.mqtt.client import ConnectionLost
from headwater.sinks.mqtt import RESPONSE_TYPE, MqttSink, Response


class Recorder:
    def __init__(self, version: int = 5, fail: bool = False) -> None:
        self.version = version
        self.fail = fail
        self.published: list[dict[str, object]] = []
        self.waiting: dict[str, asyncio.Future[Response]] = {}

    async def publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, **kw: object
    ) -> None:
        if self.fail:
            raise ConnectionLost("broker down")
        self.published.append(
            {"topic": topic, "payload": payload, "qos": qos, "retain": retain, **kw}
        )

    def expect_response(self, topic: str) -> asyncio.Future[Response]:
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.waiting[topic] = future
        return future


COMMAND = CloudEvent(
    {
        "specversion": "1.0",
        "id": "c1",
        "source": "/ops",
        "type": "dev.headwater.command",
        "subject": "dev-1",
        "room": "north",
        "datacontenttype": "application/json",
    },
    b'{"on": true}',
)


async def test_binary_mode_topic_template_qos_retain() -> None:
    rec = Recorder()
    sink = MqttSink("rooms/{ext.room}/{subject}/cmd", rec, qos=2, retain=True)
    assert await sink.deliver(COMMAND) is None
    (p,) = rec.published
    assert p["topic"] == "rooms/north/dev-1/cmd"
    assert p["qos"] == 2 and p["retain"] is True
    assert p["response_topic"] is None and p["correlation_data"] is None
    decoded = from_mqtt(p["payload"], p["content_type"], p["user_properties"])  # type: ignore[arg-type]
    assert decoded == COMMAND


async def test_structured_mode_and_mqtt311() -> None:
    for rec, mode in ((Recorder(), "structured"), (Recorder(version=4), "binary")):
        await MqttSink("t", rec, mode=mode).deliver(COMMAND)  # type: ignore[arg-type]
        assert from_json(rec.published[0]["payload"]) == COMMAND  # type: ignore[arg-type]


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("mode", ["binary", "structured"])
async def test_the_events_trace_context_goes_out_as_user_properties(mode: str) -> None:
    # Trace Context: MQTT: a device subscribed to the topic continues the trace
    # from the `traceparent` User Property, whatever the CloudEvents mode.
    rec = Recorder()
    traced = COMMAND._stamped("traceparent", TRACEPARENT)
    await MqttSink("t", rec, mode=mode).deliver(traced)  # type: ignore[arg-type]
    properties = rec.published[0]["user_properties"]
    assert ("traceparent", TRACEPARENT) in properties  # type: ignore[operator]
    decoded = from_mqtt(rec.published[0]["payload"], rec.published[0]["content_type"], properties)  # type: ignore[arg-type]
    assert decoded == traced


async def test_an_event_without_trace_context_goes_out_without_one() -> None:
    rec = Recorder()
    await MqttSink("t", rec, mode="structured").deliver(COMMAND)
    assert all(name != "traceparent" for name, _ in rec.published[0]["user_properties"])  # type: ignore[attr-defined]


@pytest.mark.parametrize("topic", ["d/{ext.nope}", "d/{source}/x/{ext.bad}"])
async def test_missing_or_unsafe_values_are_permanent_errors(topic: str) -> None:
    event = COMMAND.evolve({"bad": "a/+"})
    with pytest.raises(DeliveryError) as info:
        await MqttSink(topic, Recorder()).deliver(event)
    assert info.value.status == 400 and not info.value.retryable


async def test_broker_down_is_retryable() -> None:
    with pytest.raises(DeliveryError) as info:
        await MqttSink("t", Recorder(fail=True)).deliver(COMMAND)
    assert info.value.status == 503 and info.value.retryable


async def test_request_response_builds_a_reply() -> None:
    rec = Recorder()
    sink = MqttSink("d/{subject}", rec, response_prefix="resp", response_timeout=2)
    task = asyncio.create_task(sink.deliver(COMMAND.evolve({"correlationid": "k9"})))
    for _ in range(100):
        if rec.waiting:
            break
        await asyncio.sleep(0.01)
    (p,) = rec.published
    assert p["response_topic"] == "resp/c1"
    assert p["correlation_data"] == b"k9"
    rec.waiting["resp/c1"].set_result(Response(b'{"done": 1}'))
    reply = await task
    assert reply is not None
    assert reply.type == RESPONSE_TYPE
    assert reply.id == "c1.response"
    assert reply.subject == "dev-1"
    assert reply["correlationid"] == "k9"
    assert reply.datacontenttype == "application/json"


async def test_a_response_that_is_a_cloudevent_is_taken_as_is() -> None:
    rec = Recorder()
    sink = MqttSink("d", rec, response_prefix="resp")
    task = asyncio.create_task(sink.deliver(COMMAND.evolve({"correlationid": "k"})))
    await asyncio.sleep(0.01)
    answer = CloudEvent({"specversion": "1.0", "id": "a1", "source": "/dev", "type": "x.done"})
    m = to_mqtt(answer)
    rec.waiting["resp/c1"].set_result(Response(m.payload, m.content_type, m.user_properties))
    reply = await task
    assert reply is not None and reply.id == "a1" and reply["correlationid"] == "k"


async def test_no_response_in_time_is_a_retryable_timeout() -> None:
    sink = MqttSink("d", Recorder(), response_timeout=0.05)
    with pytest.raises(DeliveryError) as info:
        await sink.deliver(COMMAND.evolve({"correlationid": "k"}))
    assert info.value.status == 504 and info.value.retryable
