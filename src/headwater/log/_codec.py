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

Consecutive records can be stored as one value, a *batch*, as Kafka stores
record batches: tag :data:`BATCH`, the number of records, each record's
length (u32), then the records::

    +-----------+-----------+----------------------+-----------+-----+
    | 0x40 u8   | count u32 | count x length u32   | record 1  | ... |
    +-----------+-----------+----------------------+-----------+-----+

The SQLite log writes each group commit's events of a stream as one batch
row instead of one row per event (see :mod:`headwater.log._sqlite_writer`).
A batch is never a record: :func:`decode` refuses its tag.

A producer that knows most of its events' attributes in advance (an MQTT
source: everything but the id, time and QoS follows from the topic) encodes
their records itself, the constant part once (:func:`attributes_head`,
:func:`bytes_record`), and hands them over with the events as
:class:`EncodedEvents`; a log appends those records as they are instead of
encoding every event again.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from typing import Any, Final, TypeGuard

import orjson

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent

_HEADER: Final = struct.Struct("<BI")
HEADER_SIZE: Final = _HEADER.size

_NONE: Final = 0
_BYTES: Final = 1
_TEXT: Final = 2
_JSON: Final = 3
_BINARY_ATTRIBUTES: Final = 0x80
BATCH: Final = 0x40
"""The tag of a batch of records (never a record's tag)."""

_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from
_lengths_format = "<{}I".format
_BATCH_TAG: Final = bytes([BATCH])
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


class EncodedEvents(tuple[CloudEvent, ...]):
    """Events with their records already encoded, in order (``records[i]`` is
    exactly :func:`encode` of ``self[i]``), and the attributes every one of them
    carries (``common``: name -> value). Immutable, so that the two cannot part:
    whatever derives other events from these builds a new sequence, which is
    encoded as usual."""

    records: tuple[bytes, ...]
    common: dict[str, Any]

    def __new__(
        cls, events: Sequence[CloudEvent], records: Sequence[bytes], common: dict[str, Any]
    ) -> EncodedEvents:
        if len(events) != len(records):
            raise ValueError(f"{len(events)} events but {len(records)} records")
        self = super().__new__(cls, events)
        self.records = tuple(records)
        self.common = common
        return self


def records_of(events: Sequence[CloudEvent]) -> list[bytes]:
    """The records of ``events``: those an :class:`EncodedEvents` carries, else encoded."""
    if type(events) is EncodedEvents:
        return list(events.records)
    return [encode(event) for event in events]


def attributes_head(attributes: dict[str, Any]) -> bytes | None:
    """The start of the attributes JSON of every event whose attributes begin with
    ``attributes`` (in this order): what :func:`encode` writes for them, without the
    closing brace. None when a value needs the binary form (see :func:`encode`)."""
    try:
        return _dumps(attributes)[:-1]
    except TypeError:
        return None


def bytes_record(head: bytes, middle: bytes, tail: bytes, data: bytes) -> bytes:
    """The record of an event whose attributes JSON is ``head + middle + tail`` (as
    :func:`encode` writes it) and whose data is ``data`` (bytes; empty: no data)."""
    return b"".join(
        (
            _pack(_BYTES if data else _NONE, len(head) + len(middle) + len(tail)),
            head,
            middle,
            tail,
            data,
        )
    )


def encode_batch(records: Sequence[bytes]) -> bytes:
    """One value holding ``records`` in order (at least two of them; one is stored as itself)."""
    count = len(records)
    return (
        _pack(BATCH, count)
        + struct.pack(_lengths_format(count), *map(len, records))
        + b"".join(records)
    )


def stored_value(records: Sequence[bytes]) -> bytes:
    """What a row stores for consecutive ``records``: a single one as itself, else a batch."""
    return records[0] if len(records) == 1 else encode_batch(records)


def stored_size(lengths: Sequence[int]) -> int:
    """The size of :func:`stored_value` for records of these lengths."""
    if len(lengths) == 1:
        return lengths[0]
    return HEADER_SIZE + 4 * len(lengths) + sum(lengths)


def is_batch(value: object) -> TypeGuard[bytes]:
    """Whether a stored value is a batch (else it is one record, or garbage)."""
    return type(value) is bytes and value[:1] == _BATCH_TAG


def batch_lengths(value: bytes) -> tuple[int, ...]:
    """The lengths of a batch's records (raises :class:`CorruptRecord` if they do not add up)."""
    try:
        tag, count = _unpack_from(value)
        lengths: tuple[int, ...] = struct.unpack_from(_lengths_format(count), value, HEADER_SIZE)
    except struct.error as exc:
        raise CorruptRecord(f"not a batch of records: {exc}") from exc
    if tag != BATCH or count < 2 or HEADER_SIZE + 4 * count + sum(lengths) != len(value):
        raise CorruptRecord("not a batch of records: its count or lengths do not add up")
    return lengths


def split_batch(value: bytes, skip: int = 0, limit: int | None = None) -> list[bytes]:
    """The records of a batch, without the first ``skip``, at most ``limit`` of them."""
    lengths = batch_lengths(value)
    start = HEADER_SIZE + 4 * len(lengths) + sum(lengths[:skip])
    records = []
    for length in lengths[skip:] if limit is None else lengths[skip : skip + limit]:
        end = start + length
        records.append(value[start:end])
        start = end
    return records


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
