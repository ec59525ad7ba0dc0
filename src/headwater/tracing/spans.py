"""Spans, decided by Headwater and exported by the OpenTelemetry SDK over OTLP/HTTP.

How this works: a :class:`Tracer` owns the OpenTelemetry SDK pipeline: a
:class:`~opentelemetry.sdk.trace.export.BatchSpanProcessor` (a bounded queue
and a thread that exports in batches) in front of the SDK's
``OTLPSpanExporter``. It is built only when tracing is on, and it is the only
place that imports OpenTelemetry, so a Headwater without tracing loads none
of it.

The recording decision is taken before any SDK object exists:
:meth:`Tracer.decide` gives the context of a new span with its ``sampled``
flag, at the cost of a random number and a comparison, so that the events not
sampled (99 of 100 at 1%) cost no more than that. The rule is OpenTelemetry's
``ParentBased(TraceIdRatioBased(ratio))`` (or ``TraceIdRatioBased`` alone
without ``parent_based``): an incoming ``sampled`` flag decides when there is
one; a new trace is sampled when the low 64 bits of its trace-id are under
``ratio * 2**64``, the same rule the SDK's sampler applies, so every service
of a trace that uses it agrees on the same traces.

A sampled span is a light :class:`Span` (slots, a dict of attributes) while it
runs, and becomes the SDK's ``ReadableSpan`` only when it ends, with the ids
Headwater chose: a span's id has to exist before the span is recorded (it
goes out as ``traceparent`` with the event), and the spans of a dead letter
are recorded after the fact (see :mod:`headwater.tracing.flows`), neither of
which the SDK's ``Tracer`` allows. Export is the SDK's from there: batches,
the OTLP/HTTP protobuf encoding, retries, ``OTEL_EXPORTER_OTLP_*``.

The export thread's failures (a collector that is down) are logged through
:class:`~headwater.logs.Throttle`: one line a minute, with a count.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from headwater import __version__
from headwater.logs import Throttle
from headwater.tracing.config import TracingConfig
from headwater.tracing.context import SAMPLED, TraceContext, new_span_id

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["SERVICE_NAME", "AttributeValue", "Kind", "Span", "Tracer"]

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "headwater"
"""``service.name`` unless ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` say otherwise."""

_LOW_64: Final = (1 << 64) - 1

AttributeValue = str | bool | int | float | Sequence[str]


class Kind(enum.IntEnum):
    """OpenTelemetry's SpanKind, by value (no import of the API needed to name one)."""

    INTERNAL = 0
    SERVER = 1
    CLIENT = 2
    PRODUCER = 3
    CONSUMER = 4


class Span:
    """A span being recorded; :meth:`end` hands it to the exporter (once).

    ``context`` is the span's own position (what goes out as ``traceparent``),
    ``parent`` the span it is a child of (``remote``: of another process).
    Times are nanoseconds since the epoch, as OpenTelemetry counts them.
    """

    __slots__ = (
        "_ended",
        "_tracer",
        "attributes",
        "context",
        "error",
        "events",
        "kind",
        "name",
        "parent",
        "remote",
        "start",
    )

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        context: TraceContext,
        parent: TraceContext | None,
        *,
        kind: Kind = Kind.INTERNAL,
        remote: bool = False,
        start: int | None = None,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        self._tracer = tracer
        self.name = name
        self.context = context
        self.parent = parent
        self.kind = kind
        self.remote = remote
        self.start = time.time_ns() if start is None else start
        self.attributes: dict[str, AttributeValue] = attributes if attributes is not None else {}
        self.events: list[tuple[str, int, dict[str, AttributeValue]]] = []
        self.error: str | None = None
        self._ended = False

    def child(
        self,
        name: str,
        *,
        kind: Kind = Kind.INTERNAL,
        start: int | None = None,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> Span:
        """A span under this one (same trace, recorded too)."""
        context = self.context.child(new_span_id(), True)
        return Span(
            self._tracer,
            name,
            context,
            self.context,
            kind=kind,
            start=start,
            attributes=attributes,
        )

    def event(
        self, name: str, attributes: dict[str, AttributeValue], at: int | None = None
    ) -> None:
        self.events.append((name, time.time_ns() if at is None else at, attributes))

    def fail(self, description: str) -> None:
        """Mark the span's status as an error (OpenTelemetry's ``StatusCode.ERROR``)."""
        self.error = description

    def end(self, at: int | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._tracer._export(self, time.time_ns() if at is None else at)


class Tracer:
    """Head sampling and span export for one process. ``close()`` flushes what is left.

    ``exporter`` replaces the OTLP/HTTP exporter (tests); ``schedule_delay``
    is the batch processor's wait between exports in seconds (the SDK's
    default 5, or ``OTEL_BSP_SCHEDULE_DELAY``).
    """

    def __init__(
        self,
        config: TracingConfig,
        *,
        exporter: SpanExporter | None = None,
        schedule_delay: float | None = None,
    ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.config = config
        self._bound = round(config.sampling * (1 << 64))
        self._parent_based = config.parent_based
        resource = Resource.create({"service.version": __version__})
        # The SDK's default name ("unknown_service:python") unless OTEL_SERVICE_NAME
        # or OTEL_RESOURCE_ATTRIBUTES named the service.
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self._resource = _hashed(resource)
        self._readable = _converter(self._resource, InstrumentationScope("headwater", __version__))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            # The exporter logs every failed or retried export (a collector that is
            # down: a line every few seconds); one a minute per kind, with a count.
            for name in _SDK_LOGGERS:
                _throttle_sdk(logging.getLogger(name))

            exporter = OTLPSpanExporter(endpoint=config.endpoint)
        self._exporter = _Watched(exporter)
        delay = None if schedule_delay is None else schedule_delay * 1000
        self._processor = BatchSpanProcessor(
            cast("SpanExporter", self._exporter), schedule_delay_millis=delay
        )
        #: Spans handed to the exporter so far.
        self.spans = 0

    @property
    def endpoint(self) -> str | None:
        return self.config.endpoint

    # -- decisions ------------------------------------------------------------------

    def decide(self, parent: TraceContext | None) -> TraceContext:
        """The context of a new span under ``parent`` (a new trace when None), with
        its recording decision in the ``sampled`` flag."""
        if parent is None:
            while True:
                trace_id = random.getrandbits(128)
                if trace_id:
                    break
            sampled = (trace_id & _LOW_64) < self._bound
            return TraceContext(f"{trace_id:032x}", new_span_id(), SAMPLED if sampled else 0)
        return parent.child(new_span_id(), self.sampled(parent))

    def new_root(self) -> str | None:
        """The ``traceparent`` of a new trace's first span when the head samples it,
        else None: :meth:`decide` for no parent, as one string (the hot path of ingest).

        The low 64 bits of the trace-id, which decide, are drawn first: an event
        not sampled (99 in 100 at 1%) costs that draw and a comparison. The ids of
        a sampled one are those :meth:`decide` would draw (its other 64 bits and a
        span-id, neither all zeros), so the rule and the odds are the same.
        """
        low = random.getrandbits(64)
        if low >= self._bound:
            return None
        while True:
            bits = random.getrandbits(128)  # the trace-id's high 64 bits, then the span-id
            if bits & _LOW_64 and (low or bits >> 64):  # neither id all zeros
                break
        return f"00-{bits >> 64:016x}{low:016x}-{bits & _LOW_64:016x}-01"

    def sampled(self, parent: TraceContext) -> bool:
        """Whether work under ``parent`` is recorded."""
        if self._parent_based:
            return parent.sampled
        return int(parent.trace_id[16:], 16) < self._bound

    # -- spans ----------------------------------------------------------------------

    def span(
        self,
        name: str,
        context: TraceContext,
        parent: TraceContext | None,
        *,
        kind: Kind = Kind.INTERNAL,
        remote: bool = False,
        start: int | None = None,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> Span:
        """A span at ``context`` (from :meth:`decide`), recorded whatever its flag says
        (the caller decided); ``remote`` when ``parent`` came from another process."""
        if not context.sampled:
            context = TraceContext(context.trace_id, context.span_id, SAMPLED, context.tracestate)
        return Span(
            self,
            name,
            context,
            parent,
            kind=kind,
            remote=remote,
            start=start,
            attributes=attributes,
        )

    def _export(self, span: Span, end: int) -> None:
        self.spans += 1
        self._processor.on_end(self._readable(span, end))

    def flush(self, timeout: float = 30.0) -> bool:
        """Export what is queued now (blocking: call it from a thread in async code)."""
        return self._processor.force_flush(int(timeout * 1000))

    def close(self) -> None:
        """Export what is left and stop the export thread (blocking, as :meth:`flush`)."""
        self._processor.shutdown()  # type: ignore[no-untyped-call]

    def status(self) -> dict[str, Any]:
        return {
            "endpoint": self.config.endpoint,
            "sampling": self.config.sampling,
            "parentBased": self.config.parent_based,
            "deadLetters": self.config.dead_letters,
            "spans": self.spans,
            "exportFailures": self._exporter.failures,
        }


_export_failed = Throttle(log)


def _converter(
    resource: Resource, scope: InstrumentationScope
) -> Callable[[Span, int], ReadableSpan]:
    """What turns an ended :class:`Span` into the SDK's ``ReadableSpan``: the SDK's
    classes and the constant parts bound once, not imported and built per span."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
    from opentelemetry.trace.status import Status, StatusCode

    recorded = TraceFlags(SAMPLED)
    flags = {0: TraceFlags(0), SAMPLED: recorded}
    kinds = [SpanKind(int(kind)) for kind in Kind]
    unset = Status(StatusCode.UNSET)

    def readable(span: Span, end: int) -> ReadableSpan:
        ctx = span.context
        state = TraceState.from_header([ctx.tracestate]) if ctx.tracestate else None
        context = SpanContext(int(ctx.trace_id, 16), int(ctx.span_id, 16), False, recorded, state)
        parent = None
        if span.parent is not None:
            up = span.parent
            parent = SpanContext(
                int(up.trace_id, 16),
                int(up.span_id, 16),
                span.remote,
                flags[up.flags] if up.flags in flags else TraceFlags(up.flags),
                state,
            )
        return ReadableSpan(
            span.name,
            context,
            parent,
            resource,
            span.attributes,
            [Event(name, attributes, at) for name, at, attributes in span.events],
            kind=kinds[span.kind],
            status=unset if span.error is None else Status(StatusCode.ERROR, span.error),
            start_time=span.start,
            end_time=end,
            instrumentation_scope=scope,
        )

    return readable


def _hashed(resource: Resource) -> Resource:
    """The resource, with its hash computed once: the OTLP encoder groups spans by
    resource and hashes it for every span (a JSON dump of its attributes each
    time, a sixth of what encoding a span costs)."""
    from opentelemetry.sdk.resources import Resource

    class HashedResource(Resource):
        def __init__(self, original: Resource) -> None:
            super().__init__(original.attributes, original.schema_url)
            self._hash = super().__hash__()

        def __hash__(self) -> int:
            return self._hash

        def __eq__(self, other: object) -> bool:
            return super().__eq__(other)

    return HashedResource(resource)


_SDK_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
)
_sdk_throttle = Throttle(log)


def _throttle_sdk(logger: logging.Logger) -> None:
    if not any(getattr(f, "throttle", None) is _sdk_throttle for f in logger.filters):
        logger.addFilter(_sdk_throttle.filter())


class _Watched:
    """The exporter, with its failures counted and logged through a throttle."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failures += 1
            _export_failed.warning(
                "export", "trace export failed: %d spans lost (is the collector up?)", len(spans)
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
