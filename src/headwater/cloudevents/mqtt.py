"""The MQTT protocol binding (mqtt-protocol-binding.md), over plain values.

How this works: an MQTT PUBLISH is described by its payload, its MQTT 5
Content Type property and its User Properties; no MQTT library types are
involved, so the broker, the external-broker source and the sink all share
these functions. MQTT 5 supports binary mode (Content Type =
datacontenttype, every other attribute a User Property named exactly as the
attribute, 3.1) and structured mode (3.2); MQTT 3.1.1 has no properties and
carries only the structured JSON format.

Receiving (section 3): a Content Type starting ``application/cloudevents``
means structured mode, anything else binary mode. User Properties whose names
cannot be CloudEvents attribute names (anything but lower-case ASCII letters
and digits, e.g. ``Content-Encoding``) are application properties, not
attributes, and are ignored; every other one is an attribute.

As in every binding, JSON data (not bytes) without ``datacontenttype`` gets
the implied ``application/json`` as Content Type in binary mode
(json-format.md 3.1.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from headwater.cloudevents._types import binary_content_type, canonical_string, is_event_format
from headwater.cloudevents.errors import InvalidEvent, shown
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.json import CONTENT_TYPE, from_json, to_json

Mode = Literal["binary", "structured"]
UserProperties = Sequence[tuple[str, str]]

__all__ = ["MQTT_3_1_1", "MQTT_5", "MqttMessage", "from_mqtt", "is_cloudevent_mqtt", "to_mqtt"]

MQTT_3_1_1: Final = 4
"""The protocol level byte of MQTT 3.1.1."""
MQTT_5: Final = 5

_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+", re.ASCII).fullmatch


@dataclass(frozen=True, slots=True)
class MqttMessage:
    """What a PUBLISH carries for an event: payload, content type, user properties."""

    payload: bytes
    content_type: str | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


def to_mqtt(event: CloudEvent, mode: Mode | None = None, *, version: int = MQTT_5) -> MqttMessage:
    """Encode an event for an MQTT PUBLISH.

    ``version`` is the protocol level: 5, or 4 for MQTT 3.1.1. ``mode`` defaults
    to binary for MQTT 5 and must be structured (its default) for MQTT 3.1.1.
    """
    if version not in (MQTT_3_1_1, MQTT_5):
        raise ValueError(f"unknown MQTT protocol version {version}; use 4 (3.1.1) or 5")
    if mode not in (None, "binary", "structured"):
        raise ValueError(f"unknown MQTT content mode {mode!r}; use 'binary' or 'structured'")
    if version == MQTT_3_1_1:
        if mode == "binary":
            # 3: "With MQTT 3.1.1, the content mode is always structured".
            raise ValueError("MQTT 3.1.1 has no binary content mode; use 'structured'")
        # 3.2.1: with MQTT 3.1.1 the JSON format is implied; no properties exist.
        return MqttMessage(to_json(event))
    if mode == "structured":
        return MqttMessage(to_json(event), CONTENT_TYPE)
    # 3.1.3: every other attribute is a User Property named exactly as the
    # attribute, holding its canonical string (3.1.3.2).
    properties = tuple(
        (name, value if type(value) is str else canonical_string(value))
        for name, value in event._attributes.items()
        if name != "datacontenttype"
    )
    content_type = event.datacontenttype  # 3.1.1
    if content_type is not None:
        binary_content_type(content_type)
    elif event.has_data and type(event._data) is not bytes:
        content_type = "application/json"  # json-format.md 3.1.2: make the implied type explicit
    return MqttMessage(event.data_bytes(), content_type, properties)


def _is_structured(content_type: str | None) -> bool:
    return content_type is not None and is_event_format(content_type)


def is_cloudevent_mqtt(content_type: str | None, user_properties: UserProperties = ()) -> bool:
    """True when an MQTT 5 message carries a CloudEvent (structured, or binary mode)."""
    return _is_structured(content_type) or any(name == "specversion" for name, _ in user_properties)


def from_mqtt(
    payload: bytes | bytearray | memoryview,
    content_type: str | None = None,
    user_properties: UserProperties = (),
    *,
    version: int = MQTT_5,
) -> CloudEvent:
    """Decode an MQTT PUBLISH into an event; :class:`InvalidEvent` if it is not one."""
    if version not in (MQTT_3_1_1, MQTT_5):
        raise ValueError(f"unknown MQTT protocol version {version}; use 4 (3.1.1) or 5")
    if version == MQTT_3_1_1:
        return from_json(payload)  # 3: always structured, always JSON
    if _is_structured(content_type):
        assert content_type is not None
        media = content_type.partition(";")[0].strip().lower()
        if media != CONTENT_TYPE:
            raise InvalidEvent(
                "content type", f"unsupported event format {shown(media)}; this receiver reads JSON"
            )
        return from_json(payload)
    attributes: dict[str, object] = {}
    for name, value in user_properties:
        if not _ATTRIBUTE_NAME(name):
            continue  # an application property, not an attribute (see the module docstring)
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
        # 3.1.1: the Content Type property is the datacontenttype. The spec's
        # own example (3.1.4) repeats it as a User Property; that is accepted
        # when both agree.
        repeated = attributes.get("datacontenttype", content_type)
        if repeated != content_type:
            raise InvalidEvent(
                "datacontenttype",
                f"user property {shown(repeated)} contradicts "
                f"the Content Type {shown(content_type)}",
            )
        attributes["datacontenttype"] = content_type
    return CloudEvent._owned(attributes, bytes(payload) if payload else NO_DATA)
