"""The CloudEvents type system (spec.md, "Type System"): validators and canonical strings.

Every attribute value is held as one of five Python types: ``str`` (String,
URI, URI-reference and Timestamp, kept exactly as received so that nothing is
rewritten in transit), ``bool``, ``int`` (Integer, 32-bit), ``bytes`` (Binary).
Each validator takes the attribute name (for the error message) and the
value, and returns the value to store or raises :class:`InvalidEvent`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from datetime import UTC, datetime

from headwater.cloudevents.errors import InvalidEvent

AttributeValue = str | bool | int | bytes

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

# spec.md "Type System", String: control characters U+0000-U+001F and
# U+007F-U+009F, unpaired surrogates, and Unicode noncharacters are disallowed.
_NONCHARACTERS = "".join(
    chr(plane * 0x10000 + 0xFFFE) + chr(plane * 0x10000 + 0xFFFF) for plane in range(17)
)
_BAD_STRING_CHAR = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef" + _NONCHARACTERS + "]"
).search

# spec.md "Attribute Naming Convention": lower-case ASCII letters and digits;
# Headwater enforces the SHOULD of at most 20 characters as a MUST (issue #2),
# which every attribute defined by the CloudEvents and Knative specs satisfies.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}\Z").match

# RFC 3986 section 2: unreserved / reserved / pct-encoded characters.
_URI_CHAR = r"(?:[A-Za-z0-9\-._~:/?\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})"
# RFC 3986 4.1 URI-reference: at most one '#', which starts the fragment.
_URI_REFERENCE = re.compile(rf"{_URI_CHAR}*(?:#{_URI_CHAR}*)?\Z").match
# RFC 3986 4.3 absolute-URI: a scheme, then the rest (spec.md allows a fragment
# in `dataschema`, so URI here is "URI" of RFC 3986 section 3).
_URI = re.compile(rf"[A-Za-z][A-Za-z0-9+.\-]*:{_URI_CHAR}*(?:#{_URI_CHAR}*)?\Z").match

# RFC 3339 section 5.6 date-time, with the field ranges in the pattern so that
# one match validates all but the day of month (checked only for days > 28).
_TIMESTAMP = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(?:\.\d+)?(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z"
).match
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# RFC 2046 media type: type "/" subtype, optional parameters.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:\s*;.*)?\Z", re.DOTALL).match


def check_extension_name(name: str) -> None:
    if name == "data" or not _EXTENSION_NAME(name):
        if name == "data":
            raise InvalidEvent(name, "the name 'data' is reserved and cannot be an extension")
        raise InvalidEvent(
            name, "attribute names must be 1 to 20 lower-case ASCII letters or digits"
        )


def check_string(name: str, value: object) -> str:
    if type(value) is not str:
        raise InvalidEvent(name, f"must be a String, not {type(value).__name__}")
    bad = _BAD_STRING_CHAR(value)
    if bad is not None:
        raise InvalidEvent(
            name,
            f"contains a character not allowed in a String: U+{ord(bad.group()):04X} "
            f"at position {bad.start()}",
        )
    return value


def check_nonempty_string(name: str, value: object) -> str:
    text = check_string(name, value)
    if not text:
        raise InvalidEvent(name, "must be a non-empty String")
    return text


def check_uri_reference(name: str, value: object, *, nonempty: bool = True) -> str:
    text = check_string(name, value)
    if nonempty and not text:
        raise InvalidEvent(name, "must be a non-empty URI-reference")
    if not _URI_REFERENCE(text):
        raise InvalidEvent(name, f"is not a valid URI-reference (RFC 3986): {text!r}")
    return text


def check_uri(name: str, value: object) -> str:
    text = check_string(name, value)
    if not _URI(text):
        raise InvalidEvent(name, f"is not an absolute URI (RFC 3986): {text!r}")
    return text


def check_timestamp(name: str, value: object) -> str:
    if isinstance(value, datetime):
        return format_timestamp(name, value)
    if type(value) is not str:
        raise InvalidEvent(name, f"must be a Timestamp string, not {type(value).__name__}")
    m = _TIMESTAMP(value)
    if m is None:
        raise InvalidEvent(name, f"is not an RFC 3339 timestamp: {value!r}")
    day = m.group(3)
    if day > "28":
        year, month = int(m.group(1)), int(m.group(2))
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        if int(day) > _DAYS_IN_MONTH[month - 1] or (month == 2 and not leap):
            raise InvalidEvent(name, f"is not a valid RFC 3339 date: {value!r} has no such day")
    return value


def format_timestamp(name: str, value: datetime) -> str:
    if value.tzinfo is None:
        raise InvalidEvent(name, "a datetime must carry a time zone (RFC 3339 needs an offset)")
    text = value.isoformat()
    if value.utcoffset() == UTC.utcoffset(None):
        text = text.removesuffix("+00:00") + "Z"
    return text


def check_media_type(name: str, value: object) -> str:
    text = check_string(name, value)
    if not _MEDIA_TYPE(text):
        raise InvalidEvent(name, f"is not a media type (RFC 2046, type/subtype): {text!r}")
    return text


def check_extension_value(name: str, value: object) -> AttributeValue:
    """An extension's value: any CloudEvents type (spec.md "Type System")."""
    kind = type(value)
    if kind is str:
        return check_string(name, value)
    if kind is bool:
        return value  # type: ignore[return-value]
    if kind is int:
        if not INT32_MIN <= value <= INT32_MAX:  # type: ignore[operator]
            raise InvalidEvent(name, f"Integer {value} is outside the signed 32-bit range")
        return value  # type: ignore[return-value]
    if kind is bytes:
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return format_timestamp(name, value)
    raise InvalidEvent(
        name,
        f"has type {kind.__name__}; extension values must be String, Boolean, Integer, "
        "Binary, URI, URI-reference or Timestamp",
    )


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
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidEvent(name, f"is not valid Base64: {exc}") from exc


Validator = Callable[[str, object], AttributeValue]

# Context attributes defined by the spec, per specversion. Each maps the
# attribute name to its validator; what is not listed is an extension.
REQUIRED = ("id", "source", "specversion", "type")

V1_ATTRIBUTES: dict[str, Validator] = {
    "id": check_nonempty_string,
    "source": check_uri_reference,
    "type": check_nonempty_string,
    "datacontenttype": check_media_type,
    "dataschema": check_uri,
    "subject": check_nonempty_string,
    "time": check_timestamp,
}

# CloudEvents 0.3: `schemaurl` (URI-reference) instead of `dataschema`, and
# `datacontentencoding`; `subject` may be empty there.
V03_ATTRIBUTES: dict[str, Validator] = {
    "id": check_nonempty_string,
    "source": check_uri_reference,
    "type": check_nonempty_string,
    "datacontenttype": check_media_type,
    "schemaurl": check_uri_reference,
    "datacontentencoding": check_nonempty_string,
    "subject": check_string,
    "time": check_timestamp,
}

SPEC_ATTRIBUTES = {"1.0": V1_ATTRIBUTES, "0.3": V03_ATTRIBUTES}
