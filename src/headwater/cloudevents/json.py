"""The JSON event format (json-format.md): single events and batches.

How this works: ``from_json`` parses with orjson, takes ``data`` or
``data_base64`` out of the object and hands the rest to the CloudEvent
validator. ``to_json`` writes attributes as JSON values of their type (Binary
as Base64 strings, section 2.2) and places data per section 3.1.1: Binary data
goes to ``data_base64``, except bytes whose ``datacontenttype`` declares JSON
and that hold valid JSON, which are embedded as the JSON value they encode (a
binary-mode HTTP body of ``application/json`` stays readable JSON, byte for
byte); text and JSON values go to ``data``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
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


def to_json_value(event: CloudEvent) -> dict[str, Any]:
    """The event as a JSON-ready dict (members in attribute order, then data)."""
    out: dict[str, Any] = {}
    for name, value in event._attributes.items():
        out[name] = base64.b64encode(value).decode("ascii") if type(value) is bytes else value
    data = event._data
    if data is NO_DATA:
        return out
    if type(data) is bytes:
        if is_json_content_type(event._attributes.get("datacontenttype")):
            # json-format.md 3.1.1: JSON-formatted content goes into `data`
            # as a JSON value; raw bytes that are valid JSON are embedded
            # as they are (orjson.Fragment), invalid ones fall back to Base64.
            try:
                orjson.loads(data)
            except orjson.JSONDecodeError:
                pass
            else:
                out["data"] = orjson.Fragment(data)
                return out
        out["data_base64"] = base64.b64encode(data).decode("ascii")
        return out
    out["data"] = data
    return out


def to_json(event: CloudEvent) -> bytes:
    """Serialise one event in the JSON format (``application/cloudevents+json``)."""
    try:
        return orjson.dumps(to_json_value(event))
    except TypeError as exc:
        raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc


def to_json_batch(events: Iterable[CloudEvent]) -> bytes:
    """Serialise events as a JSON batch (``application/cloudevents-batch+json``)."""
    values = [to_json_value(event) for event in events]
    _check_batch_versions(values)
    try:
        return orjson.dumps(values)
    except TypeError as exc:
        raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc


def from_json_value(obj: object) -> CloudEvent:
    """Build an event from an already-parsed JSON object."""
    if type(obj) is not dict:
        raise InvalidEvent("event", f"a JSON event must be an object, not {_json_kind(obj)}")
    attributes: dict[str, Any] = obj
    data: object = NO_DATA
    if "data_base64" in attributes or "data" in attributes:
        attributes = dict(attributes)
        has_data = "data" in attributes
        data = attributes.pop("data", NO_DATA)
        encoded = attributes.pop("data_base64", None)
        if encoded is not None:
            if has_data:
                # json-format.md 3.1.1: the two members are mutually exclusive.
                raise InvalidEvent("data_base64", "an event cannot have both data and data_base64")
            if type(encoded) is not str:
                raise InvalidEvent("data_base64", "must be a JSON string of Base64")
            data = decode_base64("data_base64", encoded)
    for name, value in attributes.items():
        kind = type(value)
        if kind is float:
            if not value.is_integer():
                raise InvalidEvent(name, f"Integer attributes must be whole numbers, not {value}")
            attributes = {**attributes, name: int(value)}
        elif kind is dict or kind is list:
            raise InvalidEvent(
                name, f"attribute values cannot be JSON {_json_kind(value)}s (json-format.md 2.2)"
            )
    return CloudEvent(attributes, data)


def from_json(body: bytes | bytearray | memoryview | str) -> CloudEvent:
    """Parse one event in the JSON format; raise :class:`InvalidEvent` if it is not one."""
    return from_json_value(_loads(body))


def from_json_batch(body: bytes | bytearray | memoryview | str) -> list[CloudEvent]:
    """Parse a JSON batch; ``[]`` is a valid, empty batch (json-format.md 4)."""
    values = _loads(body)
    if type(values) is not list:
        raise InvalidEvent("batch", f"a JSON batch must be an array, not {_json_kind(values)}")
    events = [_batch_member(i, value) for i, value in enumerate(values)]
    _check_batch_versions([e._attributes for e in events])
    return events


def _batch_member(index: int, value: object) -> CloudEvent:
    try:
        return from_json_value(value)
    except InvalidEvent as exc:
        raise InvalidEvent(f"batch[{index}].{exc.attribute}", exc.reason) from exc


def _check_batch_versions(values: Sequence[Any]) -> None:
    versions = {value.get("specversion") for value in values}
    if len(versions) > 1:
        raise InvalidEvent(
            "batch", f"events in one batch must share a specversion, found {sorted(versions)}"
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
