"""The NATS binding (nats-protocol-binding.md): structured and header-based binary mode."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.cloudevents import CloudEvent, InvalidEvent, from_nats, to_nats

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
HEADERS = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}


def test_structured_mode_announces_the_format() -> None:
    e = CloudEvent(BASE, {"a": 1})
    headers, payload = to_nats(e)
    assert headers == {"Content-Type": "application/cloudevents+json"}
    assert orjson.loads(payload) == {**BASE, "data": {"a": 1}}
    assert from_nats(headers, payload) == e


def test_message_without_headers_is_structured() -> None:
    # 3: before NATS 2.2 there are no headers and the mode is always structured.
    e = CloudEvent(BASE, b"\x00")
    _, payload = to_nats(e)
    assert from_nats(None, payload) == e
    assert from_nats({}, payload) == e


def test_binary_mode_every_attribute_is_a_ce_header() -> None:
    e = CloudEvent({**BASE, "datacontenttype": "text/plain", "subject": "a b", "n": 1}, b"x")
    headers, payload = to_nats(e, "binary")
    # 3.1.3.1: datacontenttype maps to ce-datacontenttype; 3.1.3.2 percent-encoding.
    assert headers == {
        **HEADERS,
        "ce-datacontenttype": "text/plain",
        "ce-subject": "a%20b",
        "ce-n": "1",
    }
    assert payload == b"x"
    assert from_nats(headers, payload) == e


def test_data_of_a_cloudevents_format_type_goes_binary_as_ce_header() -> None:
    # Unlike HTTP, NATS binary mode has no Content-Type to be misread.
    e = CloudEvent({**BASE, "datacontenttype": "application/cloudevents+json"}, b"{}")
    assert from_nats(*to_nats(e, "binary")) == e


def test_binary_json_data_gets_implied_content_type() -> None:
    headers, _ = to_nats(CloudEvent(BASE, [1]), "binary")
    assert headers["ce-datacontenttype"] == "application/json"


def test_binary_decoding_is_case_insensitive_and_ignores_other_headers() -> None:
    headers = {
        "CE-SPECVERSION": "1.0",
        "Ce-Id": "1",
        "ce-source": "/s",
        "ce-type": "t",
        "Nats-Msg-Id": "x",
        "Content-Type": "text/plain",
    }
    assert from_nats(headers, b"") == CloudEvent(BASE)


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="content mode"):
        to_nats(CloudEvent(BASE), "batched")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("headers", "payload", "attribute", "problem"),
    [
        pytest.param(
            {"Nats-Msg-Id": "x"},
            b"",
            "ce-specversion",
            "header missing",
            id="headers-but-not-an-event",
        ),
        pytest.param({**HEADERS, "CE-ID": "2"}, b"", "CE-ID", "more than once", id="duplicate"),
        pytest.param(
            {**HEADERS, "ce-subject": "%C0%A0"},
            b"",
            "ce-subject",
            "invalid UTF-8",
            id="overlong-utf8",
        ),
        pytest.param(
            {"content-type": "application/cloudevents+avro"},
            b"",
            "Content-Type",
            "unsupported event format",
            id="unsupported-format",
        ),
        pytest.param(
            {"content-type": "application/cloudevents+json"},
            b"[",
            "body",
            "not valid JSON",
            id="bad-payload",
        ),
        pytest.param(None, b"garbage", "body", "not valid JSON", id="headerless-garbage"),
    ],
)
def test_invalid_messages(headers: Any, payload: bytes, attribute: str, problem: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_nats(headers, payload)
    assert info.value.attribute == attribute and problem in info.value.reason
