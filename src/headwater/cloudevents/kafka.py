"""The Kafka protocol binding (kafka-protocol-binding.md), over plain values.

How this works: a Kafka record is described by its headers (a list of name
and bytes pairs, as Kafka clients give them), key and value. Binary mode
(3.2): ``ce_``-prefixed headers with UTF-8 values, ``content-type`` for
``datacontenttype``, the value is the data. Structured mode (3.3): a
``content-type`` of ``application/cloudevents+json`` and the JSON format as
the value.

Receiving (section 3): a ``content-type`` header starting
``application/cloudevents`` means structured mode, otherwise binary mode. A
record with neither a ``content-type`` nor a ``ce_specversion`` header is read
as structured JSON: 3.3.1 makes that header optional ("If present"), and
Kafka before 0.11 has no headers and "MUST only use structured mode". Headers
other than ``content-type`` and ``ce_*`` are not looked at.

The record key is set from ``partitionkey`` only when asked (3.1: the key
mapper is opt-in and never modifies the event); on receipt the key is not
turned into an attribute.

As in every binding, JSON data (not bytes) without ``datacontenttype`` gets
the implied ``application/json`` as ``content-type`` in binary mode
(json-format.md 3.1.2). An event without data has an empty value, not a
null one (a null value is a tombstone to a compacted topic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from headwater.cloudevents._types import binary_content_type, canonical_string, is_event_format
from headwater.cloudevents.errors import InvalidEvent, shown
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.json import CONTENT_TYPE, from_json, to_json

Mode = Literal["binary", "structured"]

__all__ = ["KafkaRecord", "from_kafka", "to_kafka"]

_CONTENT_TYPE = CONTENT_TYPE.encode()


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """The parts of a Kafka record a CloudEvent maps to."""

    headers: tuple[tuple[str, bytes], ...]
    value: bytes | None
    key: bytes | None = None


def to_kafka(
    event: CloudEvent, mode: Mode = "binary", *, key_from_partitionkey: bool = False
) -> KafkaRecord:
    """Encode an event as a Kafka record.

    With ``key_from_partitionkey`` the record key is the ``partitionkey``
    attribute's value, as is (3.1), when the event has one.
    """
    key: bytes | None = None
    if key_from_partitionkey:
        partitionkey = event.get("partitionkey")
        if partitionkey is not None:
            key = canonical_string(partitionkey).encode()
    if mode == "structured":
        return KafkaRecord((("content-type", _CONTENT_TYPE),), to_json(event), key)
    if mode != "binary":
        raise ValueError(f"unknown Kafka content mode {mode!r}; use 'binary' or 'structured'")
    headers: list[tuple[str, bytes]] = []
    for name, value in event._attributes.items():
        text = value if type(value) is str else canonical_string(value)
        if name == "datacontenttype":
            headers.append(("content-type", binary_content_type(text).encode()))  # 3.2.1
        else:
            headers.append(("ce_" + name, text.encode()))  # 3.2.3: UTF-8
    if event.datacontenttype is None and event.has_data and type(event._data) is not bytes:
        headers.append(("content-type", b"application/json"))  # json-format.md 3.1.2
    return KafkaRecord(tuple(headers), event.data_bytes(), key)


def from_kafka(
    headers: Sequence[tuple[str, bytes | None]],
    value: bytes | bytearray | memoryview | None,
    key: bytes | None = None,
) -> CloudEvent:
    """Decode a Kafka record into an event; :class:`InvalidEvent` if it is not one.

    The key is not turned into an attribute (3.1: mapping the key is the
    sender's business); a ``partitionkey`` travels as its own header.
    """
    content_type: str | None = None
    attributes: dict[str, object] = {}
    for name, raw in headers:
        lower = name.lower()
        if lower == "content-type":
            if content_type is not None:
                raise InvalidEvent(name, "header appears more than once")
            content_type = _utf8(name, raw)
        elif lower.startswith("ce_"):
            if lower[3:] in attributes:
                raise InvalidEvent(name, "header appears more than once")
            attributes[lower[3:]] = _utf8(name, raw)
    if content_type is not None and is_event_format(content_type):
        media = content_type.partition(";")[0].strip().lower()
        if media != CONTENT_TYPE:
            raise InvalidEvent(
                "content-type", f"unsupported event format {shown(media)}; this receiver reads JSON"
            )
        return _structured(value)
    if "specversion" not in attributes:
        if content_type is None and not attributes:
            return _structured(value)  # 3.3.1: content-type is optional in structured mode
        raise InvalidEvent(
            "ce_specversion",
            "header missing: not a binary-mode CloudEvent, and the content-type "
            f"({content_type or 'none'}) is not a CloudEvents format",
        )
    if "datacontenttype" in attributes:
        # 3.2.1: datacontenttype is the content-type header.
        raise InvalidEvent(
            "ce_datacontenttype", "header not allowed in binary mode: use content-type (3.2.1)"
        )
    if content_type is not None:
        attributes["datacontenttype"] = content_type  # 3.2.1
    return CloudEvent._owned(attributes, bytes(value) if value else NO_DATA)


def _structured(value: bytes | bytearray | memoryview | None) -> CloudEvent:
    if value is None:
        raise InvalidEvent("value", "a structured-mode record needs a value (this one is null)")
    return from_json(value)


def _utf8(name: str, raw: bytes | None) -> str:
    if raw is None:
        raise InvalidEvent(name, "header has no value")
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(name, "header value is not valid UTF-8 (3.2.3)") from exc
