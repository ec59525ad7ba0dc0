"""The HTTP protocol binding (http-protocol-binding.md): binary, structured, batched.

How this works: both directions are pure functions over a header mapping and a
body, usable for requests and responses alike. The content mode is decided by
the Content-Type alone (section 3): a CloudEvents media type means structured
or batched mode, anything else binary mode, which then needs ``ce-`` headers.
Header values are percent-encoded and decoded exactly as section 3.1.3.2 says;
the common case (plain printable ASCII) skips that work entirely.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from headwater.cloudevents._types import AttributeValue, canonical_string
from headwater.cloudevents.errors import InvalidEvent
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.json import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    from_json,
    from_json_batch,
    to_json,
    to_json_batch,
)

Mode = Literal["binary", "structured"]
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

__all__ = ["Mode", "from_http", "is_cloudevent", "to_http", "to_http_batch"]

# 3.1.3.2: space, double-quote, percent and everything outside U+0021-U+007E
# must be percent-encoded.
_NEEDS_ENCODING = re.compile(r"[^\x21\x23\x24\x26-\x7e]").search
_PERCENT_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})").search
_QUOTED_PAIR = re.compile(r"\\(.)")


def encode_header_value(value: str) -> str:
    """Percent-encode a canonical string for an HTTP header (3.1.3.2)."""
    if _NEEDS_ENCODING(value) is None:
        return value
    return "".join(
        "".join(f"%{byte:02X}" for byte in ch.encode("utf-8")) if _NEEDS_ENCODING(ch) else ch
        for ch in value
    )


def decode_header_value(name: str, value: str) -> str:
    """Undo 3.1.3.2: unquote an RFC 7230 quoted-string, then one round of percent-decoding.

    Byte sequences that are not valid UTF-8 after decoding (overlong forms
    such as ``%C0%A0`` included) are rejected.
    """
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
    if "%" not in value:
        return value
    if _BAD_PERCENT(value):
        raise InvalidEvent(name, f"has a malformed percent-encoding: {value!r}")
    raw = bytearray()
    pos = 0
    for m in _PERCENT_TRIPLET.finditer(value):
        raw += value[pos : m.start()].encode("utf-8")
        raw.append(int(m.group(1), 16))
        pos = m.end()
    raw += value[pos:].encode("utf-8")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(name, f"percent-decodes to invalid UTF-8: {value!r}") from exc


def to_http(event: CloudEvent, mode: Mode = "binary") -> tuple[dict[str, str], bytes]:
    """Encode an event as HTTP headers and body, in binary or structured mode."""
    if mode == "structured":
        return {"content-type": CONTENT_TYPE}, to_json(event)
    if mode != "binary":
        raise ValueError(f"unknown HTTP content mode {mode!r}; use 'binary' or 'structured'")
    headers: dict[str, str] = {}
    value: AttributeValue
    for name, value in event._attributes.items():
        if name == "datacontenttype":
            # 3.1.1: datacontenttype maps to Content-Type.
            headers["content-type"] = value  # type: ignore[assignment]
            continue
        text = value if type(value) is str else canonical_string(value)
        headers["ce-" + name] = text if _NEEDS_ENCODING(text) is None else encode_header_value(text)
    data = event._data
    if data is not NO_DATA and type(data) is not bytes and "content-type" not in headers:
        # json-format.md 3.1.2: JSON data without datacontenttype is implied
        # application/json, which SHOULD be made explicit when re-encoding.
        headers["content-type"] = "application/json"
    return headers, event.data_bytes()


def to_http_batch(events: Iterable[CloudEvent]) -> tuple[dict[str, str], bytes]:
    """Encode events in batched mode (3.3)."""
    return {"content-type": BATCH_CONTENT_TYPE}, to_json_batch(events)


def _media_type(content_type: str | None) -> str:
    if content_type is None:
        return ""
    return content_type.partition(";")[0].strip().lower()


def _header_items(headers: Headers) -> Iterable[tuple[str, str]]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return items


def is_cloudevent(headers: Headers) -> bool:
    """True when a message looks like a CloudEvent in any mode (without parsing it)."""
    for name, value in _header_items(headers):
        lower = name.lower()
        if lower == "ce-specversion":
            return True
        if lower == "content-type" and _media_type(value).startswith("application/cloudevents"):
            return True
    return False


def from_http(
    headers: Headers, body: bytes | bytearray | memoryview
) -> CloudEvent | list[CloudEvent]:
    """Decode an HTTP message (request or response) into an event, or a list for a batch.

    Raises :class:`InvalidEvent` naming the problem when the message is not a
    valid CloudEvent in any mode.
    """
    content_type: str | None = None
    attributes: dict[str, Any] = {}
    for name, value in _header_items(headers):
        lower = name.lower()
        if lower == "content-type":
            content_type = value
        elif lower.startswith("ce-"):
            attribute = lower[3:]
            if attribute in attributes:
                raise InvalidEvent(name, "header appears more than once")
            if "%" in value or value[:1] == '"':
                value = decode_header_value(name, value)
            attributes[attribute] = value
    media = _media_type(content_type)
    if media.startswith("application/cloudevents"):
        # 3.2 / 3.3: the event format named by the media type; only JSON here.
        if media == CONTENT_TYPE:
            return from_json(body)
        if media == BATCH_CONTENT_TYPE:
            return from_json_batch(body)
        raise InvalidEvent("content-type", f"unsupported event format {media!r}; use JSON")
    if "specversion" not in attributes:
        raise InvalidEvent(
            "ce-specversion",
            "header missing: not a binary-mode CloudEvent, and the Content-Type "
            f"({content_type or 'none'}) is not a CloudEvents format",
        )
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return CloudEvent(attributes, bytes(body) if body else NO_DATA)
