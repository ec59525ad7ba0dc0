"""The HTTP binding (http-protocol-binding.md): modes, headers, percent-encoding, batches."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import orjson
import pytest

from headwater.cloudevents import (
    CloudEvent,
    InvalidEvent,
    from_http,
    is_cloudevent,
    to_http,
    to_http_batch,
)
from headwater.cloudevents.http import decode_header_value, encode_header_value

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


def decode_one(headers: Any, body: bytes = b"") -> CloudEvent:
    event = from_http(headers, body)
    assert isinstance(event, CloudEvent)
    return event


# -- binary mode, encoding ------------------------------------------------------------


def test_binary_mode_maps_attributes_to_ce_headers() -> None:
    e = CloudEvent(
        {**BASE, "time": "2018-04-05T03:56:24Z", "datacontenttype": "application/xml"}, b"<a/>"
    )
    headers, body = to_http(e, "binary")
    assert headers == {
        **HEADERS,
        "ce-time": "2018-04-05T03:56:24Z",
        "content-type": "application/xml",
    }
    assert body == b"<a/>"


@pytest.mark.parametrize(
    ("value", "header"),
    [
        pytest.param(True, "true", id="boolean-true"),
        pytest.param(False, "false", id="boolean-false"),
        pytest.param(-42, "-42", id="integer"),
        pytest.param(b"\x00\xff", "AP8=", id="binary-base64"),
    ],
)
def test_canonical_strings(value: object, header: str) -> None:
    headers, _ = to_http(CloudEvent({**BASE, "ext": value}))
    assert headers["ce-ext"] == header


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        pytest.param("Euro € 😀", "Euro%20%E2%82%AC%20%F0%9F%98%80", id="spec-example"),
        pytest.param('say "hi"', "say%20%22hi%22", id="double-quote"),
        pytest.param("100%", "100%25", id="percent"),
        pytest.param("é", "%C3%A9", id="upper-case-hex"),
        pytest.param(
            "a!#$&'()*+,/:;<=>?@[\\]^_`{|}~z",
            "a!#$&'()*+,/:;<=>?@[\\]^_`{|}~z",
            id="printable-ascii-untouched",
        ),
    ],
)
def test_percent_encoding(value: str, encoded: str) -> None:
    assert encode_header_value(value) == encoded
    headers, _ = to_http(CloudEvent({**BASE, "subject": value}))
    assert headers["ce-subject"] == encoded
    assert decode_one(headers)["subject"] == value


def test_json_data_without_datacontenttype_gets_application_json() -> None:
    # json-format.md 3.1.2: the implied type SHOULD be made explicit.
    headers, body = to_http(CloudEvent(BASE, "I'm just a string"))
    assert headers["content-type"] == "application/json"
    assert body == b'"I\'m just a string"'


@pytest.mark.parametrize(
    "data", [pytest.param(b"\x00", id="bytes"), pytest.param(..., id="no-data")]
)
def test_no_content_type_is_invented_for_bytes_or_no_data(data: object) -> None:
    event = CloudEvent(BASE) if data is ... else CloudEvent(BASE, data)
    headers, _ = to_http(event)
    assert "content-type" not in headers
    assert decode_one(headers, _) == event


def test_data_of_a_cloudevents_format_type_cannot_go_binary() -> None:
    # 3: the receiver would take that Content-Type for structured mode.
    e = CloudEvent({**BASE, "datacontenttype": "application/cloudevents+json"}, b"{}")
    with pytest.raises(InvalidEvent, match=r"datacontenttype: .*binary mode"):
        to_http(e, "binary")
    assert from_http(*to_http(e, "structured")) == e


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="content mode"):
        to_http(CloudEvent(BASE), "batched")  # type: ignore[arg-type]


# -- structured and batched mode, encoding --------------------------------------------


def test_structured_mode() -> None:
    e = CloudEvent(BASE, {"a": 1})
    headers, body = to_http(e, "structured")
    assert headers == {"content-type": "application/cloudevents+json"}
    assert orjson.loads(body) == {**BASE, "data": {"a": 1}}


def test_batched_mode() -> None:
    events = [CloudEvent(BASE), CloudEvent({**BASE, "id": "2"})]
    headers, body = to_http_batch(events)
    assert headers == {"content-type": "application/cloudevents-batch+json"}
    assert from_http(headers, body) == events


# -- decoding: content mode by Content-Type -------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/cloudevents+json", id="plain"),
        pytest.param("application/cloudevents+json; charset=UTF-8", id="with-parameter"),
        pytest.param("Application/CloudEvents+JSON", id="upper-case"),
        pytest.param("  application/cloudevents+json ;charset=utf-8", id="whitespace"),
    ],
)
def test_structured_by_content_type_even_with_ce_headers(content_type: str) -> None:
    body = orjson.dumps({**BASE, "id": "from-body"})
    headers = {**HEADERS, "ce-id": "from-header", "Content-Type": content_type}
    assert decode_one(headers, body).id == "from-body"


def test_batch_by_content_type() -> None:
    body = orjson.dumps([BASE])
    events = from_http({"content-type": "application/cloudevents-batch+json; x=y"}, body)
    assert events == [CloudEvent(BASE)]
    assert from_http({"content-type": "application/cloudevents-batch+json"}, b"[]") == []


def test_binary_when_content_type_is_not_cloudevents() -> None:
    # The body is JSON that looks like an event: it is still just data.
    body = orjson.dumps({**BASE, "id": "from-body"})
    e = decode_one({**HEADERS, "Content-Type": "application/json; charset=utf-8"}, body)
    assert e.id == "1" and e.datacontenttype == "application/json; charset=utf-8"
    assert e.data == body


def test_header_names_are_case_insensitive() -> None:
    e = decode_one(
        {
            "CE-SpecVersion": "1.0",
            "Ce-Id": "1",
            "ce-SOURCE": "/s",
            "cE-type": "t",
            "CE-MyExt": "v",
            "CONTENT-TYPE": "text/plain",
        },
        b"x",
    )
    assert e == CloudEvent({**BASE, "myext": "v", "datacontenttype": "text/plain"}, b"x")


def test_headers_as_pairs_or_any_mapping() -> None:
    expected = CloudEvent(BASE)
    assert decode_one(list(HEADERS.items())) == expected
    assert decode_one(MappingProxyType(HEADERS)) == expected


def test_other_headers_are_ignored() -> None:
    assert decode_one({**HEADERS, "host": "x", "content-length": "0"}) == CloudEvent(BASE)


def test_empty_body_is_no_data() -> None:
    assert not decode_one(HEADERS, b"").has_data


def test_is_cloudevent() -> None:
    assert is_cloudevent(HEADERS)
    assert is_cloudevent({"content-type": "application/cloudevents+json"})
    assert is_cloudevent({"Content-Type": "Application/CloudEvents-Batch+JSON"})
    assert not is_cloudevent({"content-type": "application/json", "ce-id": "1"})
    assert not is_cloudevent({})


# -- decoding: header values (3.1.3.2) -------------------------------------------------


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro € 😀", id="spec-example"),
        pytest.param("%c3%a9", "é", id="lower-case-hex"),
        pytest.param("%41%42", "AB", id="needlessly-encoded"),
        pytest.param("a%2520", "a%20", id="one-round-only"),
        pytest.param('"hello world"', "hello world", id="quoted-string"),
        pytest.param('"say \\"hi\\""', 'say "hi"', id="quoted-pair-escapes"),
        pytest.param('"a\\\\b"', "a\\b", id="escaped-backslash"),
        pytest.param('x "y z" w', "x y z w", id="quoted-in-the-middle"),
        pytest.param('"100%25"', "100%", id="quoted-then-percent-decoded"),
        # Servers decode raw header bytes with surrogateescape; they go back to
        # the bytes they were before the percent-decoded bytes join them.
        pytest.param("caf\udcc3\udca9%21", "café!", id="raw-utf8-bytes-kept"),
    ],
)
def test_header_value_decoding(header: str, value: str) -> None:
    assert decode_header_value("ce-x", header) == value


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        pytest.param("%C0%A0", "invalid UTF-8", id="overlong-space"),
        pytest.param("%ED%A0%80", "invalid UTF-8", id="encoded-surrogate"),
        pytest.param("%FF", "invalid UTF-8", id="invalid-byte"),
        pytest.param("%E2%82", "invalid UTF-8", id="truncated-sequence"),
        pytest.param("%F4%90%80%80", "invalid UTF-8", id="beyond-u10ffff"),
        pytest.param("100%", "malformed percent", id="lone-percent"),
        pytest.param("%4", "malformed percent", id="one-hex-digit"),
        pytest.param("%zz", "malformed percent", id="not-hex"),
        pytest.param('"open', "unterminated quoted-string", id="unterminated-quote"),
        pytest.param('"ends with \\', "unterminated quoted-string", id="dangling-escape"),
        pytest.param("\ud800%41", "invalid UTF-8", id="lone-surrogate-not-from-bytes"),
    ],
)
def test_invalid_header_values(header: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        decode_one({**HEADERS, "ce-subject": header})
    assert info.value.attribute == "ce-subject" and problem in info.value.reason


def test_decoded_value_is_still_validated() -> None:
    # %0A decodes to a newline, which no String may hold.
    with pytest.raises(InvalidEvent, match=r"^subject: .*U\+000A"):
        decode_one({**HEADERS, "ce-subject": "a%0Ab"})


# -- decoding: invalid messages -------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "attribute", "problem"),
    [
        pytest.param(
            {"content-type": "application/json"},
            "ce-specversion",
            "header missing",
            id="not-a-cloudevent",
        ),
        pytest.param({}, "ce-specversion", "header missing", id="no-headers"),
        pytest.param(
            {**HEADERS, "ce-datacontenttype": "text/plain"},
            "ce-datacontenttype",
            "not allowed in binary mode",
            id="ce-datacontenttype",
        ),
        pytest.param(
            [*HEADERS.items(), ("CE-ID", "2")], "CE-ID", "more than once", id="duplicate-attribute"
        ),
        pytest.param(
            [*HEADERS.items(), ("content-type", "a/b"), ("Content-Type", "a/b")],
            "content-type",
            "more than once",
            id="duplicate-content-type",
        ),
        pytest.param(
            {"content-type": "application/cloudevents+avro"},
            "content-type",
            "unsupported event format",
            id="unsupported-format",
        ),
        pytest.param(
            {**HEADERS, "ce-specversion": "0.2"},
            "specversion",
            "unsupported",
            id="unsupported-version",
        ),
        pytest.param({**HEADERS, "ce-id": ""}, "id", "non-empty", id="empty-id"),
        pytest.param(
            {k: v for k, v in HEADERS.items() if k != "ce-type"},
            "type",
            "required",
            id="missing-type",
        ),
        pytest.param({**HEADERS, "ce-data": "x"}, "data", "reserved", id="ce-data-header"),
        pytest.param({**HEADERS, "ce-bad_name": "x"}, "bad_name", "lower-case", id="bad-name"),
        pytest.param({**HEADERS, "ce-": "text/plain"}, "", "lower-case", id="bare-ce-prefix"),
        pytest.param(
            {**HEADERS, "content-type": "not a media type"},
            "datacontenttype",
            "media type",
            id="bad-content-type",
        ),
    ],
)
def test_invalid_messages(headers: Any, attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_http(headers, b"")
    assert info.value.attribute == attribute and problem in info.value.reason


def test_invalid_structured_body() -> None:
    with pytest.raises(InvalidEvent, match=r"^body: "):
        from_http({"content-type": "application/cloudevents+json"}, b"{")
    with pytest.raises(InvalidEvent, match=r"^event: .*array"):
        from_http({"content-type": "application/cloudevents+json"}, b"[]")


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize(
    "event",
    [
        pytest.param(CloudEvent({**BASE, "datacontenttype": "image/png"}, b"\x89PNG"), id="png"),
        pytest.param(
            CloudEvent({**BASE, "datacontenttype": "application/json"}, {"a": 1}), id="json"
        ),
        pytest.param(CloudEvent({**BASE, "specversion": "0.3", "schemaurl": "/x"}), id="0.3"),
        pytest.param(CloudEvent({**BASE, "subject": '😀 "%" \\'}), id="awkward-subject"),
    ],
)
def test_round_trip(event: CloudEvent, mode: Any) -> None:
    assert from_http(*to_http(event, mode)) == event
