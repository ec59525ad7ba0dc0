"""The MQTT binding (mqtt-protocol-binding.md): MQTT 5 binary/structured, 3.1.1 structured."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from headwater.cloudevents import (
    CloudEvent,
    InvalidEvent,
    MqttMessage,
    from_mqtt,
    is_cloudevent_mqtt,
    to_mqtt,
)
from headwater.cloudevents.mqtt import MQTT_3_1_1

BASE: dict[str, Any] = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
PROPERTIES = tuple(BASE.items())


def test_mqtt5_binary_mode() -> None:
    e = CloudEvent(
        {**BASE, "datacontenttype": "application/json; charset=utf-8", "n": 5, "b": b"\x01"},
        b'{"a":1}',
    )
    message = to_mqtt(e)
    # 3.1.1: Content Type = datacontenttype; 3.1.3: every other attribute a
    # User Property named exactly as the attribute, canonical string value.
    assert message == MqttMessage(
        b'{"a":1}', "application/json; charset=utf-8", (*PROPERTIES, ("n", "5"), ("b", "AQ=="))
    )
    assert from_mqtt(message.payload, message.content_type, message.user_properties) == e


def test_mqtt5_binary_values_are_not_percent_encoded() -> None:
    message = to_mqtt(CloudEvent({**BASE, "subject": 'a "b" 100% 😀'}))
    assert ("subject", 'a "b" 100% 😀') in message.user_properties


def test_mqtt5_binary_json_data_gets_implied_content_type() -> None:
    message = to_mqtt(CloudEvent(BASE, {"a": 1}))
    assert (message.content_type, message.payload) == ("application/json", b'{"a":1}')


def test_data_of_a_cloudevents_format_type_cannot_go_binary() -> None:
    e = CloudEvent({**BASE, "datacontenttype": "application/cloudevents+json"}, b"{}")
    with pytest.raises(InvalidEvent, match=r"datacontenttype: .*binary mode"):
        to_mqtt(e, "binary")


def test_mqtt5_structured_mode() -> None:
    e = CloudEvent(BASE, b"\x00")
    message = to_mqtt(e, "structured")
    assert message.content_type == "application/cloudevents+json"
    assert message.user_properties == ()
    assert orjson.loads(message.payload) == {**BASE, "data_base64": "AA=="}
    assert from_mqtt(message.payload, message.content_type) == e


def test_mqtt311_is_structured_only() -> None:
    e = CloudEvent(BASE, {"a": 1})
    message = to_mqtt(e, version=MQTT_3_1_1)
    assert message == MqttMessage(to_mqtt(e, "structured").payload)
    assert to_mqtt(e, "structured", version=4) == message
    assert from_mqtt(message.payload, version=4) == e
    with pytest.raises(ValueError, match="no binary content mode"):
        to_mqtt(e, "binary", version=4)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        pytest.param({"version": 3}, "protocol version", id="version"),
        pytest.param({"mode": "batched"}, "content mode", id="mode"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        to_mqtt(CloudEvent(BASE), **kwargs)


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/cloudevents+json", id="plain"),
        pytest.param("application/cloudevents+json; charset=utf-8", id="parameter"),
        pytest.param("APPLICATION/CloudEvents+Json", id="case"),
    ],
)
def test_structured_by_content_type_even_with_properties(content_type: str) -> None:
    payload = orjson.dumps({**BASE, "id": "from-payload"})
    e = from_mqtt(payload, content_type, (*PROPERTIES[:1], ("id", "from-properties")))
    assert e.id == "from-payload"


def test_spec_example_repeating_datacontenttype_as_user_property() -> None:
    # 3.1.4's example carries datacontenttype both ways; they agree.
    ct = "application/json; charset=utf-8"
    e = from_mqtt(b"{}", ct, (*PROPERTIES, ("datacontenttype", ct)))
    assert e.datacontenttype == ct


def test_datacontenttype_user_property_alone() -> None:
    e = from_mqtt(b"x", None, (*PROPERTIES, ("datacontenttype", "text/plain")))
    assert e.datacontenttype == "text/plain"


def test_application_properties_are_not_attributes() -> None:
    e = from_mqtt(b"", None, (*PROPERTIES, ("Content-Encoding", "gzip"), ("x_trace", "1")))
    assert e == CloudEvent(BASE)


def test_empty_payload_is_no_data() -> None:
    assert not from_mqtt(b"", "text/plain", PROPERTIES).has_data


def test_is_cloudevent_mqtt() -> None:
    assert is_cloudevent_mqtt("application/cloudevents+json")
    assert is_cloudevent_mqtt(None, PROPERTIES)
    assert not is_cloudevent_mqtt("application/json", (("id", "1"),))


@pytest.mark.parametrize(
    ("payload", "content_type", "properties", "attribute", "problem"),
    [
        pytest.param(
            b"{}",
            "application/json",
            (),
            "specversion",
            "user property missing",
            id="not-a-cloudevent",
        ),
        pytest.param(
            b"{}", None, (*PROPERTIES, ("id", "2")), "id", "more than once", id="duplicate-property"
        ),
        pytest.param(
            b"",
            "text/plain",
            (*PROPERTIES, ("datacontenttype", "text/html")),
            "datacontenttype",
            "contradicts",
            id="contradicting-content-type",
        ),
        pytest.param(
            b"",
            "application/cloudevents+avro",
            (),
            "content type",
            "unsupported event format",
            id="unsupported-format",
        ),
        pytest.param(
            b"{",
            "application/cloudevents+json",
            (),
            "body",
            "not valid JSON",
            id="bad-structured-payload",
        ),
        pytest.param(
            b"", None, (*PROPERTIES, ("time", "now")), "time", "RFC 3339", id="bad-attribute"
        ),
        pytest.param(
            b"", None, (*PROPERTIES, ("x" * 21, "v")), "x" * 21, "1 to 20", id="name-too-long"
        ),
    ],
)
def test_invalid_messages(
    payload: bytes, content_type: str | None, properties: Any, attribute: str, problem: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        from_mqtt(payload, content_type, properties)
    assert info.value.attribute == attribute and problem in info.value.reason


def test_decoding_needs_a_known_protocol_version() -> None:
    with pytest.raises(ValueError, match="protocol version"):
        from_mqtt(b"{}", version=3)


def test_mqtt311_garbage() -> None:
    with pytest.raises(InvalidEvent, match=r"^body: "):
        from_mqtt(b"\x00", version=4)
