"""The CloudEvent value: context attributes plus data, validated once, immutable.

How this works: the constructor checks every attribute against the CloudEvents
type system for the event's specversion (1.0, or 0.3 kept as 0.3) and stores
the values as given, so that a decoded event re-encodes to the same attributes
(nothing is added, dropped or rewritten in transit). Decoders hand over the
dict they built (:meth:`CloudEvent._owned`, validated in place, no copy);
code that already holds validated attributes uses :meth:`CloudEvent._trusted`.

``data`` is one of: ``bytes`` (Binary, as a binary-mode body or
``data_base64`` carries it), ``str`` (text), or any JSON value (from the JSON
format's ``data`` member). An absent payload is distinct from a JSON ``null``
payload (json-format.md 3.1.1): ``has_data`` tells them apart.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, final

import orjson

from headwater.cloudevents._types import (
    EXTENSION,
    KNOWN_NAMES,
    NONEMPTY_STRING,
    REQUIRED,
    SCHEMAS,
    SPEC_ATTRIBUTES,
    TIMESTAMP,
    TIMESTAMP_BEFORE_29TH,
    AttributeValue,
    canonical_string,
    check_extension_value,
    check_new_name,
    check_nonempty_string,
    check_specversion,
    check_string,
    check_timestamp,
)
from headwater.cloudevents.errors import InvalidEvent


class _NoData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_DATA"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "NO_DATA"


NO_DATA: Final = _NoData()
"""Marks an event without data (distinct from data that is JSON ``null``)."""


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


def _validate(attributes: dict[str, Any]) -> dict[str, AttributeValue]:
    """Validate a dict the caller owns, in place, and return it.

    ``None`` values are removed (json-format.md 2.2: ``null`` means unset);
    ``datetime`` values become their RFC 3339 strings. Values of attributes
    that repeat across events (source, type, ...) are remembered once checked,
    so that the common event pays one set lookup for each of them; the two
    that change with every event (a non-empty String ``id`` and a Timestamp
    ``time``) have their common case inline. Everything else, and every
    failure, goes through the validators of ``_types``, which word the error.
    """
    specversion = attributes.get("specversion")
    schema = SCHEMAS.get(specversion) if type(specversion) is str else None
    if schema is None:
        if specversion is None:
            raise InvalidEvent("specversion", "is required")
        check_specversion("specversion", specversion)
    assert schema is not None
    remembered = schema.remembered
    kinds = schema.kinds
    repeating = schema.repeating
    known_names = KNOWN_NAMES
    unset: list[str] | None = None
    for item in attributes.items():
        try:
            if item in remembered:
                continue
        except TypeError:
            pass  # an unhashable value: its validator rejects it below
        name, value = item
        kind = kinds.get(name, EXTENSION)
        if type(value) is str:
            if kind is NONEMPTY_STRING:
                if not (value and value.isascii() and value.isprintable()):
                    check_nonempty_string(name, value)
            elif kind is TIMESTAMP:
                if not TIMESTAMP_BEFORE_29TH(value):
                    check_timestamp(name, value)
                continue  # a new value with every event: not worth remembering
            elif kind is EXTENSION:
                if name not in known_names:
                    check_new_name(name)
                if not (value.isascii() and value.isprintable()):
                    check_string(name, value)
                continue
            else:
                schema.validators[name](name, value)
            if name in repeating:
                schema.remember(name, value)
        elif value is None:
            unset = [name] if unset is None else [*unset, name]
        elif kind is EXTENSION:
            if name not in known_names:
                check_new_name(name)
            attributes[name] = check_extension_value(name, value)
        else:
            attributes[name] = schema.validators[name](name, value)
    if unset is not None:
        for name in unset:
            del attributes[name]
    # specversion is known to be present (checked first).
    if not ("id" in attributes and "source" in attributes and "type" in attributes):
        missing = next(name for name in REQUIRED if name not in attributes)
        raise InvalidEvent(missing, "is required")
    return attributes


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
        _set_attributes(self, _validate(dict(attributes)))
        if type(data) is bytearray or type(data) is memoryview:
            data = bytes(data)
        _set_data(self, data)

    @classmethod
    def _trusted(cls, attributes: dict[str, AttributeValue], data: object) -> CloudEvent:
        """Build from attributes a decoder has already validated (no copy, no checks)."""
        event = _new(cls)
        _set_attributes(event, attributes)
        _set_data(event, data)
        return event

    def _stamped(self, name: str, value: AttributeValue) -> CloudEvent:
        """A copy with one more attribute whose validity the caller vouches for."""
        attributes = self._attributes.copy()
        attributes[name] = value
        event = _new(type(self))
        _set_attributes(event, attributes)
        _set_data(event, self._data)
        return event

    @classmethod
    def _owned(cls, attributes: dict[str, Any], data: object) -> CloudEvent:
        """Validate a dict the caller gives up (a decoder's), in place, and build on it."""
        event = _new(cls)
        _set_attributes(event, _validate(attributes))
        _set_data(event, data)
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

        Binary data as is; a string as UTF-8 text when ``datacontenttype`` is
        not JSON, else as a JSON string (json-format.md 3.1.2: a JSON string
        value stays quoted); any other value serialised as JSON. An event
        without data gives ``b""``.
        """
        data = self._data
        if type(data) is bytes:
            return data
        return _payload_bytes(data, is_json_content_type(self._attributes.get("datacontenttype")))

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
        becomes the new payload (``data`` alone, with the data kept, is a
        ``TypeError`` rather than silently ignored). Only the changed attributes are validated,
        unless the specversion changes, which revalidates everything.
        """
        if keep_data and data is not NO_DATA:
            raise TypeError("evolve(data=...) replaces the data only with keep_data=False")
        new_data = self._data if keep_data else _normalise_data(data)
        merged = dict(self._attributes)
        if not attributes:
            return CloudEvent._trusted(merged, new_data)
        changed: dict[str, Any] = {}
        for name, value in attributes.items():
            if value is None:
                if name in REQUIRED:
                    raise InvalidEvent(name, "is required and cannot be removed")
                merged.pop(name, None)
            else:
                changed[name] = value
        if changed.get("specversion", self.specversion) != self.specversion:
            merged.update(changed)
            return CloudEvent._owned(merged, new_data)
        # Validate the changes alone, completed to a minimal event of this version.
        probe = {"specversion": self.specversion, "id": "x", "source": "x", "type": "x"}
        probe.update(changed)
        _validate(probe)
        for name in changed:
            merged[name] = probe[name]
        return CloudEvent._trusted(merged, new_data)

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
    """Data equality: by JSON value under a JSON content type, else by payload bytes."""
    if a is NO_DATA or b is NO_DATA:
        return a is b
    if type(a) is type(b) and a == b:
        return True
    json = is_json_content_type(content_type)
    if json:
        try:
            return _as_json(a) == _as_json(b)
        except orjson.JSONDecodeError:
            pass
    try:
        return _payload_bytes(a, json) == _payload_bytes(b, json)
    except InvalidEvent:
        return False


def _as_json(value: object) -> object:
    if type(value) is bytes:
        return orjson.loads(value)
    return value


def _payload_bytes(data: object, json: bool) -> bytes:
    """What a binary-mode body holds for ``data`` (see :meth:`CloudEvent.data_bytes`)."""
    if type(data) is bytes:
        return data
    if data is NO_DATA:
        return b""
    try:
        if type(data) is str and not json:
            return data.encode()
        return orjson.dumps(data)
    except (TypeError, UnicodeEncodeError) as exc:
        raise InvalidEvent("data", f"cannot be serialised: {exc}") from exc


_new = object.__new__
# The slots' own setters: CloudEvent refuses attribute assignment, its
# constructors write through these.
_set_attributes: Final = vars(CloudEvent)["_attributes"].__set__
_set_data: Final = vars(CloudEvent)["_data"].__set__
