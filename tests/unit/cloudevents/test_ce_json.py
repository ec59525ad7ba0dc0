"""The JSON event format (json-format.md): members, data placement, batches, 0.3."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from headwater.cloudevents import (
    NO_DATA,
    CloudEvent,
    InvalidEvent,
    from_json,
    from_json_batch,
    to_json,
    to_json_batch,
)
from headwater.cloudevents.json import from_json_value, to_json_value

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
BASE03: dict[str, Any] = {**BASE, "specversion": "0.3"}


def dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def members(event: CloudEvent) -> dict[str, Any]:
    decoded: dict[str, Any] = orjson.loads(to_json(event))
    return decoded


# -- writing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attributes", "data", "expected"),
    [
        pytest.param({}, NO_DATA, {}, id="no-data-no-member"),
        pytest.param({}, None, {"data": None}, id="explicit-null"),
        pytest.param({}, {"a": 1}, {"data": {"a": 1}}, id="json-value"),
        pytest.param({}, "just a string", {"data": "just a string"}, id="json-string"),
        pytest.param(
            {"datacontenttype": "application/xml"},
            '<much wow="xml"/>',
            {"data": '<much wow="xml"/>'},
            id="text-stays-a-string",
        ),
        pytest.param({}, b"\x00\x01", {"data_base64": "AAE="}, id="binary-as-base64"),
        pytest.param(
            {"datacontenttype": "application/json"},
            b'{"a": [1, 2]}',
            {"data": {"a": [1, 2]}},
            id="json-bytes-embedded",
        ),
        pytest.param(
            {"datacontenttype": "application/json"},
            b"{not json",
            {"data_base64": base64.b64encode(b"{not json").decode()},
            id="invalid-json-bytes-as-base64",
        ),
        pytest.param(
            {"datacontenttype": "text/plain"},
            b"text",
            {"data_base64": "dGV4dA=="},
            id="binary-text-as-base64",
        ),
    ],
)
def test_data_placement(attributes: dict[str, Any], data: object, expected: dict[str, Any]) -> None:
    written = members(CloudEvent({**BASE, **attributes}, data))
    assert {
        k: v for k, v in written.items() if k.startswith("data") and k != "datacontenttype"
    } == (expected)


def test_json_bytes_are_embedded_byte_for_byte() -> None:
    body = b'{"a" : [1, 2] }'
    written = to_json(CloudEvent({**BASE, "datacontenttype": "application/json"}, body))
    assert written.endswith(b'"data":' + body + b"}")


def test_attributes_keep_their_json_types() -> None:
    e = CloudEvent({**BASE, "count": 5, "flag": False, "blob": b"\xff", "s": "x"})
    assert members(e) == {**BASE, "count": 5, "flag": False, "blob": "/w==", "s": "x"}


@pytest.mark.parametrize(
    ("attributes", "data"),
    [
        pytest.param({}, {1, 2}, id="set"),
        pytest.param({}, {"a": b"x"}, id="bytes-inside-json-data"),
        pytest.param({"blob": b"\xff"}, {1, 2}, id="set-with-binary-attribute"),
        pytest.param({"blob": b"\xff"}, [b"x"], id="bytes-inside-data-with-binary-attribute"),
    ],
)
def test_unserialisable_data_is_invalid(attributes: dict[str, Any], data: object) -> None:
    # to_json tries orjson on the attributes as they are and writes Binary
    # attributes as Base64 only when that fails: bytes inside JSON data must
    # still be refused, not turned into Base64 along with them.
    with pytest.raises(InvalidEvent, match=r"^data: "):
        to_json(CloudEvent({**BASE, **attributes}, data))


@pytest.mark.parametrize(
    ("attributes", "data"),
    [
        pytest.param({}, NO_DATA, id="no-data"),
        pytest.param({"datacontenttype": "application/json"}, {"a": [1]}, id="json-value"),
        pytest.param({"blob": b"\x00\xff", "n": 5, "b": True}, NO_DATA, id="binary-attribute"),
        pytest.param({"blob": b""}, b"\x00", id="empty-binary-attribute-binary-data"),
        pytest.param(
            {"blob": b"\xff", "datacontenttype": "application/json"},
            b'{"a": 1}',
            id="binary-attribute-json-bytes",
        ),
        pytest.param(
            {**BASE03, "blob": b"\xff", "datacontentencoding": "base64"}, b"\x01", id="0.3-base64"
        ),
    ],
)
def test_to_json_writes_to_json_value(attributes: dict[str, Any], data: object) -> None:
    e = CloudEvent({**BASE, **attributes}, data)
    assert to_json(e) == orjson.dumps(to_json_value(e))
    assert from_json(to_json(e)) == e


# -- reading --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "data"),
    [
        pytest.param({}, NO_DATA, id="absent"),
        pytest.param({"data": None}, None, id="null-payload"),
        pytest.param({"data": "I'm just a string"}, "I'm just a string", id="string-not-parsed"),
        pytest.param({"data": '{"a": 1}'}, '{"a": 1}', id="json-text-stays-a-string"),
        pytest.param({"data": [1, {"b": None}]}, [1, {"b": None}], id="array"),
        pytest.param({"data_base64": "AAE="}, b"\x00\x01", id="base64"),
        pytest.param({"data_base64": ""}, b"", id="empty-base64"),
        pytest.param({"data_base64": None}, NO_DATA, id="null-base64-is-unset"),
        pytest.param({"data": 1, "data_base64": None}, 1, id="data-with-null-base64"),
    ],
)
def test_reading_data(document: dict[str, Any], data: object) -> None:
    e = from_json(dumps({**BASE, **document}))
    assert e.has_data is (data is not NO_DATA)
    if data is not NO_DATA:
        assert e.data == data and type(e.data) is type(data)


def test_null_attributes_are_unset() -> None:
    e = from_json(dumps({**BASE, "subject": None, "time": None, "ext": None}))
    assert e.attributes == BASE


def test_spec_example_with_xml_data() -> None:
    document = {
        **BASE,
        "time": "2018-04-05T17:31:00Z",
        "comexampleextension1": "value",
        "comexampleothervalue": 5,
        "unsetextension": None,
        "datacontenttype": "application/xml",
        "data": '<much wow="xml"/>',
    }
    e = from_json(dumps(document))
    assert e["comexampleothervalue"] == 5 and "unsetextension" not in e
    assert e.data_bytes() == b'<much wow="xml"/>'


def test_reading_leaves_a_parsed_object_untouched() -> None:
    obj = {**BASE, "data": 1}
    from_json_value(obj)
    assert obj == {**BASE, "data": 1}


@pytest.mark.parametrize(
    ("body", "attribute", "problem"),
    [
        pytest.param(b"{", "body", "not valid JSON", id="truncated"),
        pytest.param(b"\xff", "body", "not valid JSON", id="not-utf8"),
        pytest.param(b"[]", "event", "not array", id="array-is-not-an-event"),
        pytest.param(b"null", "event", "not null", id="null"),
        pytest.param(
            dumps({**BASE, "data": 1, "data_base64": "AA=="}),
            "data_base64",
            "both",
            id="data-and-base64",
        ),
        pytest.param(dumps({**BASE, "data_base64": "A"}), "data_base64", "Base64", id="bad-b64"),
        pytest.param(
            dumps({**BASE, "data_base64": "AA"}), "data_base64", "Base64", id="unpadded-b64"
        ),
        pytest.param(
            dumps({**BASE, "data_base64": "A A="}), "data_base64", "Base64", id="b64-space"
        ),
        pytest.param(
            dumps({**BASE, "data_base64": 5}), "data_base64", "not number", id="b64-number"
        ),
        pytest.param(dumps({**BASE, "id": 1}), "id", "not int", id="number-id"),
        pytest.param(dumps({**BASE, "ext": 1.5}), "ext", "fraction", id="fraction"),
        pytest.param(
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1.0}',
            "ext",
            "fraction",
            id="whole-number-with-fraction",
        ),
        pytest.param(
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","ext":1e3}',
            "ext",
            "exponent",
            id="exponent",
        ),
        pytest.param(
            b'{"specversion":"1.0","id":"1","source":"/s","type":"t","e":1e99999}',
            "body",
            "not valid JSON",
            id="infinite-number",
        ),
        pytest.param(dumps({**BASE, "ext": 2**40}), "ext", "32-bit", id="int64"),
        pytest.param(dumps({**BASE, "ext": {"a": 1}}), "ext", "dict", id="object-value"),
        pytest.param(dumps({**BASE, "ext": [1]}), "ext", "list", id="array-value"),
        pytest.param(
            dumps({**BASE, "specversion": 1.0}),
            "specversion",
            "unsupported",
            id="numeric-specversion",
        ),
        pytest.param(
            dumps({"id": "1", "source": "/s", "type": "t"}),
            "specversion",
            "required",
            id="no-specversion",
        ),
        pytest.param(dumps({**BASE, "Type": "t"}), "Type", "lower-case", id="upper-case-member"),
    ],
)
def test_invalid_documents(body: bytes, attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_json(body)
    assert info.value.attribute == attribute and problem in info.value.reason


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(CloudEvent(BASE), id="minimal"),
        pytest.param(CloudEvent(BASE, None), id="null"),
        pytest.param(CloudEvent({**BASE, "e": b"\x00", "n": -3, "b": True}, b"\xff"), id="types"),
        pytest.param(CloudEvent({**BASE, "datacontenttype": "text/plain"}, "𝄞 text"), id="text"),
    ],
)
def test_round_trip(event: CloudEvent) -> None:
    decoded = from_json(to_json(event))
    assert decoded == event and decoded.has_data == event.has_data


# -- CloudEvents 0.3 ------------------------------------------------------------------


def test_03_base64_data_is_decoded_and_written_back() -> None:
    document = {**BASE03, "datacontentencoding": "Base64", "data": "AAE="}
    e = from_json(dumps(document))
    assert e.specversion == "0.3" and e.data == b"\x00\x01"
    assert members(e) == document
    # A null data_base64 is the same as none (2.2): data is still Base64 text.
    assert from_json(dumps({**document, "data_base64": None})) == e


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"data": "AAE=", "data_base64": "AAE="}, id="data-and-base64"),
        pytest.param({"data": None, "data_base64": "AAE="}, id="null-data-and-base64"),
    ],
)
def test_03_data_and_data_base64_are_exclusive(document: dict[str, Any]) -> None:
    with pytest.raises(InvalidEvent, match=r"^data_base64: .*both"):
        from_json(dumps({**BASE03, "datacontentencoding": "base64", **document}))


def test_03_encoding_is_ignored_for_non_string_data() -> None:
    # 0.3: datacontentencoding "MUST be ignored" when data is not a String.
    e = from_json(dumps({**BASE03, "datacontentencoding": "base64", "data": {"a": 1}}))
    assert e.data == {"a": 1}


def test_03_binary_without_encoding_uses_data_base64_and_adds_nothing() -> None:
    e = CloudEvent({**BASE03, "datacontenttype": "image/png"}, b"\x89PNG")
    written = members(e)
    assert "datacontentencoding" not in written and written["data_base64"] == "iVBORw=="
    assert from_json(to_json(e)) == e


def test_03_invalid_base64_data() -> None:
    with pytest.raises(InvalidEvent, match=r"^data: .*Base64"):
        from_json(dumps({**BASE03, "datacontentencoding": "base64", "data": "!!"}))


# -- batches --------------------------------------------------------------------------


def test_empty_batch() -> None:
    assert from_json_batch(b"[]") == []
    assert to_json_batch([]) == b"[]"


def test_batch_round_trip() -> None:
    events = [CloudEvent(BASE, b"\x00"), CloudEvent({**BASE, "id": "2"}, {"a": 1})]
    assert from_json_batch(to_json_batch(iter(events))) == events


@pytest.mark.parametrize(
    ("body", "attribute", "problem"),
    [
        pytest.param(dumps(BASE), "batch", "must be an array", id="object"),
        pytest.param(dumps([BASE, 5]), "batch[1].event", "not number", id="non-object-member"),
        pytest.param(dumps([BASE, {**BASE, "id": ""}]), "batch[1].id", "non-empty", id="member"),
        pytest.param(dumps([BASE, BASE03]), "batch", "share a specversion", id="mixed-versions"),
    ],
)
def test_invalid_batches(body: bytes, attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_json_batch(body)
    assert info.value.attribute == attribute and problem in info.value.reason


def test_writing_a_mixed_version_batch_fails() -> None:
    with pytest.raises(InvalidEvent, match="share a specversion"):
        to_json_batch([CloudEvent(BASE), CloudEvent(BASE03)])
