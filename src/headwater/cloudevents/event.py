"""The CloudEvent value: context attributes plus data, validated once, immutable.

How this works: the constructor checks every attribute against the CloudEvents
type system for the event's specversion (1.0, or 0.3 kept as 0.3) and stores
the values as given, so that a decoded event re-encodes to the same attributes
(nothing is added, dropped or rewritten in transit). Decoders that already
validated build events through :meth:`CloudEvent._trusted`, skipping the work.

``data`` is one of: ``bytes`` (Binary, as a binary-mode body or
``data_base64`` carries it), ``str`` (text), or any JSON value (from the JSON
format's ``data`` member). An absent payload is distinct from a JSON ``null``
payload (json-format.md 3.1.1): ``has_data`` tells them apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, cast, final

import orjson

from headwater.cloudevents._types import (
    REQUIRED,
    SPEC_ATTRIBUTES,
    AttributeValue,
    Validator,
    canonical_string,
    check_extension_name,
    check_extension_value,
)
from headwater.cloudevents.errors import InvalidEvent


class _NoData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_DATA"

    def __bool__(self) -> bool:
        return False


NO_DATA: Final = _NoData()
"""Marks an event without data (distinct from data that is JSON ``null``)."""

# Validated extension names, so that the common case (the same few names on
# every event) costs one set lookup. Bounded: cleared when full, never grows
# with hostile input.
_KNOWN_EXTENSION_NAMES: set[str] = set()
_MAX_KNOWN_EXTENSION_NAMES: Final = 4096

# Recently validated values of attributes that repeat across events (source,
# type, subject, datacontenttype, dataschema), per specversion: a hit skips the
# regex. Bounded like the name cache above.
_CACHED_ATTRIBUTES = frozenset({"source", "type", "subject", "datacontenttype", "dataschema"})
_KNOWN_VALUES: dict[str, dict[tuple[str, str], None]] = {"1.0": {}, "0.3": {}}
_MAX_KNOWN_VALUES: Final = 8192


@lru_cache(maxsize=256)
def is_json_content_type(content_type: str | None) -> bool:
    """True when the media type is ``*/json`` or ``*/*+json`` (json-format.md 3.1.1).

    An absent content type counts as ``application/json``, as the JSON format says.
    """
    if content_type is None:
        return True
    media = content_type.partition(";")[0].strip().lower()
    subtype = media.partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def _validate(attributes: Mapping[str, object]) -> dict[str, AttributeValue]:
    specversion = attributes.get("specversion")
    if specversion is None:
        raise InvalidEvent("specversion", "is required")
    table = SPEC_ATTRIBUTES.get(specversion) if type(specversion) is str else None
    if table is None:
        raise InvalidEvent("specversion", f"unsupported version {specversion!r} (use 1.0 or 0.3)")
    version = cast(str, specversion)
    out: dict[str, AttributeValue] = {}
    known = _KNOWN_VALUES[version]
    for name, value in attributes.items():
        if type(value) is str and (name, value) in known:
            out[name] = value
            continue
        if value is None:
            continue  # null means unset (json-format.md 2.4); so does None here
        if name == "specversion":
            out[name] = version
            continue
        check: Validator | None = table.get(name)
        if check is None:
            if name not in _KNOWN_EXTENSION_NAMES:
                if type(name) is not str:
                    raise InvalidEvent(repr(name), "attribute names must be strings")
                check_extension_name(name)
                if len(_KNOWN_EXTENSION_NAMES) >= _MAX_KNOWN_EXTENSION_NAMES:
                    _KNOWN_EXTENSION_NAMES.clear()
                _KNOWN_EXTENSION_NAMES.add(name)
            out[name] = check_extension_value(name, value)
        elif name in _CACHED_ATTRIBUTES and type(value) is str:
            check(name, value)
            if len(known) >= _MAX_KNOWN_VALUES:
                known.clear()
            known[name, value] = None
            out[name] = value
        else:
            out[name] = check(name, value)
    for name in REQUIRED:
        if name not in out:
            raise InvalidEvent(name, "is required")
    return out


def _normalise_data(data: object) -> object:
    if type(data) is bytearray or type(data) is memoryview:
        return bytes(data)
    return data


@final
class CloudEvent:
    """An immutable CloudEvent (CloudEvents 1.0.2; 0.3 accepted and kept as 0.3).

    >>> e = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, b"x")
    >>> e["type"], e.data
    ('t', b'x')

    Attributes are read with ``event["name"]``, ``event.get("name")`` or the
    properties for the spec's own attributes. Equality compares attributes by
    their canonical string form (spec.md "Type System": protocol bindings carry
    every value as that string) and data by content (JSON data by value).
    """

    __slots__ = ("_attributes", "_data")

    _attributes: dict[str, AttributeValue]
    _data: object

    def __init__(self, attributes: Mapping[str, object], data: object = NO_DATA) -> None:
        object.__setattr__(self, "_attributes", _validate(attributes))
        object.__setattr__(self, "_data", _normalise_data(data))

    @classmethod
    def _trusted(cls, attributes: dict[str, AttributeValue], data: object) -> CloudEvent:
        """Build from attributes a decoder has already validated (no copy, no checks)."""
        event = object.__new__(cls)
        object.__setattr__(event, "_attributes", attributes)
        object.__setattr__(event, "_data", data)
        return event

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CloudEvent is immutable; use evolve() to derive a new event")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("CloudEvent is immutable; use evolve() to derive a new event")

    # -- attributes ---------------------------------------------------------

    def __getitem__(self, name: str) -> AttributeValue:
        return self._attributes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._attributes

    def __iter__(self) -> Iterator[str]:
        return iter(self._attributes)

    def get(self, name: str, default: Any = None) -> Any:
        return self._attributes.get(name, default)

    @property
    def attributes(self) -> Mapping[str, AttributeValue]:
        """Every context attribute, extensions included (read-only view)."""
        return MappingProxyType(self._attributes)

    @property
    def extensions(self) -> dict[str, AttributeValue]:
        """The attributes that the event's specversion does not define."""
        spec = SPEC_ATTRIBUTES[self.specversion]
        return {k: v for k, v in self._attributes.items() if k not in spec and k != "specversion"}

    @property
    def specversion(self) -> str:
        return self._attributes["specversion"]  # type: ignore[return-value]

    @property
    def id(self) -> str:
        return self._attributes["id"]  # type: ignore[return-value]

    @property
    def source(self) -> str:
        return self._attributes["source"]  # type: ignore[return-value]

    @property
    def type(self) -> str:
        return self._attributes["type"]  # type: ignore[return-value]

    @property
    def subject(self) -> str | None:
        return self._attributes.get("subject")  # type: ignore[return-value]

    @property
    def time(self) -> str | None:
        return self._attributes.get("time")  # type: ignore[return-value]

    @property
    def datacontenttype(self) -> str | None:
        return self._attributes.get("datacontenttype")  # type: ignore[return-value]

    @property
    def dataschema(self) -> str | None:
        return self._attributes.get("dataschema")  # type: ignore[return-value]

    # -- data ---------------------------------------------------------------

    @property
    def data(self) -> Any:
        """The payload: bytes, str, a JSON value, or None when there is none."""
        data = self._data
        return None if data is NO_DATA else data

    @property
    def has_data(self) -> bool:
        return self._data is not NO_DATA

    def data_bytes(self) -> bytes:
        """The payload as the bytes a binary-mode message carries.

        Binary data as is, text as UTF-8, a JSON value serialised as JSON; an
        event without data gives ``b""``.
        """
        data = self._data
        if type(data) is bytes:
            return data
        if data is NO_DATA:
            return b""
        if type(data) is str and not is_json_content_type(self._attributes.get("datacontenttype")):
            return data.encode()
        try:
            return orjson.dumps(data)
        except TypeError as exc:
            raise InvalidEvent("data", f"cannot be serialised as JSON: {exc}") from exc

    # -- deriving -----------------------------------------------------------

    def evolve(
        self,
        attributes: Mapping[str, object] | None = None,
        *,
        data: object = NO_DATA,
        keep_data: bool = True,
    ) -> CloudEvent:
        """A new event with ``attributes`` merged in (``None`` removes one).

        The data is kept unless ``keep_data`` is false, in which case ``data``
        becomes the new payload. Only the changed attributes are validated.
        """
        merged = dict(self._attributes)
        if attributes:
            if "specversion" in attributes and attributes["specversion"] != self.specversion:
                return CloudEvent({**merged, **attributes}, self._data if keep_data else data)
            changes = _validate(
                {
                    "specversion": self.specversion,
                    "id": "x",
                    "source": "x",
                    "type": "x",
                    **{k: v for k, v in attributes.items() if v is not None},
                }
            )
            for name, value in attributes.items():
                if value is None:
                    if name in REQUIRED:
                        raise InvalidEvent(name, "is required and cannot be removed")
                    merged.pop(name, None)
                else:
                    merged[name] = changes[name]
        return CloudEvent._trusted(merged, self._data if keep_data else _normalise_data(data))

    # -- value semantics ----------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CloudEvent):
            return NotImplemented
        mine, theirs = self._attributes, other._attributes
        if mine.keys() != theirs.keys():
            return False
        for name, value in mine.items():
            their = theirs[name]
            if (value != their or type(value) is not type(their)) and canonical_string(
                value
            ) != canonical_string(their):
                return False
        return _data_equal(self._data, other._data, mine.get("datacontenttype"))  # type: ignore[arg-type]

    def __hash__(self) -> int:
        # spec.md "id": source + id identify an event.
        return hash((self._attributes["source"], self._attributes["id"]))

    def __repr__(self) -> str:
        data = self._data
        shown = repr(data) if data is NO_DATA or len(repr(data)) <= 80 else repr(data)[:77] + "..."
        return f"CloudEvent({self._attributes!r}, data={shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_unpickle, (self._attributes, self._data is NO_DATA, self.data))


def _unpickle(attributes: dict[str, AttributeValue], no_data: bool, data: object) -> CloudEvent:
    return CloudEvent._trusted(attributes, NO_DATA if no_data else data)


def _data_equal(a: object, b: object, content_type: str | None) -> bool:
    if a is NO_DATA or b is NO_DATA:
        return a is b
    if type(a) is type(b) and a == b:
        return True
    if is_json_content_type(content_type):
        try:
            return _as_json(a) == _as_json(b)
        except orjson.JSONDecodeError:
            pass
    return _as_bytes(a) == _as_bytes(b)


def _as_json(value: object) -> object:
    if type(value) is bytes:
        return orjson.loads(value)
    return value


def _as_bytes(value: object) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is str:
        return value.encode()
    return orjson.dumps(value)
