"""Pydantic models of every resource kind, in Knative's shapes.

How this works: each kind is a frozen pydantic model with Knative's field names
(camelCase aliases over snake_case attributes) that forbids unknown fields, so
that a typo is an error with a path rather than a silently ignored setting. A
user's Knative Broker/Trigger/Channel/Subscription/PingSource YAML validates
unchanged; Kubernetes-managed metadata (uid, resourceVersion, ...) and
``status`` are accepted and ignored so that ``kubectl get -o yaml`` output
loads too. Headwater's own settings that Knative has no field for live in
annotations (``headwater.dev/...``), keeping ``spec`` portable.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from headwater.durations import parse_duration

# Kubernetes object names: RFC 1123 DNS labels (subdomains for most kinds).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
DEFAULT_NAMESPACE = "default"

# Annotations Headwater reads (Knative has no spec field for these).
ORDER_ANNOTATION = "headwater.dev/delivery-order"
KAFKA_ORDER_ANNOTATION = "kafka.eventing.knative.dev/delivery.order"
START_ANNOTATION = "headwater.dev/start"
MAX_INFLIGHT_ANNOTATION = "headwater.dev/max-inflight"
BROKER_CLASS_ANNOTATION = "eventing.knative.dev/broker.class"
INGRESS_TOKEN_ANNOTATION = "headwater.dev/ingress-token"
"""A Broker's own bearer token for its HTTP ingress (use ``${ENV}`` to keep it out of files)."""
RETENTION_MAX_AGE_ANNOTATION = "headwater.dev/retention-max-age"
RETENTION_MAX_BYTES_ANNOTATION = "headwater.dev/retention-max-bytes"
RETENTION_MAX_EVENTS_ANNOTATION = "headwater.dev/retention-max-events"
"""A Broker's stream retention (an ISO 8601 duration, bytes with an optional
Ki/Mi/Gi suffix, a count): past any of them the oldest events are dropped.
Knative's Kafka broker sets this per topic in a ConfigMap; a Broker here has
no ConfigMap, so it is an annotation. Unset: kept until deleted."""

_QUANTITY = re.compile(r"([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?\Z")
_UNITS = {None: 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}

REPLICAS_ANNOTATION = "headwater.dev/replicas"
"""Copies of a Broker's or Channel's stream in a mesh (JetStream's replicas)."""
MAX_REPLICAS = 5
"""JetStream keeps at most five copies of a stream."""


def replicas_annotation(annotations: dict[str, str]) -> int | None:
    """The ``headwater.dev/replicas`` annotation as a number of copies (None: absent)."""
    text = annotations.get(REPLICAS_ANNOTATION)
    if text is None:
        return None
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= MAX_REPLICAS):
        raise ValueError(
            f"annotation {REPLICAS_ANNOTATION} must be a number of copies from 1 to "
            f"{MAX_REPLICAS}, not {text!r}"
        )
    return int(text)


def parse_quantity(text: str) -> int:
    """A byte count as Kubernetes writes one: ``1048576``, ``512Mi``, ``2G``."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a byte count (e.g. 1073741824, 512Mi, 2Gi)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def retention_limits(annotations: dict[str, str]) -> dict[str, Any]:
    """``max_age``/``max_bytes``/``max_events`` (for a StreamConfig) from a Broker's annotations."""
    limits: dict[str, Any] = {}
    age = annotations.get(RETENTION_MAX_AGE_ANNOTATION)
    if age is not None:
        limits["max_age"] = parse_duration(age)
        if limits["max_age"] <= 0:
            raise ValueError(f"annotation {RETENTION_MAX_AGE_ANNOTATION} must be more than zero")
    size = annotations.get(RETENTION_MAX_BYTES_ANNOTATION)
    if size is not None:
        limits["max_bytes"] = parse_quantity(size)
        if limits["max_bytes"] < 1:
            raise ValueError(f"annotation {RETENTION_MAX_BYTES_ANNOTATION} must be positive")
    count = annotations.get(RETENTION_MAX_EVENTS_ANNOTATION)
    if count is not None:
        if not (count.isdigit() and int(count) > 0):
            raise ValueError(
                f"annotation {RETENTION_MAX_EVENTS_ANNOTATION} must be a positive integer"
            )
        limits["max_events"] = int(count)
    return limits


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=to_camel,
        str_strip_whitespace=False,
    )


class ObjectMeta(Model):
    """Kubernetes ObjectMeta: the fields Headwater uses, and the managed ones it ignores."""

    name: str
    namespace: str = DEFAULT_NAMESPACE
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Written by a Kubernetes API server; accepted so exported YAML loads, unused.
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: Any = None
    managed_fields: Any = None
    finalizers: Any = None
    owner_references: Any = None
    generate_name: str | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"{value!r} is not a valid name: use lower-case letters, digits, '-' and '.', "
                "starting and ending with a letter or digit"
            )
        return value


class KReference(Model):
    """Knative KReference: a reference to another resource."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None


class Destination(Model):
    """Knative duckv1.Destination: ``ref`` and/or ``uri`` (relative to the ref)."""

    ref: KReference | None = None
    uri: str | None = None
    ca_certs: str | None = Field(default=None, alias="CACerts")
    audience: str | None = None

    @model_validator(mode="after")
    def _ref_or_uri(self) -> Destination:
        if self.ref is None and not self.uri:
            raise ValueError("a destination needs `ref` or `uri` (or both)")
        if self.ref is None and self.uri and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", self.uri):
            raise ValueError(f"`uri` {self.uri!r} must be absolute when there is no `ref`")
        return self


Duration = Annotated[str, Field(description="ISO 8601 duration, e.g. PT0.2S")]


class DeliverySpec(Model):
    """Knative DeliverySpec: retries, backoff, timeout and dead letter sink."""

    dead_letter_sink: Destination | None = None
    retry: int | None = Field(default=None, ge=0)
    backoff_policy: Literal["linear", "exponential"] | None = None
    backoff_delay: Duration | None = None
    timeout: Duration | None = None
    retry_after_max: Duration | None = None
    format: Literal["json", "binary"] | None = None

    @field_validator("backoff_delay", "timeout", "retry_after_max")
    @classmethod
    def _iso_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class Resource(Model):
    """Fields every kind shares."""

    API_VERSIONS: ClassVar[tuple[str, ...]] = ()
    KIND: ClassVar[str] = ""

    api_version: str
    kind: str
    metadata: ObjectMeta
    status: Any = None  # written by a controller; accepted and ignored

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique within a running Headwater."""
        return (self.kind, self.metadata.namespace, self.metadata.name)


# -- eventing.knative.dev/v1 -------------------------------------------------


class BrokerSpec(Model):
    config: KReference | None = None
    delivery: DeliverySpec | None = None


class Broker(Resource):
    API_VERSIONS = ("eventing.knative.dev/v1",)
    KIND = "Broker"
    spec: BrokerSpec = Field(default_factory=BrokerSpec)

    @model_validator(mode="after")
    def _retention(self) -> Broker:
        retention_limits(self.metadata.annotations)
        replicas_annotation(self.metadata.annotations)
        return self


class TriggerFilter(Model):
    """Knative TriggerFilter: exact match on every listed attribute ('' matches any value)."""

    attributes: dict[str, str] = Field(default_factory=dict)


class SubscriptionsApiFilter(Model):
    """One filter of the CloudEvents Subscriptions API dialects (subscriptions-spec.md 3.2.4).

    Exactly one dialect per filter object.
    """

    exact: dict[str, str] | None = None
    prefix: dict[str, str] | None = None
    suffix: dict[str, str] | None = None
    all: list[SubscriptionsApiFilter] | None = None
    any: list[SubscriptionsApiFilter] | None = None
    not_: SubscriptionsApiFilter | None = Field(default=None, alias="not")
    cesql: str | None = Field(default=None, alias="cesql")

    @model_validator(mode="after")
    def _one_dialect(self) -> SubscriptionsApiFilter:
        used = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(used) != 1:
            raise ValueError(
                "a filter needs exactly one dialect of exact, prefix, suffix, all, any, not, "
                f"cesql; found {len(used) or 'none'}"
            )
        for dialect in ("exact", "prefix", "suffix"):
            mapping = getattr(self, dialect)
            if mapping is not None and len(mapping) != 1:
                # subscriptions-spec.md 3.2.4.1-3: exactly one attribute per filter.
                raise ValueError(f"`{dialect}` takes exactly one attribute, found {len(mapping)}")
        if self.prefix is not None and "" in self.prefix.values():
            raise ValueError("`prefix` needs a non-empty value")
        if self.suffix is not None and "" in self.suffix.values():
            raise ValueError("`suffix` needs a non-empty value")
        if self.cesql is not None:
            _check_cesql(self.cesql)
        return self


def _check_cesql(expression: str) -> None:
    from headwater import cesql

    try:
        cesql.compile(expression)
    except cesql.ParseError as exc:
        raise ValueError(f"invalid CESQL expression: {exc}") from exc


class TriggerSpec(Model):
    broker: str
    filter: TriggerFilter | None = None
    filters: list[SubscriptionsApiFilter] = Field(default_factory=list)
    subscriber: Destination
    delivery: DeliverySpec | None = None


class Trigger(Resource):
    API_VERSIONS = ("eventing.knative.dev/v1",)
    KIND = "Trigger"
    spec: TriggerSpec

    @model_validator(mode="after")
    def _annotations(self) -> Trigger:
        annotations = self.metadata.annotations
        order = annotations.get(ORDER_ANNOTATION, annotations.get(KAFKA_ORDER_ANNOTATION))
        if order is not None and order not in ("ordered", "unordered"):
            raise ValueError(f"annotation {ORDER_ANNOTATION} must be 'ordered' or 'unordered'")
        start = annotations.get(START_ANNOTATION)
        if start is not None:
            parse_start(start)
        inflight = annotations.get(MAX_INFLIGHT_ANNOTATION)
        if inflight is not None and not (inflight.isdigit() and int(inflight) > 0):
            raise ValueError(f"annotation {MAX_INFLIGHT_ANNOTATION} must be a positive integer")
        return self


MAX_OFFSET: Final = 2**63 - 1
"""The largest offset a log can hold (SQLite's INTEGER, JetStream's sequences fit)."""


def parse_start(text: str) -> tuple[str, str | int | None]:
    """Parse a replay start: ``earliest``, ``latest``, ``offset:N`` or ``time:RFC3339``."""
    from datetime import datetime

    if text in ("earliest", "latest"):
        return (text, None)
    kind, _, value = text.partition(":")
    if kind == "offset" and value.isascii() and value.isdigit():
        offset = int(value)
        if offset > MAX_OFFSET:
            raise ValueError(f"start {text!r}: an offset is at most {MAX_OFFSET}")
        return ("offset", offset)
    if kind == "time":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return ("time", value)
    raise ValueError(
        f"start {text!r} must be earliest, latest, offset:N or time:<RFC 3339 timestamp>"
    )


# -- messaging.knative.dev/v1 ------------------------------------------------


class ChannelTemplate(Model):
    api_version: str
    kind: str
    spec: dict[str, Any] = Field(default_factory=dict)


class ChannelSpec(Model):
    channel_template: ChannelTemplate | None = None
    delivery: DeliverySpec | None = None
    subscribers: Any = None  # filled by a controller in Knative; ignored


class Channel(Resource):
    API_VERSIONS = ("messaging.knative.dev/v1",)
    KIND = "Channel"
    spec: ChannelSpec = Field(default_factory=ChannelSpec)

    @model_validator(mode="after")
    def _annotations(self) -> Channel:
        replicas_annotation(self.metadata.annotations)
        return self


class InMemoryChannelSpec(Model):
    delivery: DeliverySpec | None = None
    subscribers: Any = None


class InMemoryChannel(Resource):
    API_VERSIONS = ("messaging.knative.dev/v1",)
    KIND = "InMemoryChannel"
    spec: InMemoryChannelSpec = Field(default_factory=InMemoryChannelSpec)


class SubscriptionSpec(Model):
    channel: KReference
    subscriber: Destination
    reply: Destination | None = None
    delivery: DeliverySpec | None = None


class Subscription(Resource):
    API_VERSIONS = ("messaging.knative.dev/v1",)
    KIND = "Subscription"
    spec: SubscriptionSpec

    @model_validator(mode="after")
    def _same_namespace(self) -> Subscription:
        channel = self.spec.channel
        if channel.namespace not in (None, self.metadata.namespace):
            raise ValueError("spec.channel.namespace must be unset or the Subscription's own")
        return self


# -- sources.knative.dev/v1 --------------------------------------------------


class CloudEventOverrides(Model):
    extensions: dict[str, str] = Field(default_factory=dict)


class PingSourceSpec(Model):
    schedule: str
    timezone: str | None = None
    content_type: str | None = None
    data: str | None = None
    data_base64: str | None = None
    sink: Destination
    ce_overrides: CloudEventOverrides | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(value) or len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a 5-field cron schedule (e.g. '*/1 * * * *')")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _one_payload(self) -> PingSourceSpec:
        if self.data is not None and self.data_base64 is not None:
            raise ValueError("set `data` or `dataBase64`, not both")
        return self


class PingSource(Resource):
    API_VERSIONS = ("sources.knative.dev/v1",)
    KIND = "PingSource"
    spec: PingSourceSpec


class EnvVar(Model):
    """A container's environment variable (Kubernetes EnvVar, literal values only)."""

    name: str
    value: str = ""
    value_from: Any = None

    @field_validator("name")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not value or "=" in value or "\0" in value:
            raise ValueError(f"{value!r} is not a valid environment variable name")
        return value

    @field_validator("value_from")
    @classmethod
    def _no_value_from(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError(
                "`valueFrom` reads Kubernetes secrets and config maps, which Headwater does "
                "not have: use `value` with ${ENV} substitution"
            )
        return value


class Container(Model):
    """A Kubernetes Container, as a local process: ``command`` + ``args`` are run."""

    name: str | None = None
    image: str | None = None
    command: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str | None = None
    image_pull_policy: str | None = None  # accepted for portability; nothing is pulled

    @model_validator(mode="after")
    def _runnable(self) -> Container:
        if not self.command:
            raise ValueError(
                "Headwater runs local processes, not container images: give `command` "
                "(the program and its first arguments; `args` are appended)"
            )
        return self


class PodSpec(Model):
    containers: list[Container] = Field(min_length=1)
    termination_grace_period_seconds: int = Field(default=10, ge=0)


class PodTemplateSpec(Model):
    metadata: Any = None  # pod labels and annotations: accepted, unused
    spec: PodSpec


class ContainerSourceSpec(Model):
    template: PodTemplateSpec
    sink: Destination
    ce_overrides: CloudEventOverrides | None = None

    @field_validator("sink")
    @classmethod
    def _http_reachable(cls, value: Destination) -> Destination:
        # The process reaches its sink over HTTP (K_SINK), so the sink needs an
        # HTTP address: a Broker's or a Channel's ingress, or an absolute `uri`.
        http_kinds = ("Broker", "Channel", "InMemoryChannel")
        if value.ref is not None and (value.ref.kind not in http_kinds or value.uri):
            raise ValueError(
                "a ContainerSource's process sends to K_SINK over HTTP: its sink must be a "
                "Broker or Channel `ref`, or an absolute `uri`"
            )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> ContainerSourceSpec:
        names = [c.name for c in self.template.spec.containers if c.name]
        if len(names) != len(set(names)):
            raise ValueError("container names must be unique")
        return self


class ContainerSource(Resource):
    """Knative's ContainerSource, run as supervised local processes.

    Each container's ``command`` + ``args`` runs with ``K_SINK`` (the sink's
    HTTP address) and ``K_CE_OVERRIDES`` (the ``ceOverrides`` as JSON) in its
    environment, as Knative's SinkBinding injects them, and is restarted with
    backoff when it exits.
    """

    API_VERSIONS = ("sources.knative.dev/v1",)
    KIND = "ContainerSource"
    spec: ContainerSourceSpec


# -- sinks.headwater.dev/v1alpha1 --------------------------------------------


class EventDisplaySpec(Model):
    format: Literal["pretty", "json"] = "pretty"


class EventDisplay(Resource):
    """Logs every event like Knative's event_display (or one JSON line per event)."""

    API_VERSIONS = ("sinks.headwater.dev/v1alpha1",)
    KIND = "EventDisplay"
    spec: EventDisplaySpec = Field(default_factory=EventDisplaySpec)
