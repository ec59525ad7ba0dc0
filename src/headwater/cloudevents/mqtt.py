"""The MQTT protocol binding (mqtt-protocol-binding.md), over plain values.

How this works: an MQTT PUBLISH is described by its payload, its MQTT 5
Content Type property and its User Properties; no MQTT library types are
involved, so the broker, the external-broker source and the sink all share
these functions. MQTT 5 supports binary mode (Content Type = datacontenttype,
every other attribute a User Property named exactly as the attribute) and
structured mode; MQTT 3.1.1 carries only the structured JSON format (3.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from headwater.cloudevents._types import canonical_string
from headwater.cloudevents.errors import InvalidEvent
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.json import CONTENT_TYPE, from_json, to_json

Mode = Literal["binary", "structured"]
UserProperties = Sequence[tuple[str, str]]

__all__ = ["MqttMessage", "from_mqtt", "is_cloudevent_mqtt", "to_mqtt"]


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """What a PUBLISH carries for an event: payload, content type, user properties."""

    payload: bytes
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def to_mqtt(event: CloudEvent, mode: Mode = "binary", *, version: int = 5) -> MqttMessage:
    """Encode an event for an MQTT PUBLISH (``version`` 5, or 4 for MQTT 3.1.1)."""
    if version not in (4, 5):
        raise ValueError(f"unknown MQTT protocol version {version}; use 4 (3.1.1) or 5")
    if mode not in ("binary", "structured"):
        raise ValueError(f"unknown MQTT content mode {mode!r}; use 'binary' or 'structured'")
    if version == 4:
        # 3.2: with MQTT 3.1.1 the JSON format is implied; no properties exist.
        return MqttMessage(to_json(event))
    if mode == "structured":
        return MqttMessage(to_json(event), CONTENT_TYPE)
    properties = tuple(
        (name, value if type(value) is str else canonical_string(value))
        for name, value in event._attributes.items()
        if name != "datacontenttype"
    )
    content_type = event.datacontenttype
    if content_type is None and event.has_data and type(event._data) is not bytes:
        content_type = "application/json"  # json-format.md 3.1.2: make the implied type explicit
    return MqttMessage(event.data_bytes(), content_type, properties)


def is_cloudevent_mqtt(content_type: str | None, user_properties: UserProperties = ()) -> bool:
    """True when an MQTT 5 message carries a CloudEvent (structured, or binary mode)."""
    if content_type is not None and content_type.lower().startswith("application/cloudevents"):
        return True
    return any(name == "specversion" for name, _ in user_properties)


def from_mqtt(
    payload: bytes | bytearray | memoryview,
    content_type: str | None = None,
    user_properties: UserProperties = (),
    *,
    version: int = 5,
) -> CloudEvent:
    """Decode an MQTT PUBLISH into an event; :class:`InvalidEvent` if it is not one."""
    if version == 4:
        return from_json(payload)
    media = (content_type or "").partition(";")[0].strip().lower()
    if media.startswith("application/cloudevents"):
        if media != CONTENT_TYPE:
            raise InvalidEvent("content type", f"unsupported event format {media!r}; use JSON")
        return from_json(payload)
    attributes: dict[str, object] = {}
    for name, value in user_properties:
        if name in attributes:
            raise InvalidEvent(name, "user property appears more than once")
        attributes[name] = value
    if "specversion" not in attributes:
        raise InvalidEvent(
            "specversion",
            "user property missing: not a binary-mode CloudEvent, and the content type "
            f"({content_type or 'none'}) is not a CloudEvents format",
        )
    if content_type is not None:
        attributes["datacontenttype"] = content_type  # 3.1.1
    return CloudEvent(attributes, bytes(payload) if payload else NO_DATA)
