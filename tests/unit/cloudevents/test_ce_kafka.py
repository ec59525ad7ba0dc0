"""The Kafka binding (kafka-protocol-binding.md): ce_ headers, structured, the key mapper."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.cloudevents import CloudEvent, InvalidEvent, KafkaRecord, from_kafka, to_kafka

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
HEADERS = (("ce_specversion", b"1.0"), ("ce_id", b"1"), ("ce_source", b"/s"), ("ce_type", b"t"))


def test_binary_mode() -> None:
    e = CloudEvent({**BASE, "datacontenttype": "application/avro", "flag": True, "s": "é"}, b"\x00")
    record = to_kafka(e)
    # 3.2.1 content-type; 3.2.3 ce_ prefix, UTF-8 values, canonical strings.
    assert record == KafkaRecord(
        (
            *HEADERS,
            ("content-type", b"application/avro"),
            ("ce_flag", b"true"),
            ("ce_s", "é".encode()),
        ),
        b"\x00",
    )
    assert from_kafka(record.headers, record.value) == e


def test_binary_json_data_gets_implied_content_type() -> None:
    record = to_kafka(CloudEvent(BASE, {"a": 1}))
    assert ("content-type", b"application/json") in record.headers
    assert record.value == b'{"a":1}'


def test_event_without_data_is_not_a_tombstone() -> None:
    assert to_kafka(CloudEvent(BASE)).value == b""
    assert not from_kafka(HEADERS, None).has_data


def test_data_of_a_cloudevents_format_type_cannot_go_binary() -> None:
    e = CloudEvent({**BASE, "datacontenttype": "application/cloudevents-batch+json"}, b"[]")
    with pytest.raises(InvalidEvent, match=r"datacontenttype: .*binary mode"):
        to_kafka(e, "binary")


def test_structured_mode() -> None:
    e = CloudEvent(BASE, "text")
    record = to_kafka(e, "structured")
    assert record.headers == (("content-type", b"application/cloudevents+json"),)
    assert orjson.loads(record.value or b"") == {**BASE, "data": "text"}
    assert from_kafka(record.headers, record.value) == e


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_key_from_partitionkey_is_opt_in_and_keeps_the_attribute(mode: Any) -> None:
    e = CloudEvent({**BASE, "partitionkey": "device-7"})
    assert to_kafka(e, mode).key is None
    record = to_kafka(e, mode, key_from_partitionkey=True)
    assert record.key == b"device-7"
    # 3.1: the mapper MUST NOT modify the event; partitionkey still travels.
    assert from_kafka(record.headers, record.value, record.key) == e
    assert to_kafka(CloudEvent(BASE), mode, key_from_partitionkey=True).key is None


def test_key_is_not_turned_into_an_attribute() -> None:
    assert from_kafka(HEADERS, b"", key=b"k") == CloudEvent(BASE)


def test_structured_by_content_type_with_parameters() -> None:
    value = orjson.dumps({**BASE, "id": "from-value"})
    headers = [*HEADERS, ("Content-Type", b"application/cloudevents+json; charset=UTF-8")]
    assert from_kafka(headers, value).id == "from-value"


def test_record_without_headers_is_structured() -> None:
    # 3.3.1: content-type is optional in structured mode (and Kafka < 0.11 has no headers).
    assert from_kafka([], orjson.dumps(BASE)) == CloudEvent(BASE)


def test_unrelated_headers_are_not_looked_at() -> None:
    headers = [*HEADERS, ("traceparent-bin", b"\xff\xfe"), ("x", None)]
    assert from_kafka(headers, b"") == CloudEvent(BASE)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="content mode"):
        to_kafka(CloudEvent(BASE), "batched")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "value", "attribute", "problem"),
    [
        pytest.param(
            [("content-type", b"text/plain")],
            b"x",
            "ce_specversion",
            "header missing",
            id="not-a-cloudevent",
        ),
        pytest.param(
            [*HEADERS, ("CE_ID", b"2")], b"", "CE_ID", "more than once", id="duplicate-attribute"
        ),
        pytest.param(
            [*HEADERS, ("content-type", b"a/b"), ("content-type", b"a/b")],
            b"",
            "content-type",
            "more than once",
            id="duplicate-content-type",
        ),
        pytest.param(
            [*HEADERS, ("ce_datacontenttype", b"a/b")],
            b"",
            "ce_datacontenttype",
            "not allowed in binary mode",
            id="ce-datacontenttype",
        ),
        pytest.param(
            [*HEADERS, ("ce_subject", b"\xc0\xa0")], b"", "ce_subject", "UTF-8", id="invalid-utf8"
        ),
        pytest.param(
            [*HEADERS, ("ce_subject", None)], b"", "ce_subject", "no value", id="null-header"
        ),
        pytest.param(
            [("content-type", b"application/cloudevents+json")],
            None,
            "value",
            "needs a value",
            id="structured-tombstone",
        ),
        pytest.param(
            [("content-type", b"application/cloudevents+protobuf")],
            b"",
            "content-type",
            "unsupported event format",
            id="unsupported-format",
        ),
        pytest.param([*HEADERS, ("ce_time", b"soon")], b"", "time", "RFC 3339", id="bad-time"),
    ],
)
def test_invalid_records(headers: Any, value: Any, attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_kafka(headers, value)
    assert info.value.attribute == attribute and problem in info.value.reason
