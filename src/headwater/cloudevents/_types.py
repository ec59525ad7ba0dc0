"""The CloudEvents type system (spec.md, "Type System"): validators and canonical strings.

How this works: every attribute value is held as one of four Python types:
``str`` (String, URI, URI-reference and Timestamp, kept exactly as received so
that nothing is rewritten in transit), ``bool`` (Boolean), ``int`` (Integer,
32-bit) and ``bytes`` (Binary). A validator takes the attribute name (for the
error message) and the value, and returns the value to store or raises
:class:`InvalidEvent` naming the attribute and the rule. Each specversion has
a :class:`Schema`: the validator of every attribute it defines, the attributes
whose values repeat across events (worth remembering once validated), and a
bounded memory of those values.

The common case is written for speed without weakening any rule: a string that
is printable ASCII cannot hold a forbidden character, so the full Unicode scan
only runs for the others; URI, media type and timestamp syntax are each one
match of a pattern that also admits only the characters their grammar allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

from headwater.cloudevents.errors import InvalidEvent, shown

AttributeValue = str | bool | int | bytes

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

# spec.md "Attribute Naming Convention": lower-case ASCII letters and digits.
# Headwater enforces the SHOULD of at most 20 characters as a MUST, which every
# attribute defined by the CloudEvents and Knative specs satisfies: an event
# Headwater accepts can travel through any binding whose receivers enforce it.
MAX_NAME_LENGTH: Final = 20
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,20}", re.ASCII).fullmatch

# spec.md "Type System", String: the control characters U+0000-U+001F and
# U+007F-U+009F, surrogate code points (a Python str holds code points, so a
# "properly paired" surrogate is a single astral character here; any surrogate
# code point is therefore unpaired), and the Unicode noncharacters
# (U+FDD0-U+FDEF and the last two code points of every plane) are disallowed.
_NONCHARACTERS = "".join(
    chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)
)
_BAD_STRING_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + _NONCHARACTERS + "]"
).search

# RFC 3986 section 2: unreserved / sub-delims / ":" / "@" / "/" / "?" and
# pct-encoded; brackets for IP literals. The grammar is checked at the level of
# its characters and its delimiters (scheme, at most one '#' starting the
# fragment), not down to the authority's host syntax.
_URI_CHAR = r"(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*:"
# RFC 3986 4.1 URI-reference = URI / relative-ref. A relative-ref's first path
# segment cannot hold ':' (4.2, path-noscheme), so a colon before the first
# '/', '?' or '#' must end a valid scheme.
_URI_REFERENCE = re.compile(
    rf"(?:{_SCHEME}|(?![^/?#]*:)){_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII
).fullmatch
# RFC 3986 section 3 URI (spec.md's "absolute URI"; a fragment is allowed, as
# `dataschema` examples use them).
_URI = re.compile(rf"{_SCHEME}{_URI_CHAR}*(?:#{_URI_CHAR}*)?", re.ASCII).fullmatch

# RFC 3339 section 5.6 date-time, with the field ranges in the pattern so that
# one match validates all but the day of the month (checked only for days
# above 28). 5.6's NOTE allows lower-case "t" and "z"; leap second 60 allowed.
_FULL_DATE_TO_MONTH = r"[0-9]{4}-(?:0[1-9]|1[0-2])-"
_T_FULL_TIME = (
    r"[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
_TIMESTAMP = re.compile(
    _FULL_DATE_TO_MONTH + r"(?:0[1-9]|[12][0-9]|3[01])" + _T_FULL_TIME, re.ASCII
).fullmatch
# The same grammar with the day limited to 01-28, which every month of every
# year has: a match is a valid timestamp with no calendar check left to do
# (the validation loop's common case; other days go through check_timestamp).
TIMESTAMP_BEFORE_29TH = re.compile(
    _FULL_DATE_TO_MONTH + r"(?:0[1-9]|1[0-9]|2[0-8])" + _T_FULL_TIME, re.ASCII
).fullmatch
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 2046 section 5.1 media type as HTTP writes it (RFC 9110 8.3.1 / 5.6.6):
# type "/" subtype *( OWS ";" OWS [ token "=" ( token / quoted-string ) ] ).
# Printable ASCII only, so that it can be an HTTP Content-Type or an MQTT
# Content Type as is.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_STRING = r'"(?:[ !#-\[\]-~]|\\[ -~])*"'
# Possessive quantifiers: spaces and empty parameters could otherwise be split
# between repetitions in exponentially many ways before a mismatch is
# reported (a ReDoS on a value that arrives in every binary-mode message).
_MEDIA_TYPE = re.compile(
    rf"{_TOKEN}/{_TOKEN}(?: *+; *+(?:{_TOKEN}=(?:{_TOKEN}|{_QUOTED_STRING}))?+)*+", re.ASCII
).fullmatch


def check_attribute_name(name: object) -> str:
    """An attribute name (spec.md "Attribute Naming Convention"); ``data`` is reserved."""
    if type(name) is not str:
        raise InvalidEvent(shown(name), "attribute names must be strings")
    if not _ATTRIBUTE_NAME(name):
        raise InvalidEvent(
            name,
            f"attribute names must be 1 to {MAX_NAME_LENGTH} lower-case ASCII letters or digits",
        )
    if name == "data":
        raise InvalidEvent(name, "the name 'data' is reserved and cannot be an extension")
    return name


def _bad_string(name: str, value: str) -> InvalidEvent:
    bad = _BAD_STRING_CHAR(value)
    assert bad is not None
    return InvalidEvent(
        name,
        f"contains a character not allowed in a String: U+{ord(bad.group()):04X} "
        f"at position {bad.start()}",
    )


def _not_a(kind: str, name: str, value: object) -> InvalidEvent:
    return InvalidEvent(name, f"must be a {kind}, not {type(value).__name__}")


def check_string(name: str, value: object) -> str:
    """A String: no control characters, surrogates or noncharacters."""
    if type(value) is not str:
        raise _not_a("String", name, value)
    # Printable ASCII (space included) holds none of the forbidden characters.
    if not (value.isascii() and value.isprintable()) and _BAD_STRING_CHAR(value):
        raise _bad_string(name, value)
    return value


def check_nonempty_string(name: str, value: object) -> str:
    if value == "":
        raise InvalidEvent(name, "must be a non-empty String")
    return check_string(name, value)


def check_uri_reference(name: str, value: object) -> str:
    """A non-empty URI-reference (RFC 3986 4.1)."""
    if type(value) is not str:
        raise _not_a("URI-reference String", name, value)
    if not value:
        raise InvalidEvent(name, "must be a non-empty URI-reference")
    if not _URI_REFERENCE(value):
        check_string(name, value)
        raise InvalidEvent(name, f"is not a valid URI-reference (RFC 3986): {shown(value)}")
    return value


def check_uri(name: str, value: object) -> str:
    """An absolute URI (RFC 3986 section 3; spec.md "URI")."""
    if type(value) is not str:
        raise _not_a("URI String", name, value)
    if not _URI(value):
        check_string(name, value)
        raise InvalidEvent(name, f"is not an absolute URI (RFC 3986): {shown(value)}")
    return value


def check_timestamp(name: str, value: object) -> str:
    """An RFC 3339 timestamp string, or an aware ``datetime`` (rendered as RFC 3339)."""
    if type(value) is not str:
        if isinstance(value, datetime):
            return format_timestamp(name, value)
        raise _not_a("Timestamp (an RFC 3339 string or a datetime)", name, value)
    if not _TIMESTAMP(value):
        check_string(name, value)
        raise InvalidEvent(name, f"is not an RFC 3339 timestamp: {shown(value)}")
    if value[8:10] > "28":
        year, month, day = int(value[:4]), int(value[5:7]), int(value[8:10])
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        if day > _DAYS_IN_MONTH[month - 1] or (month == 2 and day == 29 and not leap):
            raise InvalidEvent(
                name, f"is not a valid RFC 3339 date: {shown(value)} has no such day"
            )
    return value


def format_timestamp(name: str, value: datetime) -> str:
    """The RFC 3339 form of an aware ``datetime`` (UTC written as ``Z``)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidEvent(name, "a datetime must carry a time zone (RFC 3339 needs an offset)")
    if value.utcoffset().seconds % 60:  # type: ignore[union-attr]
        raise InvalidEvent(name, "RFC 3339 offsets are whole minutes")
    text = value.isoformat()
    if value.utcoffset() == UTC.utcoffset(None):
        text = text.removesuffix("+00:00") + "Z"
    return text


def check_media_type(name: str, value: object) -> str:
    """A media type (RFC 2046), with optional parameters, in printable ASCII."""
    if type(value) is not str:
        raise _not_a("media type String", name, value)
    if not _MEDIA_TYPE(value):
        check_string(name, value)
        raise InvalidEvent(
            name, f"is not a media type (RFC 2046, type/subtype[; name=value]): {shown(value)}"
        )
    return value


@lru_cache(maxsize=256)
def is_event_format(content_type: str) -> bool:
    """True for a CloudEvents format media type (``application/cloudevents...``).

    Receivers of the HTTP, MQTT and Kafka bindings pick structured mode for
    such a Content-Type, so data of that type cannot travel in binary mode.
    """
    return content_type.lstrip()[:23].lower() == "application/cloudevents"


def binary_content_type(content_type: str) -> str:
    """``content_type`` if it can be a binary-mode content type, else :class:`InvalidEvent`."""
    if is_event_format(content_type):
        raise InvalidEvent(
            "datacontenttype",
            f"data of type {shown(content_type)} cannot travel in binary mode (a receiver reads "
            "that Content-Type as structured mode); use structured mode",
        )
    return content_type


def check_extension_value(name: str, value: object) -> AttributeValue:
    """An extension's value: any CloudEvents type (spec.md "Type System")."""
    kind = type(value)
    if kind is str:
        return check_string(name, value)
    if kind is bool or kind is bytes:
        return value  # type: ignore[return-value]
    if kind is int:
        if not INT32_MIN <= value <= INT32_MAX:  # type: ignore[operator]
            raise InvalidEvent(name, f"Integer {shown(value)} is outside the signed 32-bit range")
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return format_timestamp(name, value)
    if kind is float:
        # json-format.md 2.2: an Integer is a JSON number with only the integer
        # component; a fraction or an exponent (orjson gives float) is not one.
        raise InvalidEvent(
            name,
            f"Integer values are whole numbers without fraction or exponent, not {shown(value)}",
        )
    raise InvalidEvent(
        name,
        f"has type {kind.__name__}; attribute values must be String, Boolean, Integer, "
        "Binary, URI, URI-reference or Timestamp",
    )


def check_specversion(name: str, value: object) -> str:
    if type(value) is not str or value not in SCHEMAS:
        raise InvalidEvent(name, f"unsupported version {shown(value)} (use 1.0 or 0.3)")
    return value


def canonical_string(value: AttributeValue) -> str:
    """The canonical string encoding of a value (spec.md "Type System")."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is bytes:
        return base64.b64encode(value).decode("ascii")  # type: ignore[arg-type]
    raise TypeError(f"not a CloudEvents attribute value: {value!r}")


def decode_base64(name: str, text: str) -> bytes:
    """RFC 4648 Base64, padded, nothing but the alphabet."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEvent(name, f"is not valid Base64: {exc}") from exc


Validator = Callable[[str, object], AttributeValue]

REQUIRED: Final = ("id", "source", "specversion", "type")

MAX_REMEMBERED_VALUES: Final = 8192
"""Validated values remembered per specversion. When full the memory is
emptied and refilled by traffic: it never grows with hostile input."""

MAX_REMEMBERED_NAMES: Final = 4096
"""Validated extension names remembered; emptied the same way when full."""


# How the validation loop (event._validate) treats an attribute: the two kinds
# whose values change with every event have their common case inline there;
# OTHER calls the attribute's validator; EXTENSION is any name the schema does
# not define.
NONEMPTY_STRING: Final = 0
TIMESTAMP: Final = 1
OTHER: Final = 2
EXTENSION: Final = 3


@dataclass(frozen=True, slots=True, eq=False)
class Schema:
    """What one specversion defines, and what has already been checked against it."""

    version: str
    validators: dict[str, Validator]
    # Attributes whose values repeat from event to event (unlike id and time),
    # so a validated value is remembered and skips the checks next time.
    repeating: frozenset[str]
    remembered: set[tuple[object, str]] = field(default_factory=set)
    kinds: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.remembered.add(("specversion", self.version))
        for name, validator in self.validators.items():
            if validator is check_nonempty_string:
                self.kinds[name] = NONEMPTY_STRING
            elif validator is check_timestamp:
                self.kinds[name] = TIMESTAMP
            else:
                self.kinds[name] = OTHER

    def remember(self, name: str, value: str) -> None:
        remembered = self.remembered
        if len(remembered) >= MAX_REMEMBERED_VALUES:
            remembered.clear()
            remembered.add(("specversion", self.version))
        remembered.add((name, value))


V1_0: Final = Schema(
    "1.0",
    {
        "specversion": check_specversion,
        "id": check_nonempty_string,
        "source": check_uri_reference,
        "type": check_nonempty_string,
        "datacontenttype": check_media_type,
        "dataschema": check_uri,
        "subject": check_nonempty_string,
        "time": check_timestamp,
    },
    frozenset({"source", "type", "datacontenttype", "dataschema", "subject"}),
)

# CloudEvents 0.3: `schemaurl` (URI-reference) instead of `dataschema`, and
# `datacontentencoding` (RFC 2045 6.1; "Base64" means `data` is Base64 text
# in the JSON format).
V0_3: Final = Schema(
    "0.3",
    {
        "specversion": check_specversion,
        "id": check_nonempty_string,
        "source": check_uri_reference,
        "type": check_nonempty_string,
        "datacontenttype": check_media_type,
        "schemaurl": check_uri_reference,
        "datacontentencoding": check_nonempty_string,
        "subject": check_nonempty_string,
        "time": check_timestamp,
    },
    frozenset({"source", "type", "datacontenttype", "schemaurl", "datacontentencoding", "subject"}),
)

SCHEMAS: Final[dict[str, Schema]] = {"1.0": V1_0, "0.3": V0_3}

SPEC_ATTRIBUTES: Final = {version: schema.validators for version, schema in SCHEMAS.items()}

KNOWN_NAMES: Final[set[str]] = set()
"""Extension names found valid, so that the usual few cost a set lookup (bounded)."""


def check_new_name(name: object) -> None:
    """Check an extension name, remembering the valid ones (bounded)."""
    if name in KNOWN_NAMES:
        return
    check_attribute_name(name)
    if len(KNOWN_NAMES) >= MAX_REMEMBERED_NAMES:
        KNOWN_NAMES.clear()
    KNOWN_NAMES.add(name)  # type: ignore[arg-type]
