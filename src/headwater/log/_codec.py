"""How the log stores an event: a compact record read back without re-validation.

How this works: a record is a 5-byte header, the attributes as a JSON object
(orjson, in attribute order, values of their CloudEvents type) and the data
as raw bytes::

    +--------+------------------+------------------+----------------+
    | tag u8 | attrs length u32 | attributes JSON  | data           |
    +--------+------------------+------------------+----------------+

The tag's low bits say what the data is (none, bytes, text, a JSON value), so
that an event reads back exactly as it was appended (bytes stay bytes, text
stays text). Binary *attributes* cannot be JSON strings without losing their
type; the rare event that has one is written with each such value wrapped as
``{"b": "<base64>"}`` and flag ``_BINARY_ATTRIBUTES`` set. Decoding trusts
the record (it was validated when the event was built) and rebuilds the event
with ``CloudEvent._trusted``: one ``orjson.loads`` per event.
"""

from __future__ import annotations

import base64
import struct
from typing import Any, Final

import orjson

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent

_HEADER: Final = struct.Struct("<BI")
HEADER_SIZE: Final = _HEADER.size

_NONE: Final = 0
_BYTES: Final = 1
_TEXT: Final = 2
_JSON: Final = 3
_BINARY_ATTRIBUTES: Final = 0x80

_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from
_dumps = orjson.dumps
_loads = orjson.loads
_trusted = CloudEvent._trusted


class CorruptRecord(ValueError):
    """Bytes that are not a record this module wrote."""


def _wrap_binary(value: object) -> object:
    if type(value) is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot store attribute value {value!r}")


def encode(event: CloudEvent) -> bytes:
    """The record for ``event`` (raises :class:`InvalidEvent` for unserialisable data)."""
    attributes = event._attributes
    tag = 0
    try:
        head = _dumps(attributes)
    except TypeError:
        head = _dumps(attributes, default=_wrap_binary)
        tag = _BINARY_ATTRIBUTES
    data = event._data
    kind = type(data)
    if kind is bytes:
        body: bytes = data  # type: ignore[assignment]
        tag |= _BYTES
    elif data is NO_DATA:
        body = b""
    elif kind is str:
        body = data.encode()  # type: ignore[attr-defined]
        tag |= _TEXT
    else:
        try:
            body = _dumps(data)
        except TypeError as exc:
            raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc
        tag |= _JSON
    return _pack(tag, len(head)) + head + body


def decode(record: bytes) -> CloudEvent:
    """The event stored in ``record`` (raises :class:`CorruptRecord` on foreign bytes)."""
    try:
        tag, size = _unpack_from(record)
        end = HEADER_SIZE + size
        attributes: dict[str, Any] = _loads(record[HEADER_SIZE:end])
        if type(attributes) is not dict:
            raise CorruptRecord("not an event record: attributes are not an object")
        kind = tag & 0x7F
        if kind == _BYTES:
            data: object = record[end:]
        elif kind == _NONE:
            data = NO_DATA
        elif kind == _TEXT:
            data = record[end:].decode()
        elif kind == _JSON:
            data = _loads(record[end:])
        else:
            raise CorruptRecord(f"not an event record: unknown data kind {kind}")
        if tag & _BINARY_ATTRIBUTES:
            attributes = {
                name: base64.b64decode(value["b"], validate=True) if type(value) is dict else value
                for name, value in attributes.items()
            }
    except CorruptRecord:
        raise
    except (struct.error, ValueError, TypeError, KeyError) as exc:
        # ValueError covers orjson.JSONDecodeError, UnicodeDecodeError, binascii.Error.
        raise CorruptRecord(f"not an event record: {exc}") from exc
    return _trusted(attributes, data)
