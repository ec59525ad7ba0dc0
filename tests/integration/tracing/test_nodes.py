"""One trace across two nodes that share a JetStream log: the context travels in the event.

Node A's Broker stores an event (its ingest starts the trace); node B, with
its own log client and its own tracer (service name), runs the Trigger on
the same stream (from its start, as a node that joins later would replay).
Nothing passes between them but the stored event, so B's
Trigger span can be A's ingest span's child only through the event's
``traceparent`` extension. Spans go to a real OTLP/HTTP receiver.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater import tracing
from headwater.cloudevents import CloudEvent
from headwater.eventing import Broker, RecordingSink, Trigger
from headwater.log import EARLIEST, JetStreamLog
from headwater.tracing import Tracer, TracingConfig
from headwater.tracing.flows import event_context
from tests.otlp import OtlpReceiver, one, threaded_receiver
from tests.servers import NatsServer

pytestmark = pytest.mark.integration


def node_tracer(otlp: OtlpReceiver, name: str, monkeypatch: pytest.MonkeyPatch) -> Tracer:
    monkeypatch.setenv("OTEL_SERVICE_NAME", name)
    return Tracer(TracingConfig(endpoint=f"{otlp.url}/v1/traces"), schedule_delay=0.02)


async def test_a_trigger_on_another_node_continues_the_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reading = CloudEvent({"specversion": "1.0", "id": "r-1", "source": "/s1", "type": "t"})
    # The receiver serves from its own thread: leaving `installed` flushes the
    # tracer, which waits for the export.
    with NatsServer(tmp_path / "nats") as nats, threaded_receiver() as otlp:
        async with JetStreamLog(nats.url) as log_a, JetStreamLog(nats.url) as log_b:
            with tracing.installed(node_tracer(otlp, "node-a", monkeypatch)):
                async with Broker("default", "b", log_a) as node_a:
                    await node_a.accept([reading])
            sink = RecordingSink()
            with tracing.installed(node_tracer(otlp, "node-b", monkeypatch)):
                async with Broker("default", "b", log_b) as node_b:
                    await node_b.add_trigger(Trigger("on-b", sink, start=EARLIEST))
                    (delivered,) = await sink.wait_for(1)
        spans = otlp.wait_for_sync(lambda s: len(s) >= 4)
    accept = one(spans, "accept broker/default/b")
    assert accept.resource["service.name"] == "node-a" and accept.parent_span_id == ""
    trigger = one(spans, "Trigger default/on-b")
    assert trigger.resource["service.name"] == "node-b"
    assert trigger.trace_id == accept.trace_id
    assert trigger.parent_span_id == accept.span_id and trigger.parent_is_remote
    attempt = one(spans, "deliver")
    assert attempt.parent_span_id == trigger.span_id
    context = event_context(delivered)
    assert context is not None
    assert (context.trace_id, context.span_id) == (accept.trace_id, attempt.span_id)
