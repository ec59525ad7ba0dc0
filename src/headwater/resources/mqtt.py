"""Resource models of the MQTT kinds: MqttBrokerSource, MqttSource, MqttSink.

How this works: the same frozen, unknown-field-forbidding pydantic style as
:mod:`headwater.resources.models`. Every mapping (topic pattern, templates,
JMESPath lifts) is compiled here at validation time through
:meth:`headwater.sources.mapping.Mapping.compile`, so a bad one is rejected by
``headwater apply`` with file, line and a message saying what is wrong; topic
filters and templates of the sink are checked the same way.
"""

from __future__ import annotations

import re
import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from headwater.mqtt.topics import InvalidTopic, validate_topic_filter
from headwater.resources.models import Destination, Model, Resource
from headwater.sources.mapping import DEFAULT_SOURCE, DEFAULT_TYPE, InvalidMapping, Mapping

__all__ = [
    "SINK_TEMPLATE_VARIABLES",
    "MqttBrokerSource",
    "MqttMapping",
    "MqttSink",
    "MqttSource",
]

_BROKER_URL = re.compile(
    r"(mqtts?)://(?:([^:@/]*)(?::([^@/]*))?@)?([^:/]+|\[[^\]]+\])(?::(\d+))?/?\Z"
)


class MqttMapping(Model):
    """How an MQTT message becomes a CloudEvent (see :mod:`headwater.sources.mapping`)."""

    topic_pattern: str | None = None
    type: str = DEFAULT_TYPE
    source: str = DEFAULT_SOURCE
    subject: str | None = "{topic}"
    #: extension name -> JMESPath over the JSON payload
    extensions: dict[str, str] = Field(default_factory=dict)
    #: JMESPath to the device's timestamp (epoch seconds or RFC 3339)
    time: str | None = None
    #: MQTT 5 messages that carry a CloudEvent are taken as they are
    passthrough: bool = True

    @model_validator(mode="after")
    def _compiles(self) -> MqttMapping:
        self.compile()
        return self

    def compile(self) -> Mapping:
        try:
            return Mapping.compile(
                topic_pattern=self.topic_pattern,
                type=self.type,
                source=self.source,
                subject=self.subject,
                extensions=self.extensions,
                time=self.time,
                passthrough=self.passthrough,
            )
        except InvalidMapping as exc:
            raise ValueError(str(exc)) from exc


def _check_filters(values: list[str]) -> list[str]:
    for value in values:
        try:
            validate_topic_filter(value)
        except InvalidTopic as exc:
            raise ValueError(f"topic filter {value!r}: {exc}") from exc
    return values


class Tls(Model):
    """Certificates (paths). Server side: certFile+keyFile, caFile with requireClientCert
    for mTLS. Client side: caFile to trust, certFile+keyFile for mTLS."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    require_client_cert: bool = False
    insecure_skip_verify: bool = False


class ListenerSpec(Model):
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=0, le=65535)
    tls: Tls | None = None
    websocket: bool = False
    path: str = "/mqtt"
    cert_username: Literal["cn", "san"] | None = None
    #: clients without credentials; unset: only on a loopback listener of a
    #: source without a password file (as Mosquitto 2, which denies anonymous
    #: access wherever authentication is configured)
    allow_anonymous: bool | None = None
    name: str = ""

    @model_validator(mode="after")
    def _tls_has_cert(self) -> ListenerSpec:
        if self.tls is not None and self.tls.cert_file is None:
            raise ValueError("a TLS listener needs `tls.certFile` (and usually `keyFile`)")
        if self.cert_username is not None and not (self.tls and self.tls.require_client_cert):
            raise ValueError("`certUsername` needs `tls.requireClientCert: true` (mTLS)")
        return self


class MqttBrokerSourceSpec(Model):
    listeners: list[ListenerSpec] = Field(default_factory=lambda: [ListenerSpec()])
    #: a mosquitto_passwd-style file (see headwater.mqtt.auth)
    password_file: str | None = None
    #: a mosquitto-style ACL file
    acl_file: str | None = None
    #: sessions and retained messages persist here (relative: to the working directory);
    #: none: under the node's data directory (``headwater up --data-dir``)
    data_dir: str | None = None
    #: which publishes become events (MQTT topic filters)
    topics: list[str] = Field(default_factory=lambda: ["#"])
    mapping: MqttMapping = Field(default_factory=MqttMapping)
    #: dev.headwater.device.connected / disconnected events
    device_events: bool = True
    #: publishes larger than this are refused (PUBACK 0x97 Quota exceeded) and counted
    max_event_size: int = Field(default=1024 * 1024, ge=1)
    #: QoS 1/2 messages kept per session while its client is offline or slow
    #: (then the oldest is dropped and counted), as Mosquitto's max_queued_messages
    max_queued_messages: int = Field(default=1000, ge=1)
    #: bytes held across all connections for packets still arriving (a connection
    #: that would take the total past it is closed); unset: the broker's 64 MiB
    max_incomplete_bytes: int | None = Field(default=None, ge=64 * 1024)
    sink: Destination

    @field_validator("topics")
    @classmethod
    def _filters(cls, value: list[str]) -> list[str]:
        return _check_filters(value)

    @model_validator(mode="after")
    def _one_name_per_port(self) -> MqttBrokerSourceSpec:
        fixed = [(listener.host, listener.port) for listener in self.listeners if listener.port]
        if len(fixed) != len(set(fixed)):
            raise ValueError("two listeners share a host and port")
        return self


class MqttBrokerSource(Resource):
    """The embedded MQTT broker; matching publishes become CloudEvents on ``sink``."""

    API_VERSIONS = ("sources.headwater.dev/v1alpha1",)
    KIND = "MqttBrokerSource"
    spec: MqttBrokerSourceSpec


class TopicSpec(Model):
    filter: str
    qos: int = Field(default=1, ge=0, le=2)

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        return _check_filters([value])[0]


class Credentials(Model):
    """Username/password; the password from an environment variable or a file."""

    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> Credentials:
        if self.password_env and self.password_file:
            raise ValueError("set `passwordEnv` or `passwordFile`, not both")
        return self


def _check_broker_url(value: str) -> str:
    if not _BROKER_URL.match(value):
        raise ValueError(f"{value!r} is not a broker address like mqtt://host:1883 or mqtts://host")
    return value


class MqttSourceSpec(Model):
    broker: str
    topics: list[TopicSpec] = Field(min_length=1)
    client_id: str | None = None
    protocol_version: Literal[4, 5] = 5
    #: seconds the external broker keeps the session while Headwater is away
    session_expiry: int = Field(default=7 * 24 * 3600, ge=0)
    keep_alive: int = Field(default=30, ge=0, le=65535)
    credentials: Credentials | None = None
    tls: Tls | None = None
    mapping: MqttMapping = Field(default_factory=MqttMapping)
    max_backoff: float = Field(default=30.0, gt=0)
    #: larger messages are counted and acknowledged without an event (MQTT 5: 0x97)
    max_event_size: int = Field(default=1024 * 1024, ge=1)
    sink: Destination

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        return _check_broker_url(value)


class MqttSource(Resource):
    """Subscribes to an external MQTT broker; messages become CloudEvents on ``sink``."""

    API_VERSIONS = ("sources.headwater.dev/v1alpha1",)
    KIND = "MqttSource"
    spec: MqttSourceSpec


SINK_TEMPLATE_VARIABLES = frozenset({"id", "source", "type", "subject"})
"""What a sink topic template may use: these attributes, or ``ext.<name>`` extensions."""


class MqttSinkSpec(Model):
    #: e.g. ``devices/{subject}/commands``
    topic: str
    qos: int = Field(default=1, ge=0, le=2)
    retain: bool = False
    mode: Literal["binary", "structured"] = "binary"
    #: none: the embedded broker (in-process); else mqtt[s]://host:port
    broker: str | None = None
    protocol_version: Literal[4, 5] = 5
    client_id: str | None = None
    credentials: Credentials | None = None
    tls: Tls | None = None
    #: request/response: seconds to wait for the device's answer
    response_timeout: float = Field(default=10.0, gt=0)

    @field_validator("topic")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            parsed = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"topic template {value!r}: {exc}") from exc
        for literal, name, spec, conversion in parsed:
            if "+" in literal or "#" in literal:
                raise ValueError(f"topic template {value!r}: wildcards cannot be published to")
            if name is None:
                continue
            if (
                spec
                or conversion
                or not (name in SINK_TEMPLATE_VARIABLES or re.fullmatch(r"ext\.[a-z0-9]+", name))
            ):
                raise ValueError(
                    f"topic template {value!r}: unknown variable {{{name}}}; use "
                    "{id}, {source}, {type}, {subject} or {ext.<extension>}"
                )
        return value

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_broker_url(value)

    @model_validator(mode="after")
    def _mode(self) -> MqttSinkSpec:
        if self.protocol_version == 4 and self.mode == "binary":
            # mqtt-protocol-binding 3: with MQTT 3.1.1 the content mode is always structured.
            raise ValueError("MQTT 3.1.1 (protocolVersion 4) has only `mode: structured`")
        if self.broker is None and (self.credentials or self.tls or self.client_id):
            raise ValueError("credentials, tls and clientId apply to an external `broker` only")
        return self


class MqttSink(Resource):
    """Publishes CloudEvents to MQTT (commands to devices); addressable."""

    API_VERSIONS = ("sinks.headwater.dev/v1alpha1",)
    KIND = "MqttSink"
    spec: MqttSinkSpec


def parse_broker_url(url: str) -> tuple[bool, str, int, str | None, str | None]:
    """``mqtt[s]://[user[:password]@]host[:port]`` -> (tls, host, port, user, password)."""
    m = _BROKER_URL.match(url)
    if m is None:
        raise ValueError(f"{url!r} is not a broker address like mqtt://host:1883")
    scheme, user, password, host, port = m.groups()
    tls = scheme == "mqtts"
    return tls, host.strip("[]"), int(port) if port else (8883 if tls else 1883), user, password
