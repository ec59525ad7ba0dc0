"""The HTTP protocol binding (http-protocol-binding.md): binary, structured, batched.

How this works: both directions are pure functions over a header mapping (or
a list of name/value pairs) and a body, usable for requests and responses
alike. The content mode is decided by the Content-Type alone (section 3): a
media type starting ``application/cloudevents-batch`` means batched mode,
``application/cloudevents`` structured mode, anything else (or none) binary
mode, which then needs a ``ce-specversion`` header. Media types compare
case-insensitively and without their parameters.

Header values are percent-encoded and decoded exactly as section 3.1.3.2
says; the common case (every value printable ASCII without space, ``"`` or
``%``) is recognised with one scan over all values and skips that work.

Encoding an event whose data is a JSON value (not bytes) and that has no
``datacontenttype`` writes ``Content-Type: application/json``: the JSON
format implies that type, and json-format.md 3.1.2 says it SHOULD be made
explicit when the event is re-encoded in another binding. That is the one
case where a decoded event differs from the encoded one (it gains the
``datacontenttype`` it implicitly had).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, Final, Literal

from headwater.cloudevents._types import binary_content_type, canonical_string, is_event_format
from headwater.cloudevents.errors import InvalidEvent, shown
from headwater.cloudevents.event import NO_DATA, CloudEvent
from headwater.cloudevents.json import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE,
    _from_object,
    _json_kind,
    _loads,
    from_json_batch,
    to_json,
    to_json_batch,
)

Mode = Literal["binary", "structured"]
Headers = Mapping[str, str] | Iterable[tuple[str, str]]

__all__ = [
    "Headers",
    "Mode",
    "decode_header_value",
    "encode_header_value",
    "from_http",
    "is_cloudevent",
    "to_http",
    "to_http_batch",
]

# 3.1.3.2: space, double-quote, percent and everything outside U+0021-U+007E
# must be percent-encoded.
_NEEDS_ENCODING = re.compile(r"[^\x21\x23\x24\x26-\x7e]").search
_PERCENT_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})").search

JSON_CONTENT_TYPE: Final = "application/json"


def encode_header_value(value: str) -> str:
    """Percent-encode a canonical string for an HTTP header (3.1.3.2).

    Each character that needs it is written as the ``%XY`` triplets (upper-case
    hex) of its UTF-8 bytes; a Python str holds whole code points, so an astral
    character is one character, as the section asks.
    """
    if _NEEDS_ENCODING(value) is None:
        return value
    return "".join(
        "".join(f"%{byte:02X}" for byte in ch.encode("utf-8")) if _NEEDS_ENCODING(ch) else ch
        for ch in value
    )


def _unquote(name: str, value: str) -> str:
    """Undo RFC 7230 3.2.6 quoted-strings (with their backslash escapes) in a header value."""
    out: list[str] = []
    quoted = False
    escaped = False
    for ch in value:
        if escaped:
            out.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        else:
            out.append(ch)
    if quoted or escaped:
        raise InvalidEvent(name, f"has an unterminated quoted-string: {shown(value)}")
    return "".join(out)


def decode_header_value(name: str, value: str) -> str:
    """Undo 3.1.3.2: unescape RFC 7230 quoted-strings, then one round of percent-decoding.

    Lower-case hex and needlessly encoded characters are accepted; byte
    sequences that are not valid UTF-8 after decoding (overlong forms such as
    ``%C0%A0``, encoded surrogates) are rejected.
    """
    if '"' in value:
        value = _unquote(name, value)
    if "%" not in value:
        return value
    if _BAD_PERCENT(value):
        raise InvalidEvent(name, f"has a malformed percent-encoding: {shown(value)}")
    raw = bytearray()
    pos = 0
    try:
        for m in _PERCENT_TRIPLET.finditer(value):
            # Characters between triplets go back to the bytes they were
            # received as (servers decode header bytes with surrogateescape).
            raw += value[pos : m.start()].encode("utf-8", "surrogateescape")
            raw.append(int(m.group(1), 16))
            pos = m.end()
        raw += value[pos:].encode("utf-8", "surrogateescape")
        return raw.decode("utf-8")
    except UnicodeError as exc:
        raise InvalidEvent(name, f"percent-decodes to invalid UTF-8: {shown(value)}") from exc


def to_http(event: CloudEvent, mode: Mode = "binary") -> tuple[dict[str, str], bytes]:
    """Encode an event as HTTP headers and body, in binary or structured mode."""
    if mode == "structured":
        return {"content-type": CONTENT_TYPE}, to_json(event)
    if mode != "binary":
        raise ValueError(f"unknown HTTP content mode {mode!r}; use 'binary' or 'structured'")
    attributes = event._attributes
    # 3.1.3.1: every attribute but datacontenttype becomes a ce- header holding
    # its canonical string (3.1.3.2).
    headers = {"ce-" + name: value for name, value in attributes.items()}
    content_type = headers.pop("ce-datacontenttype", None)
    try:
        joined = "".join(headers.values())  # type: ignore[arg-type]
    except TypeError:  # a Boolean, Integer or Binary extension
        for name, value in headers.items():
            if type(value) is not str:
                headers[name] = canonical_string(value)
        joined = "".join(headers.values())  # type: ignore[arg-type]
    # 3.1.3.2: the common case (printable ASCII without space, '"' or '%') in
    # one scan of all values at once; otherwise value by value.
    if not (
        joined.isascii()
        and joined.isprintable()
        and " " not in joined
        and '"' not in joined
        and "%" not in joined
    ):
        for name, value in headers.items():
            headers[name] = encode_header_value(value)  # type: ignore[arg-type]
    data = event._data
    if content_type is not None:
        headers["content-type"] = binary_content_type(content_type)  # type: ignore[arg-type]  # 3.1.1
    elif data is not NO_DATA and type(data) is not bytes:
        # json-format.md 3.1.2: JSON data without datacontenttype is implied
        # application/json, which SHOULD be made explicit when re-encoding.
        headers["content-type"] = JSON_CONTENT_TYPE
    return headers, data if type(data) is bytes else event.data_bytes()  # type: ignore[return-value]


def to_http_batch(events: Iterable[CloudEvent]) -> tuple[dict[str, str], bytes]:
    """Encode events in batched mode (3.3); they must share one specversion."""
    return {"content-type": BATCH_CONTENT_TYPE}, to_json_batch(events)


_BINARY: Final = 0
_STRUCTURED: Final = 1
_BATCH: Final = 2


@lru_cache(maxsize=256)
def _mode(content_type: str) -> int:
    """The content mode a Content-Type selects (section 3)."""
    if not is_event_format(content_type):
        return _BINARY
    media = content_type.partition(";")[0].strip().lower()
    # 3.2 / 3.3: the event format the media type names; only JSON here.
    if media == CONTENT_TYPE:
        return _STRUCTURED
    if media == BATCH_CONTENT_TYPE:
        return _BATCH
    raise InvalidEvent(
        "content-type",
        f"unsupported event format {shown(media)}; this receiver reads {CONTENT_TYPE} "
        f"and {BATCH_CONTENT_TYPE}",
    )


# Header name -> its role: the attribute name a ce- header carries (a str,
# possibly empty for a bare "ce-"), or one of the two int roles below. Names
# repeat from message to message, so each is lowered and classified once.
# Bounded: emptied when full, never grows with hostile input.
_CONTENT_TYPE_ROLE: Final = 0
_OTHER_ROLE: Final = 1
_header_roles: dict[str, str | int] = {}
MAX_REMEMBERED_HEADER_NAMES: Final = 4096


def _header_role(name: str) -> str | int:
    lower = name.lower()
    role: str | int
    if lower == "content-type":
        role = _CONTENT_TYPE_ROLE
    elif lower.startswith("ce-"):
        role = lower[3:]
    else:
        role = _OTHER_ROLE
    if len(_header_roles) >= MAX_REMEMBERED_HEADER_NAMES:
        _header_roles.clear()
    _header_roles[name] = role
    return role


def _read_headers(headers: Headers) -> tuple[str | None, dict[str, Any]]:
    """The Content-Type and the ce- headers (by attribute name, values still encoded)."""
    # A Mapping (dict, multidict) offers items(); otherwise it is a list of pairs.
    try:
        items = headers.items()  # type: ignore[union-attr]
    except AttributeError:
        items = headers
    content_type: str | None = None
    attributes: dict[str, Any] = {}
    roles = _header_roles
    for name, value in items:
        role = roles.get(name)
        if role is None:
            role = _header_role(name)
        if role is _OTHER_ROLE:
            continue
        if role is _CONTENT_TYPE_ROLE:
            if content_type is not None:
                raise InvalidEvent("content-type", "header appears more than once")
            content_type = value
        elif role in attributes:
            raise InvalidEvent(name, "header appears more than once")
        else:
            attributes[role] = value  # type: ignore[index]
    return content_type, attributes


def is_cloudevent(headers: Headers) -> bool:
    """True when a message looks like a CloudEvent in any mode (without parsing it)."""
    try:
        content_type, attributes = _read_headers(headers)
        return (
            content_type is not None and _mode(content_type) != _BINARY
        ) or "specversion" in attributes
    except InvalidEvent:
        return True  # a CloudEvent, if a broken one: from_http says what is wrong


def from_http(
    headers: Headers, body: bytes | bytearray | memoryview
) -> CloudEvent | list[CloudEvent]:
    """Decode an HTTP message (request or response) into an event, or a list for a batch.

    Raises :class:`InvalidEvent` naming the problem when the message is not a
    valid CloudEvent in the mode its Content-Type selects.
    """
    content_type, attributes = _read_headers(headers)
    mode = _BINARY if content_type is None else _mode(content_type)
    if mode == _STRUCTURED:
        # 3.2.3: ce- headers MAY accompany a structured message; the body rules.
        obj = _loads(body)
        if type(obj) is not dict:
            raise InvalidEvent("event", f"a JSON event must be an object, not {_json_kind(obj)}")
        return _from_object(obj)
    if mode == _BATCH:
        return from_json_batch(body)
    if "specversion" not in attributes:
        raise InvalidEvent(
            "ce-specversion",
            "header missing: not a binary-mode CloudEvent, and the Content-Type "
            f"({content_type or 'none'}) is not a CloudEvents format",
        )
    if "datacontenttype" in attributes:
        # 3.1.1: a ce-datacontenttype header MUST NOT be present.
        raise InvalidEvent(
            "ce-datacontenttype",
            "header not allowed in binary mode: datacontenttype is the Content-Type (3.1.1)",
        )
    joined = "".join(attributes.values())
    if "%" in joined or '"' in joined:
        for attribute, value in attributes.items():
            attributes[attribute] = decode_header_value("ce-" + attribute, value)
    if content_type is not None:
        attributes["datacontenttype"] = content_type  # 3.1.1
    return CloudEvent._owned(attributes, bytes(body) if body else NO_DATA)
