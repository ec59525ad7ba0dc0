"""Resource models of the sink kinds: InfluxDBSink, PrometheusSink, HttpSink.

How this works: the same frozen, unknown-field-forbidding pydantic style as
:mod:`headwater.resources.models`, under ``sinks.headwater.dev/v1alpha1``.
Everything that can be checked before running is checked at validation time
(JMESPath expressions compile, metric and label names are legal, durations
parse), so ``headwater apply`` rejects a bad sink with file, line and field.
Secrets are never values in a resource: a spec names the environment
variable that holds a token or password (``tokenEnv``, ``passwordEnv``), read
when the component starts, so ``get -o yaml`` and status never show them.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from headwater.durations import parse_duration
from headwater.resources.models import Duration, Model, Resource
from headwater.sinks import metricspec
from headwater.sinks.influx_target import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MAX_CONCURRENT_WRITES,
    InfluxTarget,
)
from headwater.sinks.lineprotocol import PointMapping, Precision

__all__ = [
    "HttpSink",
    "HttpSinkSpec",
    "InfluxDBSink",
    "InfluxDBSinkSpec",
    "PrometheusMetric",
    "PrometheusSink",
    "PrometheusSinkSpec",
    "TlsOptions",
    "secret_from_env",
]

API_VERSION = "sinks.headwater.dev/v1alpha1"


def _duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


# -- InfluxDBSink -----------------------------------------------------------------


class InfluxDBMapping(Model):
    """How an event becomes a point (see :mod:`headwater.sinks.lineprotocol`)."""

    #: a fixed measurement name; default: the event's ``type``
    measurement: str | None = None
    #: attributes (context attributes or extensions) written as tags of the same name
    tags: list[str] = Field(default_factory=lambda: ["source", "subject"])
    #: field name -> JMESPath over the JSON data; default: every scalar of the data
    fields: dict[str, str] = Field(default_factory=dict)
    #: write JSON integers as InfluxDB integers (``42i``) instead of floats
    integers: bool = False
    precision: Precision = "ns"

    @model_validator(mode="after")
    def _compiles(self) -> InfluxDBMapping:
        self.compile()
        return self

    def compile(self) -> PointMapping:
        return PointMapping.compile(
            measurement=self.measurement,
            tags=self.tags,
            fields=self.fields,
            integers=self.integers,
            precision=self.precision,
        )


class InfluxDBSinkSpec(Model):
    url: str
    #: InfluxDB 1.x: database, retention policy, username and password
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password_env: str | None = None
    #: InfluxDB 1.x: create the database when it is missing (false: only check it is there)
    create_database: bool = True
    #: InfluxDB 2.x: org, bucket and API token
    org: str | None = None
    bucket: str | None = None
    token_env: str | None = None
    mapping: InfluxDBMapping = Field(default_factory=InfluxDBMapping)
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, le=1_000_000)
    flush_interval: Duration = "PT0.01S"
    max_buffered_points: int = Field(default=DEFAULT_MAX_BUFFERED, ge=1)
    max_concurrent_writes: int = Field(default=DEFAULT_MAX_CONCURRENT_WRITES, ge=1, le=64)
    write_timeout: Duration = "PT10S"

    _duration = field_validator("flush_interval", "write_timeout")(_duration)

    @model_validator(mode="after")
    def _consistent(self) -> InfluxDBSinkSpec:
        if self.max_buffered_points < self.batch_size:
            raise ValueError("`maxBufferedPoints` must be at least `batchSize`")
        if self.database is not None and (self.bucket or self.org or self.token_env):
            raise ValueError("use `database` (InfluxDB 1.x) or `org`/`bucket` (2.x), not both")
        self.target(resolve_secrets=False)  # url, database/bucket, org
        return self

    def target(self, *, resolve_secrets: bool = True) -> InfluxTarget:
        """The write target; with ``resolve_secrets`` the password/token are read from the env."""
        return InfluxTarget(
            self.url,
            database=self.database,
            retention_policy=self.retention_policy,
            username=self.username,
            password=secret_from_env(self.password_env) if resolve_secrets else None,
            org=self.org,
            bucket=self.bucket,
            token=secret_from_env(self.token_env) if resolve_secrets else None,
            create_database=self.create_database,
        )


class InfluxDBSink(Resource):
    """Writes each event as a point to InfluxDB 1.x or 2.x, in batches."""

    API_VERSIONS = (API_VERSION,)
    KIND = "InfluxDBSink"
    spec: InfluxDBSinkSpec


# -- PrometheusSink -----------------------------------------------------------------


class PrometheusMetric(Model):
    name: str
    type: Literal["gauge", "counter"] = "gauge"
    help: str = ""
    #: JMESPath over the JSON data; a counter without one counts events
    value: str | None = None
    #: label name -> attribute (context attribute or extension) giving its value
    labels: dict[str, str] = Field(default_factory=dict)
    #: only events of this type update the metric
    event_type: str | None = None

    @model_validator(mode="after")
    def _compiles(self) -> PrometheusMetric:
        self.to_spec()  # the spec refuses bad names and a value that does not compile
        return self

    def to_spec(self) -> metricspec.MetricSpec:
        return metricspec.MetricSpec(
            self.name, self.type, self.help, self.value, dict(self.labels), self.event_type
        )


class PrometheusSinkSpec(Model):
    metrics: list[PrometheusMetric] = Field(min_length=1)
    #: series not updated for this long disappear (a device stopped reporting)
    staleness: Duration = "PT5M"
    max_series: int = Field(default=metricspec.DEFAULT_MAX_SERIES, ge=1)
    #: serve on a port of its own (``/metrics``) instead of Headwater's ``/metrics``
    port: int | None = Field(default=None, ge=0, le=65535)
    host: str = "0.0.0.0"

    _duration = field_validator("staleness")(_duration)

    @field_validator("metrics")
    @classmethod
    def _unique(cls, metrics: list[PrometheusMetric]) -> list[PrometheusMetric]:
        clashing = metricspec.clashing_names([m.name for m in metrics])
        if clashing:
            raise ValueError(
                f"metric names must be unique, a counter's _total suffix set aside: {clashing}"
            )
        return metrics


class PrometheusSink(Resource):
    """Turns telemetry events into gauges and counters for Prometheus."""

    API_VERSIONS = (API_VERSION,)
    KIND = "PrometheusSink"
    spec: PrometheusSinkSpec


# -- HttpSink -------------------------------------------------------------------------


class TlsOptions(Model):
    #: PEM file of the CAs to trust instead of the system's
    ca_file: str | None = None
    #: client certificate and key (PEM) for mutual TLS
    cert_file: str | None = None
    key_file: str | None = None
    #: do not verify the server's certificate (testing only)
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsOptions:
        if self.key_file and not self.cert_file:
            raise ValueError("`keyFile` needs `certFile`")
        return self


class HttpSinkSpec(Model):
    uri: str = Field(pattern=r"^https?://[^/\s]+")
    headers: dict[str, str] = Field(default_factory=dict)
    #: environment variable holding a bearer token (sent as ``Authorization: Bearer``)
    token_env: str | None = None
    #: Knative's content modes: binary (default) or structured (``json``)
    format: Literal["binary", "json"] = "binary"
    tls: TlsOptions | None = None

    @field_validator("headers")
    @classmethod
    def _no_auth_header(cls, headers: dict[str, str]) -> dict[str, str]:
        if any(name.lower() == "authorization" for name in headers):
            raise ValueError("put credentials in `tokenEnv`, not in `headers` (kept out of files)")
        return headers


class HttpSink(Resource):
    """An HTTP destination with headers, a token from the environment and TLS options."""

    API_VERSIONS = (API_VERSION,)
    KIND = "HttpSink"
    spec: HttpSinkSpec


def secret_from_env(name: str | None) -> str | None:
    """Environment variable ``name`` (``None`` for no name); ``LookupError`` if unset."""
    if name is None:
        return None
    value = os.environ.get(name)
    if value is None:
        raise LookupError(f"environment variable {name} is not set")
    return value
