"""The NATS protocol binding (nats-protocol-binding.md, 1.0.3-wip), over plain values.

Structured mode: the JSON format as the payload (3.2). Binary mode (NATS 2.2+
headers, 3.1): every attribute a ``ce-``-prefixed header whose value is
percent-encoded like HTTP's (3.1.3.2), ``datacontenttype`` included as
``ce-datacontenttype`` (3.1.3.1); the payload is the data. A message is
binary-mode when it has a ``ce-specversion`` header, else structured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from headwater.cloudevents._types import canonical_string
from headwater.cloudevents.errors import InvalidEvent
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.http import decode_header_value, encode_header_value
from headwater.cloudevents.json import from_json, to_json

Mode = Literal["binary", "structured"]

__all__ = ["from_nats", "to_nats"]


def to_nats(event: CloudEvent, mode: Mode = "structured") -> tuple[dict[str, str], bytes]:
    """Encode an event as NATS headers and payload (headers empty in structured mode)."""
    if mode == "structured":
        return {}, to_json(event)
    if mode != "binary":
        raise ValueError(f"unknown NATS content mode {mode!r}; use 'binary' or 'structured'")
    headers = {
        "ce-" + name: encode_header_value(value if type(value) is str else canonical_string(value))
        for name, value in event._attributes.items()
    }
    if "ce-datacontenttype" not in headers and event.has_data and type(event._data) is not bytes:
        headers["ce-datacontenttype"] = "application/json"  # json-format.md 3.1.2
    return headers, event.data_bytes()


def from_nats(
    headers: Mapping[str, str] | None, payload: bytes | bytearray | memoryview
) -> CloudEvent:
    """Decode a NATS message into an event; :class:`InvalidEvent` if it is not one."""
    attributes: dict[str, object] = {}
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attributes[lower[3:]] = decode_header_value(name, value)
    if not attributes:
        return from_json(payload)
    if "specversion" not in attributes:
        raise InvalidEvent("ce-specversion", "header missing from a binary-mode NATS message")
    return CloudEvent(attributes, bytes(payload) if payload else NO_DATA)
