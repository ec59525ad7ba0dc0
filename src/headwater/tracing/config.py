"""Whether and how Headwater traces: ``--otlp-endpoint`` and the OpenTelemetry variables.

How this works: :func:`resolve` turns the ``headwater up`` options and the
process environment into a :class:`TracingConfig`, or ``None`` when tracing
is off (the default: no endpoint given anywhere). It reads the variables the
OpenTelemetry specification defines ("SDK Environment Variables"), so that a
Headwater behaves like any other OpenTelemetry-instrumented service:

======================================  ============================================
``OTEL_EXPORTER_OTLP_ENDPOINT``         base URL; spans go to ``{base}/v1/traces``
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``  the traces URL, used as is
``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``  read by the exporter (``key=value,...``),
``..._TIMEOUT``, ``..._COMPRESSION``,   as are the TLS files
``..._CERTIFICATE``
``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` ``http/protobuf`` (the only one spoken here)
``OTEL_TRACES_EXPORTER``                ``otlp`` (default) or ``none`` (off)
``OTEL_SDK_DISABLED``                   ``true``: off
``OTEL_TRACES_SAMPLER`` (+ ``_ARG``)    ``parentbased_traceidratio`` and the rest of
                                        the spec's built-in samplers
``OTEL_SERVICE_NAME``,                  the resource (default service.name
``OTEL_RESOURCE_ATTRIBUTES``            ``headwater``)
======================================  ============================================

A command-line option wins over its variable. A value that cannot work (a
ratio outside 0..1, the gRPC protocol, an unknown sampler) is a
:class:`TracingConfigError` naming the option or variable, raised before
anything starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["TracingConfig", "TracingConfigError", "Viewer", "resolve", "traces_url"]

TRACES_PATH: Final = "v1/traces"


class TracingConfigError(ValueError):
    """A tracing setting that cannot work; the message names the option or variable."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """Tracing, on. ``endpoint`` is the OTLP/HTTP traces URL (None: the exporter
    reads it from the environment).

    ``sampling`` is the head sampling ratio of new traces (0..1);
    ``parent_based`` makes an incoming ``sampled`` flag decide instead
    (OpenTelemetry's ``parentbased_*`` samplers, the default).
    ``dead_letters``: an event given up on is traced even when the head said
    no (see :mod:`headwater.tracing.flows` for what is recorded then).
    ``trace_url`` is a viewer's address for one trace, ``{trace_id}`` in it
    (``http://localhost:16686/trace/{trace_id}`` for Jaeger).
    """

    endpoint: str | None = None
    sampling: float = 1.0
    parent_based: bool = True
    dead_letters: bool = True
    trace_url: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.sampling <= 1.0:
            raise TracingConfigError(f"the sampling ratio must be within 0..1, not {self.sampling}")
        if self.trace_url is not None:
            Viewer(self.trace_url)


@dataclass(frozen=True, slots=True)
class Viewer:
    """A trace viewer's address for one trace: ``template`` with ``{trace_id}`` in it."""

    template: str

    def __post_init__(self) -> None:
        if "{trace_id}" not in self.template or not self.template.startswith(
            ("http://", "https://")
        ):
            raise TracingConfigError(
                f"--trace-url {self.template!r} must be an http(s) URL with {{trace_id}} "
                "where the trace goes (e.g. http://localhost:16686/trace/{trace_id})"
            )

    def url(self, trace_id: str) -> str:
        return self.template.replace("{trace_id}", trace_id)


def traces_url(base: str) -> str:
    """The traces URL for an endpoint given as a base (``http://collector:4318``),
    as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is ("/v1/traces" appended); a URL that
    already ends in ``/v1/traces`` is used as is."""
    if not base.startswith(("http://", "https://")):
        raise TracingConfigError(
            f"--otlp-endpoint {base!r} is not an http:// or https:// URL "
            "(Headwater exports OTLP over HTTP, usually port 4318)"
        )
    if base.rstrip("/").endswith("/" + TRACES_PATH):
        return base
    return base.rstrip("/") + "/" + TRACES_PATH


_SAMPLERS: Final = {
    "always_on": (False, 1.0),
    "always_off": (False, 0.0),
    "traceidratio": (False, None),
    "parentbased_always_on": (True, 1.0),
    "parentbased_always_off": (True, 0.0),
    "parentbased_traceidratio": (True, None),
}


def resolve(
    *,
    endpoint: str | None = None,
    sampling: float | None = None,
    dead_letters: bool = True,
    trace_url: str | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TracingConfig | None:
    """The tracing of ``headwater up`` from its options and ``environ``; None when off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "none":
        return None
    from_env = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if endpoint is None and not from_env:
        return None
    if exporter != "otlp":
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER={exporter}: Headwater exports traces with otlp only"
        )
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = environ.get(name)
        if protocol:
            if protocol.strip() != "http/protobuf":
                raise TracingConfigError(
                    f"{name}={protocol}: Headwater exports OTLP over http/protobuf only"
                )
            break
    parent_based, ratio = _sampler(environ)
    return TracingConfig(
        endpoint=traces_url(endpoint) if endpoint is not None else None,
        sampling=ratio if sampling is None else sampling,
        parent_based=parent_based,
        dead_letters=dead_letters,
        trace_url=trace_url,
    )


def _sampler(environ: Mapping[str, str]) -> tuple[bool, float]:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        known = ", ".join(_SAMPLERS)
        raise TracingConfigError(f"OTEL_TRACES_SAMPLER={name}: not one of {known}")
    parent_based, ratio = _SAMPLERS[name]
    if ratio is None:
        arg = environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(arg)
        except ValueError:
            raise TracingConfigError(
                f"OTEL_TRACES_SAMPLER_ARG={arg}: not a ratio between 0 and 1"
            ) from None
        if not 0.0 <= ratio <= 1.0:
            raise TracingConfigError(f"OTEL_TRACES_SAMPLER_ARG={arg}: not between 0 and 1")
    return parent_based, ratio
