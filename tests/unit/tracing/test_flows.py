"""An event's trace through a Broker in process: replies, dead letters, log lines."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from headwater import tracing
from headwater.cloudevents import CloudEvent
from headwater.eventing import (
    Broker,
    DeliveryError,
    DeliverySpec,
    Ingress,
    RecordingSink,
    Trigger,
)
from headwater.log import MemoryLog
from headwater.logs import JsonFormatter
from headwater.tracing import Kind, TraceContext, Tracer, TracingConfig, parse_traceparent
from headwater.tracing.flows import Publish, event_context, ingest, ingest_mqtt
from tests.helpers import WAIT

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"


class Exported:
    def __init__(self, exporter: InMemorySpanExporter, tracer: Tracer) -> None:
        self.exporter, self.tracer = exporter, tracer

    def spans(self) -> list[ReadableSpan]:
        self.tracer.flush()
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


def install(sampling: float = 1.0, dead_letters: bool = True) -> Iterator[Exported]:
    exporter = InMemorySpanExporter()
    config = TracingConfig(
        endpoint="http://127.0.0.1:9/v1/traces", sampling=sampling, dead_letters=dead_letters
    )
    tracer = Tracer(config, exporter=exporter)
    with tracing.installed(tracer):
        yield Exported(exporter, tracer)


@pytest.fixture
def traced() -> Iterator[Exported]:
    yield from install()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with MemoryLog() as log, Broker("default", "b", log) as b:
        yield b


def event(i: int, **extra: object) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(i), "source": "/t", "type": "t", **extra})


def hex_id(value: int) -> str:
    return f"{value:016x}"


async def failing_trigger(broker: Broker, error: DeliveryError, retry: int = 0) -> RecordingSink:
    """A Trigger "bad" whose subscriber always fails with ``error``; its dead letter sink."""

    async def refuse(e: CloudEvent) -> None:
        raise error

    dls = RecordingSink()
    spec = DeliverySpec(retry=retry, backoff_delay=0.001, dead_letter_sink=dls, dead_letter_uri="d")
    await broker.add_trigger(Trigger("bad", RecordingSink(refuse), delivery=spec))
    return dls


async def test_an_event_without_context_starts_a_trace_kept_with_it(
    traced: Exported, broker: Broker
) -> None:
    sink = RecordingSink()
    await broker.add_trigger(Trigger("all", sink))
    await broker.accept([event(1)])
    (got,) = await sink.wait_for(1)
    context = event_context(got)
    assert context is not None and context.sampled
    accept = traced.named("accept broker/default/b")[0]
    (attempt,) = traced.named("deliver")
    assert attempt.context is not None and accept.context is not None
    assert f"{attempt.context.trace_id:032x}" == context.trace_id
    assert hex_id(attempt.context.span_id) == context.span_id  # sent under its attempt
    (trigger,) = traced.named("Trigger default/all")
    assert trigger.parent is not None and trigger.parent.span_id == accept.context.span_id


async def test_a_reply_is_stored_under_the_reply_span(traced: Exported, broker: Broker) -> None:
    replies = RecordingSink()
    await broker.add_trigger(Trigger("replies", replies, attributes={"type": "reply"}))
    answer = CloudEvent({"specversion": "1.0", "id": "r", "source": "/s", "type": "reply"})
    await broker.add_trigger(
        Trigger("asks", RecordingSink(lambda e: answer), attributes={"type": "t"})
    )
    await broker.accept([event(1, traceparent=f"{PARENT}-01")])
    (reply,) = await replies.wait_for(1)
    context = event_context(reply)
    assert context is not None and context.trace_id == PARENT.split("-")[1]
    (reply_span,) = traced.named("reply")
    assert reply_span.context is not None and reply_span.parent is not None
    # The reply was stored under the reply span: the replies' Trigger continues it.
    (replied,) = [
        s
        for s in traced.named("Trigger default/replies")
        if s.attributes and s.attributes["headwater.filter.matched"]
    ]
    assert replied.parent is not None and replied.parent.span_id == reply_span.context.span_id
    asked = [s.context.span_id for s in traced.named("deliver") if s.context]
    assert reply_span.parent.span_id in asked  # the attempt that got the reply


async def test_a_dead_letter_of_an_unsampled_event_is_recorded_with_its_attempts(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    for exported in install(sampling=0.0):
        dls = await failing_trigger(broker, DeliveryError(500, True, reason="boom"), retry=2)
        with caplog.at_level(logging.WARNING, "headwater.eventing.delivery"):
            await broker.accept([event(1, traceparent=f"{PARENT}-00")])
            (dead,) = await dls.wait_for(1)
        (trigger,) = exported.named("Trigger default/bad")
        assert trigger.attributes is not None
        assert trigger.attributes["headwater.sampled_at_head"] is False
        assert trigger.attributes["headwater.outcome"] == "dead-lettered"
        assert [e.attributes["headwater.attempt"] for e in trigger.events if e.attributes] == [
            1,
            2,
            3,
        ]
        assert not exported.named("deliver")  # the attempts' spans were never recorded
        assert not exported.named("accept broker/default/b")
        (dead_span,) = exported.named("dead-letter")
        context = event_context(dead)
        assert dead_span.context is not None and context is not None
        assert hex_id(dead_span.context.span_id) == context.span_id and context.sampled
        # The line about it carries the ids (structured logs).
        (line,) = [r for r in caplog.records if "gave up" in r.getMessage()]
        fields = JsonFormatter().format(line)
        assert PARENT.split("-")[1] in fields and '"event_id":"1"' in fields


async def test_without_dead_letter_sampling_nothing_is_recorded(broker: Broker) -> None:
    for exported in install(sampling=0.0, dead_letters=False):
        dls = await failing_trigger(broker, DeliveryError(400, False))
        await broker.accept([event(1, traceparent=f"{PARENT}-00"), event(2)])
        dead = {e.id: e for e in await dls.wait_for(2)}
        assert exported.spans() == []
        # The context that came with one is propagated as it came; the other had none.
        assert dead["1"].get("traceparent") == f"{PARENT}-00"
        assert "traceparent" not in dead["2"]


def test_a_filtered_out_event_ends_its_trigger_span() -> None:
    for exported in install():
        from headwater.tracing.flows import DeliveryTrace

        parent = TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
        trace = DeliveryTrace(exported.tracer, event(1, traceparent=parent.traceparent), "T", "d")
        trace.filtered(False)
        (span,) = exported.spans()
        assert span.attributes is not None and span.attributes["headwater.filter.matched"] is False
        assert span.parent is not None and hex_id(span.parent.span_id) == parent.span_id


async def test_an_ingress_span_starts_when_the_request_arrives(traced: Exported) -> None:
    """The SERVER span covers the whole request: reading a slow body is in it."""
    looked_up, rest = asyncio.Event(), asyncio.Event()

    class Accepting:  # what the ingress needs of a Broker
        max_event_size = 1024

        async def accept(self, events: Sequence[CloudEvent]) -> list[int]:
            return list(range(len(events)))

    def lookup(namespace: str, name: str) -> Accepting:
        looked_up.set()  # the headers are in; the body is not yet
        return Accepting()

    app = web.Application()
    Ingress(lookup).add_routes(app)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"a": '
        await rest.wait()
        yield b"1}"

    headers = {
        **{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
        **{"content-type": "application/json", "traceparent": f"{PARENT}-01"},
    }
    async with TestClient(TestServer(app)) as client:
        request = asyncio.create_task(client.post("/default/b", headers=headers, data=body()))
        await asyncio.wait_for(looked_up.wait(), WAIT)
        body_pending = time.time_ns()
        rest.set()
        assert (await request).status == 202
    (span,) = traced.named("POST /{namespace}/{name}")
    assert span.start_time is not None and span.start_time < body_pending


async def test_an_unsampled_event_without_context_goes_through_without_one(
    broker: Broker,
) -> None:
    """Not sampled at the head and none came with it: nothing is stamped, stored or
    sent (see the flows module: such a context would record nothing anywhere)."""
    for exported in install(sampling=0.0):
        sink = RecordingSink()
        await broker.add_trigger(Trigger("all", sink))
        await broker.accept([event(1)])
        (got,) = await sink.wait_for(1)
        assert "traceparent" not in got and "tracestate" not in got
        async with broker.log.reader(broker.stream, "probe") as reader:
            (entry,) = await reader.next_batch(10)
        assert "traceparent" not in entry.event  # nothing stored either
        assert exported.spans() == []


def test_an_unsampled_incoming_context_is_stored_as_it_came() -> None:
    """W3C Trace Context 3.4: "A vendor receiving a traceparent request header MUST
    send it to outgoing requests"; not recorded, so no span id of Headwater's."""
    for exported in install(sampling=1.0):
        incoming = f"{PARENT}-00"
        publish = Publish("t", 1, (("traceparent", incoming), ("tracestate", "congo=t61")))
        (stored,), spans = ingest_mqtt(
            exported.tracer, [event(1)], [publish], client_id="c", received=time.time()
        )
        assert spans is None
        assert (stored.get("traceparent"), stored.get("tracestate")) == (incoming, "congo=t61")


def test_an_invalid_context_is_dropped_when_not_sampled() -> None:
    """A malformed extension is ignored (the trace restarts, W3C): unsampled, the
    event keeps none of it (nor a tracestate without a valid traceparent)."""
    for exported in install(sampling=0.0):
        bad = event(1, traceparent="00-" + "0" * 32 + "-00f067aa0ba902b7-01", tracestate="a=1")
        (stored,), spans = ingest(
            exported.tracer, [bad], [None], name="n", kind=Kind.INTERNAL, start=0, attributes={}
        )
        assert spans is None
        assert "traceparent" not in stored and "tracestate" not in stored
        assert (stored.id, stored.source) == ("1", "/t")


async def test_a_dead_letter_of_an_event_without_context_is_a_trace_of_its_own(
    broker: Broker,
) -> None:
    """Always recorded (dead letters), though the head said no and no context came:
    the Trigger's span is the root of a new trace, the dead letter carries it."""
    for exported in install(sampling=0.0):
        dls = await failing_trigger(broker, DeliveryError(500, True, reason="boom"), retry=1)
        await broker.accept([event(1)])
        (dead,) = await dls.wait_for(1)
        (trigger,) = exported.named("Trigger default/bad")
        assert trigger.parent is None and trigger.context is not None
        assert trigger.attributes is not None
        assert trigger.attributes["headwater.sampled_at_head"] is False
        assert [e.attributes["headwater.attempt"] for e in trigger.events if e.attributes] == [
            1,
            2,
        ]
        (dead_span,) = exported.named("dead-letter")
        context = event_context(dead)
        assert context is not None and dead_span.context is not None
        assert context.trace_id == f"{trigger.context.trace_id:032x}"
        assert hex_id(dead_span.context.span_id) == context.span_id


def test_a_new_root_is_sampled_by_the_low_64_bits_of_its_trace_id() -> None:
    """The same rule as OpenTelemetry's TraceIdRatioBased, so a downstream sampler
    using it agrees; and the ids are valid."""
    for ratio, low, high in ((0.0, 0, 0), (1.0, 4000, 4000), (0.5, 1600, 2400)):
        for exported in install(sampling=ratio):
            values = [exported.tracer.new_root() for _ in range(4000)]
            roots = [v for v in values if v is not None]
            assert low <= len(roots) <= high  # 10 standard deviations either side at 0.5
            for value in roots:
                context = parse_traceparent(value)
                assert context is not None and context.sampled and context.traceparent == value
                assert int(context.trace_id[16:], 16) < ratio * 2**64


async def test_the_head_decides_once_for_what_came_through_an_ingress(broker: Broker) -> None:
    """An event the ingress did not sample (and left without a context) gets no
    second draw at the Broker: no ``accept`` span, ever, for what came by HTTP."""
    for exported in install(sampling=0.5):
        app = web.Application()
        Ingress(lambda namespace, name: broker).add_routes(app)
        headers = {"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"}
        async with TestClient(TestServer(app)) as client:
            for i in range(100):
                response = await client.post("/default/b", headers={**headers, "ce-id": str(i)})
                assert response.status == 202
        names = {span.name for span in exported.spans()}
        assert "POST /{namespace}/{name}" in names  # about half were sampled there
        assert not any(name.startswith("accept ") for name in names)
