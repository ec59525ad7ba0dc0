"""CloudEvent: validation per CloudEvents 1.0.2 (and 0.3), immutability, equality, evolve.

Test modules here carry a ``ce_`` prefix: test directories are not packages,
so every test module name must be unique across tests/.
"""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent, from_json, is_json_content_type

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
BASE03: dict[str, Any] = {**BASE, "specversion": "0.3"}


def event(**attributes: Any) -> CloudEvent:
    return CloudEvent({**BASE, **attributes})


# -- valid values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("source", "https://github.com/cloudevents", id="source-absolute-uri"),
        pytest.param("source", "mailto:cncf-wg-serverless@lists.cncf.io", id="source-mailto"),
        pytest.param("source", "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", id="source-urn"),
        pytest.param("source", "/sensors/tn-1234567/alerts", id="source-path"),
        pytest.param("source", "1-555-123-4567", id="source-relative-no-colon"),
        pytest.param("source", "a/b:c", id="source-colon-after-slash"),
        pytest.param("source", "/p?q=1#frag", id="source-query-fragment"),
        pytest.param("source", "/caf%C3%A9", id="source-pct-encoded"),
        pytest.param("dataschema", "https://example.com/schema.json#/defs/x", id="dataschema"),
        pytest.param("subject", 'Euro € 😀 and "quotes"', id="subject-unicode"),
        pytest.param("time", "2018-04-05T17:31:00Z", id="time-z"),
        pytest.param("time", "2018-04-05t17:31:00.123456789z", id="time-lowercase-t-z"),
        pytest.param("time", "2018-04-05T17:31:00+05:30", id="time-offset"),
        pytest.param("time", "2016-12-31T23:59:60Z", id="time-leap-second"),
        pytest.param("time", "2024-02-29T00:00:00Z", id="time-leap-day"),
        pytest.param("time", "2000-02-29T00:00:00Z", id="time-leap-day-400"),
        pytest.param("datacontenttype", "application/json", id="ct-json"),
        pytest.param("datacontenttype", "text/plain; charset=utf-8", id="ct-param"),
        pytest.param("datacontenttype", 'text/plain;a="q \\" x";b=c', id="ct-quoted-param"),
        pytest.param("datacontenttype", "application/json;", id="ct-empty-param"),
        pytest.param("comexampleext1", "value", id="ext-string"),
        pytest.param("x" * 20, "20-character name", id="ext-name-20"),
        pytest.param("ext", True, id="ext-boolean"),
        pytest.param("ext", -(2**31), id="ext-int32-min"),
        pytest.param("ext", 2**31 - 1, id="ext-int32-max"),
        pytest.param("ext", b"\x00\xff", id="ext-binary"),
        pytest.param("ext", "", id="ext-empty-string"),
    ],
)
def test_valid_attribute_values_are_kept_as_given(name: str, value: object) -> None:
    assert event(**{name: value})[name] == value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param(datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC), "2020-01-02T03:04:05Z", id="utc"),
        pytest.param(
            datetime(2020, 1, 2, 3, 4, 5, 600, tzinfo=timezone(timedelta(hours=-8))),
            "2020-01-02T03:04:05.000600-08:00",
            id="offset-micro",
        ),
    ],
)
def test_datetime_becomes_rfc3339_string(value: datetime, text: str) -> None:
    assert event(time=value)["time"] == text
    assert event(when=value)["when"] == text  # an extension Timestamp too


def test_null_attribute_means_unset() -> None:
    e = event(subject=None, ext=None)
    assert "subject" not in e and "ext" not in e


def test_specversion_03_is_kept_as_03() -> None:
    e = CloudEvent({**BASE03, "schemaurl": "/schema", "datacontentencoding": "base64"}, b"x")
    assert e.specversion == "0.3"
    assert e["schemaurl"] == "/schema"
    assert e.extensions == {}


def test_03_defines_other_attributes_than_10() -> None:
    # 'dataschema' is an extension under 0.3, 'schemaurl' one under 1.0.
    assert CloudEvent({**BASE03, "dataschema": "not a uri"}).extensions == {
        "dataschema": "not a uri"
    }
    assert event(schemaurl="anything at all").extensions == {"schemaurl": "anything at all"}


# -- invalid values: each names the attribute and the rule ---------------------------


@pytest.mark.parametrize(
    ("attributes", "attribute", "problem"),
    [
        pytest.param({"specversion": None}, "specversion", "is required", id="no-specversion"),
        pytest.param({"specversion": "2.0"}, "specversion", "unsupported version", id="2.0"),
        pytest.param({"specversion": 1}, "specversion", "unsupported version", id="int-version"),
        pytest.param({"id": None}, "id", "is required", id="no-id"),
        pytest.param({"source": None}, "source", "is required", id="no-source"),
        pytest.param({"type": None}, "type", "is required", id="no-type"),
        pytest.param({"id": ""}, "id", "non-empty", id="empty-id"),
        pytest.param({"type": ""}, "type", "non-empty", id="empty-type"),
        pytest.param({"id": 5}, "id", "must be a String, not int", id="int-id"),
        pytest.param({"id": "a\nb"}, "id", "U+000A", id="newline-in-id"),
        pytest.param({"id": "a\x85b"}, "id", "U+0085", id="c1-control"),
        pytest.param({"id": "a\x7fb"}, "id", "U+007F", id="delete"),
        pytest.param({"type": "a\ud800b"}, "type", "U+D800", id="lone-surrogate"),
        pytest.param({"type": "\ufdd0"}, "type", "U+FDD0", id="noncharacter-fdd0"),
        pytest.param({"type": "x\U0010ffff"}, "type", "U+10FFFF", id="noncharacter-plane-16"),
        pytest.param({"source": ""}, "source", "non-empty", id="empty-source"),
        pytest.param({"source": "a b"}, "source", "URI-reference", id="source-space"),
        pytest.param({"source": ":no-scheme"}, "source", "URI-reference", id="source-colon"),
        pytest.param({"source": "1a:b"}, "source", "URI-reference", id="source-bad-scheme"),
        pytest.param({"source": "/a#b#c"}, "source", "URI-reference", id="source-two-hashes"),
        pytest.param({"source": "/%zz"}, "source", "URI-reference", id="source-bad-pct"),
        pytest.param({"source": "/\u00e9"}, "source", "URI-reference", id="source-non-ascii"),
        pytest.param({"source": "/a\nb"}, "source", "U+000A", id="source-control"),
        pytest.param({"dataschema": "/relative"}, "dataschema", "absolute URI", id="schema-rel"),
        pytest.param({"dataschema": ""}, "dataschema", "absolute URI", id="schema-empty"),
        pytest.param({"subject": ""}, "subject", "non-empty", id="empty-subject"),
        pytest.param({"time": "2018-04-05"}, "time", "RFC 3339", id="time-date-only"),
        pytest.param({"time": "2018-04-05T17:31:00"}, "time", "RFC 3339", id="time-no-offset"),
        pytest.param({"time": "2018-04-05 17:31:00Z"}, "time", "RFC 3339", id="time-space"),
        pytest.param({"time": "2018-13-05T17:31:00Z"}, "time", "RFC 3339", id="time-month-13"),
        pytest.param({"time": "2018-04-05T24:00:00Z"}, "time", "RFC 3339", id="time-hour-24"),
        pytest.param({"time": "2018-04-05T17:31:00+0100"}, "time", "RFC 3339", id="time-offset"),
        pytest.param({"time": "٢٠١٨-04-05T17:31:00Z"}, "time", "RFC 3339", id="time-arabic"),
        pytest.param({"time": "2018-04-31T00:00:00Z"}, "time", "no such day", id="april-31"),
        pytest.param({"time": "2023-02-29T00:00:00Z"}, "time", "no such day", id="feb-29"),
        pytest.param({"time": "1900-02-29T00:00:00Z"}, "time", "no such day", id="feb-29-1900"),
        pytest.param({"time": 1234}, "time", "not int", id="time-int"),
        pytest.param({"time": datetime(2020, 1, 1)}, "time", "time zone", id="naive-datetime"),
        pytest.param({"datacontenttype": "json"}, "datacontenttype", "media type", id="ct-1"),
        pytest.param({"datacontenttype": ""}, "datacontenttype", "media type", id="ct-empty"),
        pytest.param({"datacontenttype": "a/b; c"}, "datacontenttype", "media type", id="ct-p"),
        pytest.param({"datacontenttype": "a/é"}, "datacontenttype", "media type", id="ct-8bit"),
        pytest.param({"Ext": "x"}, "Ext", "lower-case", id="upper-case-name"),
        pytest.param({"ext_1": "x"}, "ext_1", "lower-case", id="underscore-name"),
        pytest.param({"": "x"}, "", "lower-case", id="empty-name"),
        pytest.param({"x" * 21: "x"}, "x" * 21, "1 to 20", id="name-21"),
        pytest.param({"data": "x"}, "data", "reserved", id="data-name"),
        pytest.param({5: "x"}, "5", "must be strings", id="int-name"),
        pytest.param({"ext": 2**31}, "ext", "32-bit", id="int-too-big"),
        pytest.param({"ext": -(2**31) - 1}, "ext", "32-bit", id="int-too-small"),
        pytest.param({"ext": 1.5}, "ext", "without fraction", id="float"),
        pytest.param({"ext": 1.0}, "ext", "without fraction", id="whole-float"),
        pytest.param({"ext": [1]}, "ext", "has type list", id="list"),
        pytest.param({"ext": {"a": 1}}, "ext", "has type dict", id="dict"),
        pytest.param({"ext": "a\tb"}, "ext", "U+0009", id="ext-tab"),
    ],
)
def test_invalid_attribute_is_named_with_the_rule(
    attributes: dict[Any, Any], attribute: str, problem: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        CloudEvent({**BASE, **attributes})
    assert info.value.attribute == attribute
    assert problem in info.value.reason
    assert str(info.value).startswith(f"{attribute}: ")


@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize("missing", ["specversion", "id", "source", "type"])
def test_absent_required_attribute_is_named(version: str, missing: str) -> None:
    attributes = {**BASE, "specversion": version, "subject": "s", "ext": 1}
    del attributes[missing]
    for build in (CloudEvent, lambda a: from_json(orjson.dumps(a))):
        with pytest.raises(InvalidEvent) as info:
            build(attributes)
        assert (info.value.attribute, info.value.reason) == (missing, "is required")


@pytest.mark.parametrize(
    ("attributes", "attribute", "problem"),
    [
        pytest.param({"subject": ""}, "subject", "non-empty", id="empty-subject"),
        pytest.param({"schemaurl": "a b"}, "schemaurl", "URI-reference", id="schemaurl"),
        pytest.param({"datacontentencoding": ""}, "datacontentencoding", "non-empty", id="enc"),
    ],
)
def test_invalid_03_attribute(attributes: dict[str, Any], attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        CloudEvent({**BASE03, **attributes})
    assert (info.value.attribute, problem in info.value.reason) == (attribute, True)


def test_remembered_values_are_per_version() -> None:
    # A value validated for one version must not pass for an attribute of the
    # same name that has another type under a different version.
    CloudEvent({**BASE, "dataschema": "https://x/y"})
    with pytest.raises(InvalidEvent, match="dataschema"):
        event(dataschema="not a uri")
    CloudEvent({**BASE03, "dataschema": "not a uri"})  # an extension String there
    with pytest.raises(InvalidEvent, match="dataschema"):
        event(dataschema="not a uri")


# -- immutability, access -------------------------------------------------------------


def test_event_is_immutable() -> None:
    e = event()
    with pytest.raises(AttributeError):
        e.id = "2"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del e.id  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.attributes["id"] = "2"  # type: ignore[index]


def test_constructor_copies_its_input() -> None:
    attributes = dict(BASE)
    e = CloudEvent(attributes)
    attributes["id"] = "changed"
    assert e.id == "1"


def test_accessors() -> None:
    e = CloudEvent(
        {**BASE, "subject": "s", "time": "2020-01-01T00:00:00Z", "dataschema": "urn:x", "e": 1},
        b"x",
    )
    assert (e.specversion, e.id, e.source, e.type, e.subject) == ("1.0", "1", "/s", "t", "s")
    assert (e.time, e.dataschema, e.datacontenttype) == ("2020-01-01T00:00:00Z", "urn:x", None)
    assert e.get("e") == 1 and e.get("missing", "d") == "d" and "e" in e
    assert list(e) == ["specversion", "id", "source", "type", "subject", "time", "dataschema", "e"]
    assert e.extensions == {"e": 1}


@pytest.mark.parametrize(
    ("data", "has_data", "value"),
    [
        pytest.param(NO_DATA, False, None, id="none"),
        pytest.param(None, True, None, id="json-null"),
        pytest.param(bytearray(b"ab"), True, b"ab", id="bytearray-becomes-bytes"),
        pytest.param(memoryview(b"ab"), True, b"ab", id="memoryview-becomes-bytes"),
    ],
)
def test_data_presence(data: object, has_data: bool, value: object) -> None:
    e = CloudEvent(BASE, data)
    assert (e.has_data, e.data) == (has_data, value)


@pytest.mark.parametrize(
    ("content_type", "data", "payload"),
    [
        pytest.param(None, NO_DATA, b"", id="no-data"),
        pytest.param(None, b"\x00", b"\x00", id="bytes-as-is"),
        pytest.param("text/plain", "héllo", "héllo".encode(), id="text-as-utf8"),
        pytest.param(None, "I'm just a string", b'"I\'m just a string"', id="json-string-quoted"),
        pytest.param("application/json", {"a": [1, None]}, b'{"a":[1,null]}', id="json-value"),
        pytest.param("application/ld+json", None, b"null", id="json-null"),
    ],
)
def test_data_bytes(content_type: str | None, data: object, payload: bytes) -> None:
    attributes = {**BASE, "datacontenttype": content_type}
    assert CloudEvent(attributes, data).data_bytes() == payload


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({1, 2}, id="set"),
        pytest.param({"a": 2**64}, id="int-beyond-64-bits"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_unserialisable_data_is_invalid(data: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^data: "):
        CloudEvent({**BASE, "datacontenttype": "text/plain"}, data).data_bytes()
    with pytest.raises(InvalidEvent, match=r"^data: "):
        CloudEvent(BASE, data).data_bytes()


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        pytest.param(None, True, id="absent-implies-json"),
        pytest.param("application/json", True, id="json"),
        pytest.param("Application/JSON; charset=utf-8", True, id="case-and-params"),
        pytest.param("application/cloudevents+json", True, id="plus-json"),
        pytest.param("text/json", True, id="text-json"),
        pytest.param("application/jsonx", False, id="jsonx"),
        pytest.param("text/plain", False, id="text"),
    ],
)
def test_is_json_content_type(content_type: str | None, is_json: bool) -> None:
    assert is_json_content_type(content_type) is is_json


# -- equality -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(event(ext=5), event(ext="5"), id="integer-vs-canonical-string"),
        pytest.param(event(ext=True), event(ext="true"), id="boolean-vs-canonical-string"),
        pytest.param(event(ext=b"\xff"), event(ext="/w=="), id="binary-vs-base64"),
        pytest.param(
            CloudEvent(BASE, {"a": 1}), CloudEvent(BASE, b'{ "a" : 1 }'), id="json-by-value"
        ),
        pytest.param(
            CloudEvent({**BASE, "datacontenttype": "text/plain"}, "x"),
            CloudEvent({**BASE, "datacontenttype": "text/plain"}, b"x"),
            id="text-vs-its-bytes",
        ),
        pytest.param(CloudEvent(BASE, "x"), CloudEvent(BASE, b'"x"'), id="json-string"),
    ],
)
def test_equal(a: CloudEvent, b: CloudEvent) -> None:
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(event(ext=1), event(ext=True), id="integer-vs-boolean"),
        pytest.param(event(ext=True), event(ext="True"), id="non-canonical-boolean"),
        pytest.param(event(), event(ext="x"), id="extra-attribute"),
        pytest.param(CloudEvent(BASE), CloudEvent(BASE, None), id="no-data-vs-null"),
        pytest.param(CloudEvent(BASE, "x"), CloudEvent(BASE, b"x"), id="json-string-vs-raw"),
        pytest.param(CloudEvent(BASE, {"a": 1}), CloudEvent(BASE, {"a": 2}), id="data"),
        pytest.param(
            event(time="2020-01-01T00:00:00Z"), event(time="2020-01-01T00:00:00.0Z"), id="time"
        ),
    ],
)
def test_not_equal(a: CloudEvent, b: CloudEvent) -> None:
    assert a != b


def test_not_equal_to_other_types() -> None:
    assert event() != dict(BASE)


def test_pickle_round_trip() -> None:
    for e in (CloudEvent(BASE), CloudEvent(BASE, None), CloudEvent(BASE, {"a": b"x"[0]})):
        copy = pickle.loads(pickle.dumps(e))
        assert copy == e and copy.has_data == e.has_data


# -- evolve ---------------------------------------------------------------------------


def test_evolve_sets_removes_and_keeps_data() -> None:
    e = CloudEvent({**BASE, "subject": "s"}, b"d")
    evolved = e.evolve({"subject": None, "ext": 1, "time": datetime(2020, 1, 1, tzinfo=UTC)})
    assert evolved.attributes == {**BASE, "ext": 1, "time": "2020-01-01T00:00:00Z"}
    assert evolved.data == b"d"
    assert e["subject"] == "s"  # the original is untouched


def test_evolve_replaces_data() -> None:
    assert CloudEvent(BASE, b"d").evolve(data=bytearray(b"n"), keep_data=False).data == b"n"
    assert not CloudEvent(BASE, b"d").evolve(keep_data=False).has_data
    with pytest.raises(TypeError, match="keep_data=False"):
        CloudEvent(BASE, b"d").evolve(data=b"n")  # ambiguous: refused, not ignored


@pytest.mark.parametrize(
    ("changes", "attribute", "problem"),
    [
        pytest.param({"id": None}, "id", "cannot be removed", id="remove-required"),
        pytest.param({"id": ""}, "id", "non-empty", id="empty-id"),
        pytest.param({"Bad": 1}, "Bad", "lower-case", id="bad-name"),
        pytest.param({"time": "yesterday"}, "time", "RFC 3339", id="bad-time"),
        pytest.param({"specversion": "9"}, "specversion", "unsupported", id="bad-version"),
    ],
)
def test_evolve_validates_changes(changes: dict[str, Any], attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        event().evolve(changes)
    assert info.value.attribute == attribute and problem in info.value.reason


def test_evolve_to_another_version_revalidates_everything() -> None:
    e = event(dataschema="urn:x")
    assert e.evolve({"specversion": "0.3"}).extensions == {"dataschema": "urn:x"}
    with pytest.raises(InvalidEvent, match="subject"):
        CloudEvent({**BASE03, "ext": "x"}).evolve({"specversion": "1.0", "subject": ""})
