"""The NATS protocol binding (nats-protocol-binding.md, 1.0.3-wip), over plain values.

How this works: a NATS message is described by its headers (NATS 2.2+) and
its payload. Binary mode (3.1): every attribute, ``datacontenttype``
included, is a ``ce-``-prefixed header (3.1.3.1) whose value is
percent-encoded exactly like HTTP's (3.1.3.2); the payload is the data.
Structured mode: the JSON format as the payload, announced by a
``Content-Type: application/cloudevents+json`` header.

Receiving (section 3): a ``Content-Type`` header starting
``application/cloudevents`` (case-insensitive) means structured mode,
otherwise binary mode. A message without any header is read as structured:
it is what a sender on a server older than NATS 2.2 (which has no headers,
and where "the content mode is always structured") produces.

As in every binding, JSON data (not bytes) without ``datacontenttype`` gets
the implied ``application/json`` in binary mode (json-format.md 3.1.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from headwater.cloudevents._types import canonical_string, is_event_format
from headwater.cloudevents.errors import InvalidEvent, shown
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.http import decode_header_value, encode_header_value
from headwater.cloudevents.json import CONTENT_TYPE, from_json, to_json

Mode = Literal["binary", "structured"]

__all__ = ["from_nats", "to_nats"]


def to_nats(event: CloudEvent, mode: Mode = "structured") -> tuple[dict[str, str], bytes]:
    """Encode an event as NATS headers and payload."""
    if mode == "structured":
        return {"Content-Type": CONTENT_TYPE}, to_json(event)
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
    if not headers:
        return from_json(payload)  # no headers: a pre-2.2 sender, always structured
    attributes: dict[str, object] = {}
    content_type: str | None = None
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            attribute = lower[3:]
            if attribute in attributes:
                raise InvalidEvent(name, "header appears more than once")
            attributes[attribute] = decode_header_value(name, value)
        elif lower == "content-type":
            content_type = value
    if content_type is not None and is_event_format(content_type):
        media = content_type.partition(";")[0].strip().lower()
        if media != CONTENT_TYPE:
            raise InvalidEvent(
                "Content-Type", f"unsupported event format {shown(media)}; this receiver reads JSON"
            )
        return from_json(payload)
    if "specversion" not in attributes:
        raise InvalidEvent(
            "ce-specversion",
            "header missing: not a binary-mode CloudEvent, and the Content-Type "
            f"({content_type or 'none'}) is not a CloudEvents format",
        )
    return CloudEvent._owned(attributes, bytes(payload) if payload else NO_DATA)
