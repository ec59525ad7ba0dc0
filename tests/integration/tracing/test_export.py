"""Spans reach a real OTLP/HTTP receiver through the SDK's exporter, as Headwater made them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from headwater.tracing import Kind, TraceContext, Tracer, TracingConfig
from tests.otlp import OtlpReceiver, one

pytestmark = pytest.mark.integration

PARENT = TraceContext(
    "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1, "congo=t61rcWkgMzE"
)


def tracer_for(otlp: OtlpReceiver, **config: object) -> Tracer:
    return Tracer(
        TracingConfig(endpoint=f"{otlp.url}/v1/traces", **config),  # type: ignore[arg-type]
        schedule_delay=0.02,
    )


async def test_a_span_and_its_child_arrive_with_the_ids_headwater_chose() -> None:
    async with OtlpReceiver() as otlp:
        tracer = tracer_for(otlp)
        try:
            context = tracer.decide(PARENT)
            span = tracer.span(
                "mqtt publish",
                context,
                PARENT,
                kind=Kind.CONSUMER,
                remote=True,
                attributes={"messaging.destination.name": "sensors/a"},
            )
            child = span.child("append broker/default/default")
            child.fail("log full")
            child.end()
            span.event("attempt failed", {"headwater.attempt": 1, "http.response.status_code": 503})
            span.end()
            spans = await otlp.wait_for(lambda s: len(s) == 2)
        finally:
            tracer.close()
    ingest = one(spans, "mqtt publish")
    append = one(spans, "append broker/default/default")
    assert ingest.trace_id == PARENT.trace_id == append.trace_id
    assert ingest.span_id == context.span_id
    assert ingest.parent_span_id == PARENT.span_id
    assert ingest.parent_is_remote
    assert ingest.kind == "CONSUMER"
    assert ingest.trace_state == "congo=t61rcWkgMzE"
    assert ingest.attributes == {"messaging.destination.name": "sensors/a"}
    assert ingest.events == [
        ("attempt failed", {"headwater.attempt": 1, "http.response.status_code": 503})
    ]
    assert append.parent_span_id == ingest.span_id and not append.parent_is_remote
    assert (append.status, append.status_message) == (2, "log full")
    assert ingest.start <= append.start <= append.end <= ingest.end
    assert ingest.resource["service.name"] == "headwater"
    assert "service.version" in ingest.resource


async def test_service_name_from_the_standard_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-7")
    async with OtlpReceiver() as otlp:
        tracer = tracer_for(otlp)
        try:
            tracer.span("x", tracer.decide(None), None).end()
            spans = await otlp.wait_for(lambda s: len(s) == 1)
        finally:
            tracer.close()
    assert spans[0].resource["service.name"] == "gateway-7"
    assert spans[0].parent_span_id == ""


def test_head_sampling_follows_the_parent_or_the_trace_id_ratio() -> None:
    unsampled = TraceContext(PARENT.trace_id, PARENT.span_id, 0)
    on = Tracer(TracingConfig(endpoint="http://127.0.0.1:9/v1/traces", sampling=0.0))
    ratio = Tracer(
        TracingConfig(endpoint="http://127.0.0.1:9/v1/traces", sampling=0.5, parent_based=False)
    )
    try:
        # parent-based: the incoming flag decides, whatever the ratio.
        assert on.decide(PARENT).sampled
        assert not on.decide(unsampled).sampled
        assert not any(on.decide(None).sampled for _ in range(200))
        # TraceIdRatioBased: the low 64 bits of the trace-id under ratio * 2**64.
        low = TraceContext("ffffffffffffffff" + "0" * 15 + "1", "00f067aa0ba902b7", 0)
        high = TraceContext("0" * 16 + "f" * 16, "00f067aa0ba902b7", 1)
        assert ratio.decide(low).sampled
        assert not ratio.decide(high).sampled
        sampled = sum(ratio.decide(None).sampled for _ in range(4000))
        assert 1600 < sampled < 2400  # 2000 expected; 10 standard deviations either side
    finally:
        on.close()
        ratio.close()


def test_a_child_context_keeps_trace_and_state_with_a_new_span_id() -> None:
    tracer = Tracer(TracingConfig(endpoint="http://127.0.0.1:9/v1/traces"))
    try:
        child = tracer.decide(PARENT)
    finally:
        tracer.close()
    assert (child.trace_id, child.tracestate, child.sampled) == (
        PARENT.trace_id,
        PARENT.tracestate,
        True,
    )
    assert child.span_id != PARENT.span_id


def test_tracing_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys\n"
        "import headwater.cli, headwater.runtime, headwater.api.server, headwater.tracing\n"
        "import headwater.sources.mqttbroker, headwater.eventing.dispatcher\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
