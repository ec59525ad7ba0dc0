"""InfluxDB line protocol: one CloudEvent -> one point, pure and exact.

How this works: a :class:`PointMapping` (built once from a sink's config)
turns an event into one line::

    <measurement>[,<tag>=<value>...] <field>=<value>[,<field>=<value>...] <timestamp>

Escaping follows the InfluxDB line protocol reference ("Special characters"):

- measurement: escape comma and space;
- tag keys, tag values, field keys: escape comma, equals sign and space;
- string field values: escape double quote and backslash, inside double quotes.

Line protocol has no escape for a newline outside a string field value, nor
for a backslash before a separator (or at the end of a name); such an event
is unwritable (:class:`LineProtocolError`, never a corrupted batch); see
the comment above ``_check`` for exactly which backslashes. Tags with an
empty value are left out (InfluxDB rejects them); tag keys are sorted, as
InfluxDB recommends for write performance; ``time`` is reserved and never a
tag or field key. Numbers stay numbers: floats as floats, JSON integers as floats unless the
mapping writes integers (``42i``; a field must keep one type per shard, so
mixing ``21`` and ``21.5`` in an integer field would be refused), booleans
as ``true``/``false``. Timestamps are the event's ``time`` (RFC 3339, read
to the nanosecond) or the receive time, in the configured precision.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from headwater.cloudevents import CloudEvent
from headwater.cloudevents._types import canonical_string
from headwater.sinks._values import NOT_JSON, compile_path, json_data

__all__ = [
    "MAX_STRING_FIELD",
    "LineProtocolError",
    "PointMapping",
    "Precision",
    "escape_field_key",
    "escape_key",
    "escape_measurement",
    "escape_string",
    "escape_tag_value",
    "parse_rfc3339_ns",
]

Precision = Literal["ns", "us", "ms", "s"]
_DIVISORS: Final[Mapping[str, int]] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

MAX_STRING_FIELD: Final = 64 * 1024
"""InfluxDB's limit on a string field value ("Length limit 64KB")."""

RESERVED_KEY: Final = "time"
"""InfluxDB's reserved key: never a tag or field name."""

VALUE_FIELD: Final = "value"
"""The field a scalar (non-object) JSON payload is written to."""


class LineProtocolError(ValueError):
    """An event that cannot be written as a point (no fields, unescapable text, bad time)."""


_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESCAPES = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESCAPES = str.maketrans({'"': '\\"', "\\": "\\\\"})


# InfluxDB has no escape for a backslash outside string field values: its
# scanner skips the byte after any backslash, and its unescaper turns "\,",
# "\ ", "\=" and '\"' into the bare character (measurement names are even
# unescaped twice, once for the series key and once from it). So a backslash
# before a separator, before a character the unescaper eats, or at the end,
# cannot be written; in a field key a backslash before '"' is kept by doubling
# it ('\\"' reads back as '\"'). Checked against influxd by
# tests/integration/sinks/test_influxdb_influxd.py.
_STRANDED_IN_MEASUREMENT = re.compile(r'\\(?:[, ="]|\Z)')
_STRANDED_IN_KEY = re.compile(r"\\(?:[, =]|\Z)")
_STRANDED_IN_TAG_VALUE = re.compile(r"\\(?:[, ]|\Z)")
_EATEN_IN_FIELD_KEY = re.compile(r'\\(?=")')


def _check(text: str, what: str, stranded: re.Pattern[str]) -> None:
    if "\n" in text or "\r" in text:
        raise LineProtocolError(f"{what} {text!r}: line protocol cannot carry a line break here")
    if "\\" in text and stranded.search(text):
        raise LineProtocolError(
            f"{what} {text!r}: InfluxDB cannot store a backslash before a separator "
            "or an escaped character, nor at the end"
        )


def escape_measurement(name: str) -> str:
    """Measurement names: "escape commas and spaces" (line protocol reference)."""
    if not name:
        raise LineProtocolError("the measurement name is empty")
    if name.startswith("#"):
        # A line that starts with # is a comment (line protocol reference), and no
        # escape exists for it: InfluxDB would answer 204 and keep nothing.
        raise LineProtocolError(f"measurement {name!r}: a line starting with # is a comment")
    _check(name, "measurement", _STRANDED_IN_MEASUREMENT)
    return name.translate(_MEASUREMENT_ESCAPES)


def escape_key(text: str, what: str = "tag key") -> str:
    """Tag and field keys: "escape commas, equal signs and spaces"."""
    if not text:
        raise LineProtocolError(f"the {what} is empty")
    _check(text, what, _STRANDED_IN_KEY)
    return text.translate(_KEY_ESCAPES)


def escape_field_key(text: str) -> str:
    """Field keys: as tag keys, and a backslash before '"' doubled (field keys unescape it)."""
    escaped = escape_key(text, "field key")
    if "\\" in text:
        escaped = _EATEN_IN_FIELD_KEY.sub(r"\\\\", escaped)
    return escaped


def escape_tag_value(text: str) -> str:
    """Tag values: "escape commas, equal signs and spaces" (``=`` does not end one)."""
    _check(text, "tag value", _STRANDED_IN_TAG_VALUE)
    return text.translate(_KEY_ESCAPES)


def escape_string(text: str) -> str:
    """A string field value, quoted: "escape double quotes and backslashes"."""
    if len(text) > MAX_STRING_FIELD:
        raise LineProtocolError(f"a string field of {len(text)} characters exceeds 64KB")
    return '"' + text.translate(_STRING_ESCAPES) + '"'


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9})\d*)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z"
)


def parse_rfc3339_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (the CloudEvents ``time``)."""
    # Fast path: UTC ("Z") with the second already seen; telemetry at any
    # real rate repeats the same second many times.
    if len(text) >= 20 and text[-1] in "Zz":
        head = text[:19]
        seconds = _SECOND_CACHE.get(head)
        if seconds is not None:
            if len(text) == 20:
                return seconds * 1_000_000_000
            fraction = text[20:-1]
            if text[19] == "." and 0 < len(fraction) <= 9 and fraction.isdigit():
                return seconds * 1_000_000_000 + int(fraction.ljust(9, "0"))
    match = _RFC3339.match(text)
    if match is None:
        raise LineProtocolError(f"time {text!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    seconds = calendar.timegm(
        (int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0)
    )
    if zulu:
        if len(_SECOND_CACHE) >= _CACHE_LIMIT:
            _SECOND_CACHE.clear()
        _SECOND_CACHE[text[:19]] = seconds
    else:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int(fraction.ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


_CACHE_LIMIT: Final = 4096
"""Entries of each small memo (seconds of recent timestamps, escaped tag values);
reached, a memo starts over: bounded memory whatever the input."""
_SECOND_CACHE: dict[str, int] = {}
_TAG_CACHE: dict[str, str] = {}


FieldValue = float | int | bool | str


def _field_value(value: FieldValue, integers: bool) -> str:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise LineProtocolError(f"{value!r} cannot be written (InfluxDB has no NaN or Inf)")
        return repr(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        # Without `i` InfluxDB stores a float; repr(float) keeps large ints exact-ish
        # and always parses as a float.
        return f"{value}i" if integers else repr(float(value))
    return escape_string(value)  # type: ignore[arg-type]


def _flatten(prefix: str, value: Any, out: dict[str, FieldValue], depth: int) -> None:
    """Scalars of a JSON object as fields, nested keys joined by ``_`` (as Telegraf does)."""
    if type(value) is dict:
        if depth >= _MAX_FLATTEN_DEPTH:
            return
        for key, item in value.items():
            if not prefix and key == RESERVED_KEY:
                continue  # a device timestamp, not a reading (use the mapping's time)
            _flatten(f"{prefix}_{key}" if prefix else key, item, out, depth + 1)
    elif value is not None and type(value) is not list:
        out[prefix or VALUE_FIELD] = value


_MAX_FLATTEN_DEPTH: Final = 8
"""Nested objects deeper than this are not turned into fields (no runaway field names)."""


@dataclass(frozen=True, slots=True)
class PointMapping:
    """How an event becomes a point; build with :meth:`compile`, then call :meth:`line`."""

    measurement: str | None
    tags: tuple[str, ...]
    fields: tuple[tuple[str, Callable[[Any], Any]], ...]
    integers: bool
    precision: Precision
    _measurement_escaped: str | None
    _tag_keys: tuple[tuple[str, str], ...]

    @classmethod
    def compile(
        cls,
        *,
        measurement: str | None = None,
        tags: Sequence[str] = ("source", "subject"),
        fields: Mapping[str, str] | None = None,
        integers: bool = False,
        precision: Precision = "ns",
    ) -> PointMapping:
        """Check and compile once; a bad expression or name raises ``ValueError`` now.

        ``measurement`` is a fixed name (default: each event's ``type``);
        ``tags`` are attribute names (context attributes or extensions) whose
        values become tags of the same name; ``fields`` maps a field name to
        a JMESPath over the JSON data (default: every scalar of the data,
        nested objects flattened with ``_``).
        """
        if precision not in _DIVISORS:
            raise ValueError(f"precision must be one of {sorted(_DIVISORS)}, not {precision!r}")
        escaped = escape_measurement(measurement) if measurement is not None else None
        # "Avoid using the reserved key time": InfluxDB refuses it as a tag key
        # and does not store it as a field.
        reserved = sorted({*tags, *(fields or {})} & {RESERVED_KEY})
        if reserved:
            raise ValueError(f"{RESERVED_KEY!r} is reserved by InfluxDB: not a tag or field name")
        tag_keys = tuple((name, escape_key(name, "tag key")) for name in sorted(set(tags)))
        compiled = tuple(
            (escape_field_key(name), compile_path(path)) for name, path in (fields or {}).items()
        )
        return cls(measurement, tuple(tags), compiled, integers, precision, escaped, tag_keys)

    def line(self, event: CloudEvent, received_ns: int) -> str:
        """The event as one line (no newline); :class:`LineProtocolError` if it cannot be."""
        measurement = self._measurement_escaped or escape_measurement(event.type)
        parts = [measurement]
        attributes = event.attributes
        for name, key in self._tag_keys:
            value = attributes.get(name)
            if value is None or value == "":
                continue
            parts.append(f",{key}={_tag_value(value)}")
        parts.append(" ")
        parts.append(self._fields(event))
        time = event.time
        ns = parse_rfc3339_ns(time) if time is not None else received_ns
        parts.append(f" {ns // _DIVISORS[self.precision]}")
        return "".join(parts)

    def _fields(self, event: CloudEvent) -> str:
        data = json_data(event)
        if data is NOT_JSON:
            raise LineProtocolError("the event has no JSON data to take fields from")
        integers = self.integers
        rendered: list[str] = []
        if self.fields:
            for key, path in self.fields:
                value = path(data)
                if value is None:
                    continue  # absent in this event: the point simply lacks the field
                kind = type(value)
                if kind is float and math.isfinite(value):
                    rendered.append(f"{key}={value!r}")
                    continue
                if kind is dict or kind is list:
                    value = orjson.dumps(value).decode()
                rendered.append(f"{key}={_field_value(value, integers)}")
        else:
            flat: dict[str, FieldValue] = {}
            _flatten("", data, flat, 0)
            for name, value in flat.items():
                rendered.append(f"{escape_field_key(name)}={_field_value(value, integers)}")
        if not rendered:
            # "Points must have at least one field."
            raise LineProtocolError("no field values in the event's data")
        return ",".join(rendered)


def _tag_value(value: object) -> str:
    if type(value) is not str:
        return escape_tag_value(canonical_string(value))  # type: ignore[arg-type]
    escaped = _TAG_CACHE.get(value)
    if escaped is None:
        escaped = escape_tag_value(value)
        if len(_TAG_CACHE) >= _CACHE_LIMIT:
            _TAG_CACHE.clear()
        _TAG_CACHE[value] = escaped
    return escaped
