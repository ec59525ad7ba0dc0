"""Resource models of the tier kinds: Uplink and Downlink (edge), Edge (cloud).

How this works: the same frozen, unknown-field-forbidding pydantic style as
:mod:`headwater.resources.models`. Everything that can be checked before
running is checked here (the CESQL filter compiles, durations parse, the
sink of an Uplink is a remote URL), so ``headwater apply`` rejects a bad
resource with file, line and field. Secrets are environment variable names
(``tokenEnv``), read when the component starts.

Why the groups: an ``Uplink`` reads a durable log through its own cursor and
sends what it reads to a ``sink``, which is what Knative's KafkaSource does
with a Kafka topic: a source (``sources.headwater.dev``), for the receiver
it feeds. A ``Downlink`` is a source of commands for a local Broker. An
``Edge`` is where a cloud Trigger delivers commands for one edge:
addressable, like the other sinks (``sinks.headwater.dev``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from headwater.durations import parse_duration
from headwater.resources.models import Destination, Duration, Model, Resource, parse_start
from headwater.resources.sinks import TlsOptions
from headwater.tiers import limits

__all__ = [
    "Downlink",
    "DownlinkSpec",
    "Edge",
    "EdgeSpec",
    "Retention",
    "Uplink",
    "UplinkDelivery",
    "UplinkSpec",
]

SOURCES = "sources.headwater.dev/v1alpha1"
SINKS = "sinks.headwater.dev/v1alpha1"


def _duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def _no_authorization(headers: dict[str, str]) -> dict[str, str]:
    if any(name.lower() == "authorization" for name in headers):
        raise ValueError("put credentials in `tokenEnv`, not in `headers` (kept out of files)")
    return headers


# -- Uplink ---------------------------------------------------------------------------


class UplinkDelivery(Model):
    """How hard and how long an Uplink tries (it never gives up on connectivity)."""

    #: each request's time limit
    timeout: Duration = "PT30S"
    #: the first wait after a failure; it doubles, with jitter, up to ``backoffMax``
    backoff_delay: Duration = "PT0.5S"
    backoff_max: Duration = "PT10S"
    #: where events the receiver refuses for good (400, 413) go, besides the dead letters
    dead_letter_sink: Destination | None = None

    _duration = field_validator("timeout", "backoff_delay", "backoff_max")(_duration)

    @model_validator(mode="after")
    def _bounds(self) -> UplinkDelivery:
        if parse_duration(self.backoff_delay) <= 0:
            raise ValueError("`backoffDelay` must be more than zero")
        if parse_duration(self.backoff_max) < parse_duration(self.backoff_delay):
            raise ValueError("`backoffMax` must be at least `backoffDelay`")
        return self


class UplinkSpec(Model):
    #: the local Broker whose events go up
    broker: str
    #: a CESQL expression: only matching events go up
    filter: str | None = None
    #: where a new Uplink starts: latest (default), earliest, offset:N, time:RFC3339
    start: str | None = None
    #: the remote receiver: a cloud Headwater's or Knative's Broker ingress, any CloudEvents URL
    sink: Destination
    #: auto asks the receiver (OPTIONS); batch = CloudEvents JSON batches; binary/structured
    #: send one event per request (a Knative Broker takes no batches)
    format: Literal["auto", "batch", "binary", "structured"] = "auto"
    compression: Literal["auto", "gzip", "none"] = "auto"
    #: ordered keeps the order per partitionkey (else per source and subject)
    ordering: Literal["ordered", "unordered"] = "ordered"
    #: requests in flight at once (default: 4 with batches, 32 one by one)
    lanes: int | None = Field(default=None, ge=1, le=256)
    max_batch_events: int = Field(default=limits.DEFAULT_MAX_BATCH_EVENTS, ge=1, le=100_000)
    max_batch_bytes: int = Field(default=limits.DEFAULT_MAX_BATCH_BYTES, ge=1024)
    #: how long an idle lane waits for more events before sending a small batch
    linger: Duration = "PT0.1S"
    #: caps the uplink's share of the link (request bytes per second, before gzip)
    max_bytes_per_second: int | None = Field(default=None, ge=1)
    headers: dict[str, str] = Field(default_factory=dict)
    #: environment variable holding a bearer token
    token_env: str | None = None
    tls: TlsOptions | None = None
    delivery: UplinkDelivery = Field(default_factory=UplinkDelivery)

    _duration = field_validator("linger")(_duration)
    _headers = field_validator("headers")(_no_authorization)

    @field_validator("filter")
    @classmethod
    def _cesql(cls, value: str | None) -> str | None:
        if value is not None:
            from headwater import cesql

            try:
                cesql.compile(value)
            except cesql.ParseError as exc:
                raise ValueError(f"invalid CESQL expression: {exc}") from exc
        return value

    @field_validator("start")
    @classmethod
    def _start(cls, value: str | None) -> str | None:
        if value is not None:
            parse_start(value)
        return value

    @field_validator("sink")
    @classmethod
    def _remote(cls, value: Destination) -> Destination:
        if value.ref is not None or not value.uri:
            raise ValueError(
                "an Uplink sends to another tier: its sink is a `uri` "
                "(a Broker's ingress URL, http:// or https://), not a `ref`"
            )
        if not value.uri.startswith(("http://", "https://")):
            raise ValueError(f"`uri` {value.uri!r} must be http:// or https://")
        return value


class Uplink(Resource):
    """Store-and-forward of a local Broker's events to a remote CloudEvents receiver."""

    API_VERSIONS = (SOURCES,)
    KIND = "Uplink"
    spec: UplinkSpec


# -- Edge (cloud) -------------------------------------------------------------------------


class Retention(Model):
    """How much a queue keeps; the oldest go first past any limit."""

    max_age: Duration | None = "P7D"
    max_events: int | None = Field(default=100_000, ge=1)
    max_bytes: int | None = Field(default=None, ge=1024)

    _duration = field_validator("max_age")(_duration)

    def limits(self) -> dict[str, Any]:
        """The queue stream's retention (``StreamConfig``'s keyword arguments)."""
        return {
            "max_age": parse_duration(self.max_age) if self.max_age else None,
            "max_events": self.max_events,
            "max_bytes": self.max_bytes,
        }


class EdgeSpec(Model):
    #: environment variable holding the bearer token this edge pulls with
    token_env: str
    #: the queue of commands waiting for the edge
    retention: Retention = Field(default_factory=Retention)


class Edge(Resource):
    """An edge behind NAT, as a destination: commands for it wait in a durable queue
    until it pulls them (``POST /edges/<namespace>/<name>``)."""

    API_VERSIONS = (SINKS,)
    KIND = "Edge"
    spec: EdgeSpec


# -- Downlink (edge) ----------------------------------------------------------------------


class DownlinkSpec(Model):
    #: this edge's queue in the cloud: https://cloud.example:8080/edges/<namespace>/<edge>
    url: str = Field(pattern=r"^https?://[^/\s]+/")
    #: environment variable holding the bearer token of the cloud's Edge resource
    token_env: str | None = None
    tls: TlsOptions | None = None
    #: where commands go, durably, before they are acknowledged (a local Broker)
    sink: Destination
    #: commands per pull at most
    max_events: int = Field(default=limits.DEFAULT_PULL_EVENTS, ge=1, le=limits.MAX_PULL_EVENTS)
    #: how long the cloud holds a pull open while nothing is queued
    wait: Duration = "PT20S"
    backoff_delay: Duration = "PT0.5S"
    backoff_max: Duration = "PT10S"

    _duration = field_validator("wait", "backoff_delay", "backoff_max")(_duration)

    @model_validator(mode="after")
    def _bounds(self) -> DownlinkSpec:
        if parse_duration(self.wait) > limits.MAX_WAIT:
            raise ValueError(f"`wait` must be at most {limits.MAX_WAIT:g} seconds")
        delay, most = parse_duration(self.backoff_delay), parse_duration(self.backoff_max)
        if not 0 < delay <= most:
            raise ValueError("`backoffDelay` must be more than zero and at most `backoffMax`")
        return self


class Downlink(Resource):
    """Commands from a cloud Headwater's Edge queue, pulled over an outbound connection."""

    API_VERSIONS = (SOURCES,)
    KIND = "Downlink"
    spec: DownlinkSpec
