"""Tracing: W3C Trace Context in and out of every hop, OpenTelemetry spans over OTLP/HTTP.

How this works: :data:`tracer` is the process's :class:`Tracer`, or ``None``
when tracing is off (the default). Code on the hot path reads it once per
batch or event (``tracer = tracing.tracer``) and does nothing more when it is
None: with tracing off no OpenTelemetry module is even imported.
:func:`installed` sets it for the life of a ``with`` block (``headwater up``,
tests).

* :mod:`headwater.tracing.context`: ``traceparent`` / ``tracestate``, parsed
  and validated as the W3C Recommendation says (pure functions).
* :mod:`headwater.tracing.config`: ``--otlp-endpoint`` and the
  ``OTEL_*`` environment variables.
* :mod:`headwater.tracing.spans`: head sampling and span export.
* :mod:`headwater.tracing.flows`: an event's trace through ingest, the log,
  each Trigger's filter and deliveries, replies and dead letters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from headwater.tracing.config import TracingConfig, TracingConfigError, Viewer, resolve
from headwater.tracing.context import TraceContext, extract, parse_traceparent, parse_tracestate
from headwater.tracing.spans import Kind, Span, Tracer

__all__ = [
    "Kind",
    "Span",
    "TraceContext",
    "Tracer",
    "TracingConfig",
    "TracingConfigError",
    "Viewer",
    "extract",
    "install",
    "installed",
    "parse_traceparent",
    "parse_tracestate",
    "resolve",
    "status",
    "tracer",
    "viewer",
]

tracer: Tracer | None = None
"""The process's tracer; None: tracing is off."""

viewer: Viewer | None = None
"""Where a trace can be seen (``--trace-url``), whether or not this process exports."""


def status() -> dict[str, Any]:
    """What ``/api/v1/status`` says about tracing (the dashboard links with ``traceUrl``)."""
    return {
        "enabled": tracer is not None,
        **(tracer.status() if tracer is not None else {}),
        "traceUrl": viewer.template if viewer is not None else None,
    }


def install(new: Tracer | None) -> Tracer | None:
    """Make ``new`` the process's tracer (None: off); returns the one it replaces."""
    global tracer
    previous, tracer = tracer, new
    return previous


@contextmanager
def installed(new: Tracer) -> Iterator[Tracer]:
    """``new`` is the process's tracer inside the block; closed (flushed) at its end."""
    previous = install(new)
    try:
        yield new
    finally:
        install(previous)
        new.close()
