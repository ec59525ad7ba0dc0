"""Resource models of the device registry: the ``Device`` kind, an MqttBrokerSource's ``devices``.

How this works: as every kind, frozen pydantic models that forbid unknown
fields and check what they can at validation (ids, labels, ACL templates,
topic patterns, JMESPath), so that ``headwater apply`` reports a mistake
with file, line and field.

``Device`` is in its own group, ``devices.headwater.dev/v1alpha1``: a device
is neither a source nor a sink (``sources.``/``sinks.headwater.dev``) but an
entry of the registry, as Hono keeps its device registry apart from its
protocol adapters; ``v1alpha1`` as every Headwater kind until its shape has
settled. It is for the few devices people keep in git: its credentials are a
password (from the environment, ``${VAR}``: hashed with scrypt as it is
applied, never stored in clear), a password hash, or a certificate; a
generated secret cannot be written in a file (it is shown once, to whoever
asks the API). A device a resource defines is changed through the resource
only; the registry's API refuses to change or delete it.

``DeviceSink`` (``sinks.headwater.dev/v1alpha1``, addressable) is how events
reach devices without blind retries: a Trigger delivers to it, and each
event becomes a command in the registry's durable queue (or, with type
``dev.headwater.twin.desired``, a change of the desired state); the delivery
is accepted once it is queued. The same event delivered again (a retry, a
redelivery after a restart) is the same command, never a second one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from headwater.devices.access import DEFAULT_PUBLISH, DEFAULT_SUBSCRIBE, build_acl
from headwater.devices.credentials import (
    check_password_hash,
    normalise_fingerprint,
    normalise_subject,
)
from headwater.devices.model import InvalidDevice, check_device_id, check_labels
from headwater.durations import parse_duration
from headwater.resources.models import Duration, Model, Resource
from headwater.sources.mapping import InvalidMapping, TopicPattern

__all__ = [
    "DESIRED_TYPE",
    "Device",
    "DeviceCredential",
    "DeviceSink",
    "DeviceSinkSpec",
    "DeviceSpec",
    "DevicesSpec",
    "ProvisioningSpec",
    "ReportedSpec",
]


class DeviceCredential(Model):
    """One credential: ``type: password`` (``password`` or ``hash``) or ``type: x509``."""

    type: Literal["password", "x509"]
    password: str | None = None
    hash: str | None = None
    fingerprint: str | None = None
    subject: str | None = None

    @model_validator(mode="after")
    def _fields(self) -> DeviceCredential:
        try:
            if self.type == "password":
                if (self.password is None) == (self.hash is None):
                    raise ValueError("a password credential needs `password` or `hash` (one)")
                if self.fingerprint or self.subject:
                    raise ValueError("`fingerprint` and `subject` belong to an x509 credential")
                if self.hash is not None:
                    check_password_hash(self.hash)
            else:
                if self.fingerprint is None and self.subject is None:
                    raise ValueError("an x509 credential needs `fingerprint` or `subject`")
                if self.password is not None or self.hash is not None:
                    raise ValueError("`password` and `hash` belong to a password credential")
                if self.fingerprint is not None:
                    normalise_fingerprint(self.fingerprint)
                if self.subject is not None:
                    normalise_subject(self.subject)
        except InvalidDevice as exc:
            raise ValueError(str(exc)) from exc
        return self

    def spec(self) -> dict[str, Any]:
        """As the registry takes it."""
        return self.model_dump(exclude_none=True)


class DeviceSpec(Model):
    #: the device id (its MQTT username and topic level); default: metadata.name
    id: str | None = None
    enabled: bool = True
    credentials: list[DeviceCredential] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_device_id(value)
            except InvalidDevice as exc:
                raise ValueError(str(exc)) from exc
        return value


class Device(Resource):
    """A device of the registry, kept in git (see the module docstring)."""

    API_VERSIONS = ("devices.headwater.dev/v1alpha1",)
    KIND = "Device"
    spec: DeviceSpec = Field(default_factory=DeviceSpec)

    @model_validator(mode="after")
    def _names(self) -> Device:
        try:
            check_device_id(self.device_id)
            check_labels(self.metadata.labels)
        except InvalidDevice as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def device_id(self) -> str:
        return self.spec.id or self.metadata.name


DESIRED_TYPE = "dev.headwater.twin.desired"
"""Events of this type set a device's desired state (their data: a JSON merge patch)."""


class DeviceSinkSpec(Model):
    """Where events become commands (or desired state) of the registry's devices."""

    #: the registry namespace of the devices; default: the sink's own namespace
    namespace: str | None = None
    #: how long a command waits for its device and its answer (ISO 8601)
    expiry: Duration = "PT60S"
    #: events of this type change the desired state instead of making a command
    desired_type: str = DESIRED_TYPE

    @field_validator("expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        from headwater.devices.command_model import MAX_EXPIRY, MIN_EXPIRY

        seconds = parse_duration(value)
        if not MIN_EXPIRY <= seconds <= MAX_EXPIRY:
            raise ValueError(f"`expiry` must be {MIN_EXPIRY:g} to {MAX_EXPIRY:g} seconds")
        return value


class DeviceSink(Resource):
    """Events to the registry's devices: commands, or desired state (see the module docstring)."""

    API_VERSIONS = ("sinks.headwater.dev/v1alpha1",)
    KIND = "DeviceSink"
    spec: DeviceSinkSpec = Field(default_factory=DeviceSinkSpec)


class ProvisioningSpec(Model):
    """Auto-provisioning: a client certificate these CAs signed registers its device."""

    #: PEM file of the CA certificate(s) whose certificates register themselves
    ca_file: str
    #: the new device's id: the certificate's subject CN, or its first DNS/URI/email SAN
    id_from: Literal["cn", "san"] = "cn"
    #: labels every provisioned device gets
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        try:
            return check_labels(value)
        except InvalidDevice as exc:
            raise ValueError(str(exc)) from exc


class ReportedSpec(Model):
    """Telemetry that updates the reported state: ``state`` member -> JMESPath over the JSON."""

    #: a topic pattern with a ``{device}`` capture, e.g. ``sensors/{device}/climate``
    topic: str
    state: dict[str, str] = Field(min_length=1)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        try:
            pattern = TopicPattern.parse(value)
        except InvalidMapping as exc:
            raise ValueError(str(exc)) from exc
        if "device" not in pattern.captures:
            raise ValueError(f"topic pattern {value!r} needs a `{{device}}` level")
        return value

    @field_validator("state")
    @classmethod
    def _paths(cls, value: dict[str, str]) -> dict[str, str]:
        import jmespath
        from jmespath.exceptions import JMESPathError

        for name, expression in value.items():
            try:
                jmespath.compile(expression)
            except JMESPathError as exc:
                raise ValueError(f"state {name!r}: {expression!r} is not JMESPath: {exc}") from exc
        return value


class DevicesSpec(Model):
    """The registry on an MqttBrokerSource: devices of its namespace connect with their
    credentials, within these ACL templates (``{device}``: the device's id)."""

    publish: list[str] = Field(default_factory=lambda: list(DEFAULT_PUBLISH))
    subscribe: list[str] = Field(default_factory=lambda: list(DEFAULT_SUBSCRIBE))
    provisioning: ProvisioningSpec | None = None
    reported: list[ReportedSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _templates(self) -> DevicesSpec:
        build_acl(self.publish, self.subscribe)  # ValueError names the bad template
        return self
