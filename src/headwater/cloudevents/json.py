"""The JSON event format (json-format.md): single events and batches.

How this works: ``from_json`` parses with orjson, takes ``data`` or
``data_base64`` out of the object and hands the rest, as the dict orjson made,
to the CloudEvent validator (which types each member per section 2.2: a String
attribute must be a JSON string, an Integer a JSON number without fraction or
exponent; ``null`` means unset). ``to_json`` writes attributes as JSON values
of their type (Binary as Base64 strings) and places data per section 3.1.1:
Binary data goes to ``data_base64``, except bytes whose ``datacontenttype``
declares JSON and that hold valid JSON, which are embedded as the JSON value
they encode (a binary-mode ``application/json`` body stays readable JSON, byte
for byte); text and JSON values go to ``data``.

CloudEvents 0.3 is kept as 0.3: there, ``datacontentencoding: base64`` marks
``data`` as Base64 text of binary data, which is decoded on reading and
written back the same way. 0.3 has no way to carry binary data without that
attribute, and adding it would rewrite the event, so such data is written as
``data_base64`` (which the official SDK also reads for 0.3).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import orjson

from headwater.cloudevents._types import decode_base64
from headwater.cloudevents.errors import InvalidEvent
from headwater.cloudevents.event import NO_DATA, CloudEvent, is_json_content_type

CONTENT_TYPE = "application/cloudevents+json"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"

__all__ = [
    "BATCH_CONTENT_TYPE",
    "CONTENT_TYPE",
    "from_json",
    "from_json_batch",
    "from_json_value",
    "to_json",
    "to_json_batch",
    "to_json_value",
]

_b64encode = base64.b64encode


def to_json_value(event: CloudEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict (members in attribute order, then data)."""
    attributes = event._attributes
    out: dict[str, Any] = dict(attributes)
    if bytes in map(type, attributes.values()):
        _binary_as_base64(out)
    return _add_data(out, event)


def _binary_as_base64(members: dict[str, Any]) -> None:
    for name, value in members.items():
        if type(value) is bytes:
            members[name] = _b64encode(value).decode("ascii")  # 2.2: Binary as Base64


def _add_data(out: dict[str, Any], event: CloudEvent) -> dict[str, Any]:
    """Place the event's data in ``out`` as section 3.1.1 says, and return ``out``."""
    data = event._data
    if data is NO_DATA:
        return out
    if type(data) is not bytes:
        out["data"] = data
        return out
    attributes = event._attributes
    if attributes["specversion"] == "0.3" and _is_base64_encoding(attributes):
        out["data"] = _b64encode(data).decode("ascii")
        return out
    if is_json_content_type(attributes.get("datacontenttype")):
        # 3.1.1: JSON-formatted content goes into `data` as a JSON value; raw
        # bytes that are valid JSON are embedded as they are (orjson.Fragment),
        # anything else is Binary and falls back to Base64.
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            out["data"] = orjson.Fragment(data)
            return out
    out["data_base64"] = _b64encode(data).decode("ascii")
    return out


def to_json(event: CloudEvent) -> bytes:
    """Serialise one event in the JSON format (``application/cloudevents+json``)."""
    members = _add_data(dict(event._attributes), event)
    try:
        return orjson.dumps(members)
    except TypeError:
        # orjson refuses bytes: Binary attributes (rare) are written as Base64
        # and serialisation tried again; data it cannot serialise fails again.
        _binary_as_base64(members)
    try:
        return orjson.dumps(members)
    except TypeError as exc:  # orjson.JSONEncodeError included
        raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc


def to_json_batch(events: Iterable[CloudEvent]) -> bytes:
    """Serialise events as a JSON batch (``application/cloudevents-batch+json``).

    http-protocol-binding.md 3.3.2: all events of a batch share one specversion.
    """
    events = list(events)
    _check_batch_versions(events)
    try:
        return orjson.dumps([to_json_value(event) for event in events])
    except TypeError as exc:
        raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc


def from_json_value(obj: object) -> CloudEvent:
    """Build an event from an already-parsed JSON object (which is left untouched)."""
    if type(obj) is not dict:
        raise InvalidEvent("event", f"a JSON event must be an object, not {_json_kind(obj)}")
    return _from_object(dict(obj))


def _from_object(obj: dict[str, Any]) -> CloudEvent:
    """Build an event from a JSON object this module owns (it becomes the attributes)."""
    data: object = obj.pop("data", NO_DATA)
    encoded = obj.pop("data_base64", None)  # 2.2: null is the same as absent
    if encoded is not None:
        if data is not NO_DATA:
            # 3.1.1: the two members are mutually exclusive.
            raise InvalidEvent("data_base64", "an event cannot have both data and data_base64")
        if type(encoded) is not str:
            raise InvalidEvent(
                "data_base64", f"must be a JSON string of Base64, not {_json_kind(encoded)}"
            )
        # 3.1.2: data_base64 MUST be decoded into binary.
        data = decode_base64("data_base64", encoded)
    elif type(data) is str and obj.get("specversion") == "0.3" and _is_base64_encoding(obj):
        data = decode_base64("data", data)  # 0.3: Base64 text of binary data
    return CloudEvent._owned(obj, data)


def _is_base64_encoding(attributes: dict[str, Any]) -> bool:
    encoding = attributes.get("datacontentencoding")
    return type(encoding) is str and encoding.lower() == "base64"


def from_json(body: bytes | bytearray | memoryview | str) -> CloudEvent:
    """Parse one event in the JSON format; raise :class:`InvalidEvent` if it is not one."""
    obj = _loads(body)
    if type(obj) is not dict:
        raise InvalidEvent("event", f"a JSON event must be an object, not {_json_kind(obj)}")
    return _from_object(obj)


def from_json_batch(body: bytes | bytearray | memoryview | str) -> list[CloudEvent]:
    """Parse a JSON batch; ``[]`` is a valid, empty batch (json-format.md 4)."""
    values = _loads(body)
    if type(values) is not list:
        raise InvalidEvent("batch", f"a JSON batch must be an array, not {_json_kind(values)}")
    events = [_batch_member(i, value) for i, value in enumerate(values)]
    _check_batch_versions(events)
    return events


def _batch_member(index: int, value: object) -> CloudEvent:
    try:
        if type(value) is not dict:
            raise InvalidEvent("event", f"must be a JSON object, not {_json_kind(value)}")
        return _from_object(value)
    except InvalidEvent as exc:
        raise InvalidEvent(f"batch[{index}].{exc.attribute}", exc.reason) from exc


def _check_batch_versions(events: list[CloudEvent]) -> None:
    versions = {event.specversion for event in events}
    if len(versions) > 1:
        raise InvalidEvent(
            "batch",
            f"events in one batch must share a specversion, found {', '.join(sorted(versions))}",
        )


def _loads(body: bytes | bytearray | memoryview | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("body", f"is not valid JSON: {exc}") from exc


def _json_kind(value: object) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)
