"""Hypothesis strategies for valid CloudEvents (1.0 and 0.3), shared by the property,
interop and fuzz tests of headwater.cloudevents."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from headwater.cloudevents import NO_DATA, CloudEvent

NONCHARACTERS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + [
    chr(plane << 16 | low) for plane in range(17) for low in (0xFFFE, 0xFFFF)
]

# Any allowed String character (spec.md "Type System"): no controls (Cc), no
# surrogates (Cs), no noncharacters; astral characters included, and some
# characters that need care in headers (space, quote, percent, backslash)
# drawn often on purpose.
CHARACTERS = st.one_of(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=NONCHARACTERS),
    st.sampled_from([" ", '"', "%", "\\", "€", "😀", "𝄞", "\u00a0", "é"]),
)
strings = st.text(CHARACTERS, max_size=24)
nonempty_strings = st.text(CHARACTERS, min_size=1, max_size=24)

_URI_TAIL = r"(?:[A-Za-z0-9._~:/?@!$&'()*+,;=-]|%[0-9A-F]{2}){0,24}(?:#[A-Za-z0-9._~/?-]{0,8})?"
absolute_uris = st.from_regex(rf"[a-z][a-z0-9+.-]{{0,6}}:{_URI_TAIL}", fullmatch=True)
uri_references = st.one_of(
    absolute_uris,
    st.from_regex(rf"/{_URI_TAIL}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9._~-]{1,12}(?:/[A-Za-z0-9._~:-]{0,12})?", fullmatch=True),
)

_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,12}"
media_types = st.from_regex(
    rf"(?:application|text|image|x-{_TOKEN})/{_TOKEN}"
    rf'(?: ?; ?{_TOKEN}=(?:{_TOKEN}|"(?:[ A-Za-z0-9%]|\\[\\"]){{0,8}}"))?',
    fullmatch=True,
)
json_media_types = st.sampled_from(
    [
        "application/json",
        "text/json",
        "application/cloudevents+json",
        "Application/JSON; charset=utf-8",
    ]
)
text_media_types = st.sampled_from(["text/plain", "text/plain; charset=utf-8", "application/xml"])

_OFFSETS = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """RFC 3339 strings in the forms senders use: Z or offset, 0-9 fraction digits."""
    moment = draw(st.datetimes(timezones=st.sampled_from(_OFFSETS)))
    text = moment.isoformat(timespec="seconds")
    digits = draw(st.integers(0, 9))
    if digits:
        fraction = draw(st.from_regex(rf"[0-9]{{{digits}}}", fullmatch=True))
        text = text[:19] + "." + fraction + text[19:]
    if text.endswith("+00:00") and draw(st.booleans()):
        text = text[:-6] + draw(st.sampled_from(["Z", "z"]))
    return text


SPEC_NAMES = {
    "specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time",
    "schemaurl", "datacontentencoding", "data",
}  # fmt: skip
extension_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda name: name not in SPEC_NAMES
)
int32 = st.integers(-(2**31), 2**31 - 1)
extension_values = st.one_of(
    strings, st.booleans(), int32, st.binary(max_size=16), timestamps(), uri_references
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(strings, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str | None, object]:
    """A datacontenttype (or None) and data consistent with it."""
    kind = draw(st.sampled_from(["none", "binary", "text", "json", "json-bytes"]))
    if kind == "none":
        return draw(st.none() | media_types), NO_DATA
    if kind == "binary":
        return draw(st.none() | media_types), draw(st.binary(max_size=64))
    if kind == "text":
        return draw(text_media_types), draw(strings)
    if kind == "json":
        return draw(st.none() | json_media_types), draw(json_values)
    from orjson import dumps

    return draw(json_media_types), dumps(draw(json_values))


@st.composite
def events(draw: st.DrawFn, versions: tuple[str, ...] = ("1.0", "0.3")) -> CloudEvent:
    """Valid events of any shape: every optional attribute, extensions of every type."""
    version = draw(st.sampled_from(versions))
    attributes: dict[str, Any] = {
        "specversion": version,
        "id": draw(nonempty_strings),
        "source": draw(uri_references),
        "type": draw(nonempty_strings),
    }
    content_type, data = draw(payloads())
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    if draw(st.booleans()):
        attributes["subject"] = draw(nonempty_strings)
    if draw(st.booleans()):
        attributes["time"] = draw(timestamps())
    if draw(st.booleans()):
        if version == "1.0":
            attributes["dataschema"] = draw(absolute_uris)
        else:
            attributes["schemaurl"] = draw(uri_references)
    if version == "0.3" and type(data) is bytes and draw(st.booleans()):
        attributes["datacontentencoding"] = draw(st.sampled_from(["base64", "Base64"]))
    attributes.update(draw(st.dictionaries(extension_names, extension_values, max_size=4)))
    if draw(st.booleans()):
        attributes["when"] = draw(st.datetimes(timezones=st.just(UTC)))  # becomes RFC 3339
    return CloudEvent(attributes, data)


def as_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
