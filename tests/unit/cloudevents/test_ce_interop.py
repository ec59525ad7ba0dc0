"""Interop with the official Python SDK (``cloudevents`` 2.x): HTTP and Kafka, both ways.

Its encodings decode with ours to the same event, and ours decode with it,
over generated events in the domain where the SDK follows the spec: 1.0
events with a ``time``, String and Integer extensions, JSON data typed
``application/json``, binary data, or none. The SDK's current API
(``cloudevents.core``) is exercised property-based; the legacy one
(``cloudevents.v1``) on a few fixed events, where its output is spec-shaped.

SDK deviations found (cloudevents 2.2.0), which keep the domain that narrow:

* ``core`` ``http.from_http`` / ``kafka.from_kafka`` pick binary mode when any
  ``ce-`` / ``ce_`` header is present, not by Content-Type (HTTP 3, Kafka 3):
  a structured message with informational ce- headers fails to decode.
* ``core`` CloudEvent adds ``time`` (now) and ``id`` (a UUID) when absent, also
  on decode: the SDK rewrites events in transit. It accepts ``time`` only as a
  ``datetime``, not as the RFC 3339 string spec.md says MUST be settable.
* ``core`` renders Boolean extensions as ``True``/``False`` and Binary ones as
  ``b'...'`` (``str()``), not the canonical ``true``/``false`` and Base64.
* ``core`` decodes percent-encoding with ``unquote``: invalid UTF-8 (``%C0%A0``)
  becomes U+FFFD instead of an error; quoted-strings are not unescaped.
* ``core`` writes a String payload under ``application/json`` as raw text (not
  a JSON string), writes no Content-Type for JSON data without
  ``datacontenttype`` (json-format.md 3.1.2 SHOULD), reads binary data that
  happens to be UTF-8 as ``str``, reads ``"data": null`` as no data.
* ``core`` validates little: control characters, URI-references, media types
  and the 20-character name limit are not checked.
* ``core`` Kafka maps ``partitionkey`` to the record key by default (3.1 says
  opt-in) and turns a received key into a ``partitionkey`` attribute.
* ``v1`` (legacy) does no percent-encoding or -decoding at all, passes
  non-string header values through, writes ``time`` with ``+00:00``, adds
  ``time`` and ``id``, and its Kafka binding fails on Integer extensions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import http as sdk_http
from cloudevents.core.bindings import kafka as sdk_kafka
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from cloudevents.v1 import conversion as legacy
from cloudevents.v1.http import CloudEvent as LegacyEvent
from cloudevents.v1.http import from_http as legacy_from_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.cloudevents import NO_DATA, CloudEvent, from_http, from_kafka, to_http, to_kafka
from headwater.cloudevents._types import canonical_string, format_timestamp
from tests.unit.cloudevents.ce_strategies import (
    extension_names,
    int32,
    json_values,
    nonempty_strings,
    strings,
    uri_references,
)

INTEROP = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def shared_events(draw: st.DrawFn) -> tuple[CloudEvent, SdkEvent]:
    """The same event built on both sides from the same values."""
    moment = draw(st.datetimes(timezones=st.just(UTC)))
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": draw(nonempty_strings),
        "source": draw(uri_references),
        "type": draw(nonempty_strings),
        "time": moment,
    }
    if draw(st.booleans()):
        attributes["subject"] = draw(nonempty_strings)
    attributes.update(draw(st.dictionaries(extension_names, strings | int32, max_size=3)))
    kind = draw(st.sampled_from(["json", "binary", "none"]))
    data: object = NO_DATA
    if kind == "json":
        attributes["datacontenttype"] = "application/json"
        data = draw(st.dictionaries(strings, json_values, max_size=4))
    elif kind == "binary":
        attributes["datacontenttype"] = "application/octet-stream"
        data = draw(st.binary(min_size=1, max_size=32))
    ours = CloudEvent(attributes, data)
    theirs = SdkEvent(dict(attributes), None if data is NO_DATA else data)  # type: ignore[arg-type]
    return ours, theirs


def seen_by_sdk(theirs: Any) -> dict[str, str]:
    """The SDK event's attributes as canonical strings (its time rendered as RFC 3339)."""
    return {
        name: format_timestamp(name, value) if isinstance(value, datetime) else str(value)
        for name, value in theirs.get_attributes().items()
    }


def assert_same(theirs: Any, ours: CloudEvent) -> None:
    assert seen_by_sdk(theirs) == {n: canonical_string(v) for n, v in ours.attributes.items()}
    data = theirs.get_data()
    if not ours.has_data:
        assert data is None
    elif type(ours.data) is bytes and type(data) is str:
        assert data.encode() == ours.data  # the SDK reads UTF-8 binary data as text
    else:
        assert data == ours.data


# -- HTTP -----------------------------------------------------------------------------


@INTEROP
@given(shared_events(), st.sampled_from(["binary", "structured"]))
def test_sdk_http_decodes_with_ours(pair: tuple[CloudEvent, SdkEvent], mode: str) -> None:
    ours, theirs = pair
    encode = sdk_http.to_binary_event if mode == "binary" else sdk_http.to_structured_event
    message = encode(theirs)
    assert from_http(message.headers, message.body) == ours


@INTEROP
@given(shared_events(), st.sampled_from(["binary", "structured"]))
def test_ours_http_decodes_with_sdk(pair: tuple[CloudEvent, SdkEvent], mode: Any) -> None:
    ours, _ = pair
    headers, body = to_http(ours, mode)
    assert_same(sdk_http.from_http_event(sdk_http.HTTPMessage(headers, body)), ours)


# -- Kafka ----------------------------------------------------------------------------


@INTEROP
@given(shared_events(), st.sampled_from(["binary", "structured"]))
def test_sdk_kafka_decodes_with_ours(pair: tuple[CloudEvent, SdkEvent], mode: str) -> None:
    ours, theirs = pair
    encode = sdk_kafka.to_binary_event if mode == "binary" else sdk_kafka.to_structured_event
    message = encode(theirs)
    assert message.key is None  # no partitionkey in this domain
    assert from_kafka(list(message.headers.items()), message.value) == ours


@INTEROP
@given(shared_events(), st.sampled_from(["binary", "structured"]))
def test_ours_kafka_decodes_with_sdk(pair: tuple[CloudEvent, SdkEvent], mode: Any) -> None:
    ours, _ = pair
    record = to_kafka(ours, mode)
    message = sdk_kafka.KafkaMessage(dict(record.headers), record.key, record.value or b"")
    assert_same(sdk_kafka.from_kafka_event(message), ours)


def test_partitionkey_key_both_ways() -> None:
    attributes = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "time": datetime(2020, 1, 1, tzinfo=UTC),
        "partitionkey": "device-7",
    }
    message = sdk_kafka.to_binary_event(SdkEvent(dict(attributes)))
    assert message.key == "device-7"
    assert from_kafka(list(message.headers.items()), message.value) == CloudEvent(attributes)
    record = to_kafka(CloudEvent(attributes), key_from_partitionkey=True)
    assert record.key == b"device-7"
    theirs = sdk_kafka.from_kafka_event(
        sdk_kafka.KafkaMessage(dict(record.headers), b"device-7", b"")
    )
    assert theirs.get_extension("partitionkey") == "device-7"


# -- the SDK's deviations, pinned so that a fixed SDK shows up here -------------------


def test_sdk_picks_binary_mode_by_ce_headers() -> None:
    body = b'{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"2020-01-01T00:00:00Z"}'
    headers = {"content-type": "application/cloudevents+json", "ce-id": "informational"}
    assert from_http(headers, body) == CloudEvent(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/s",
            "type": "t",
            "time": "2020-01-01T00:00:00Z",
        }
    )
    with pytest.raises(Exception, match="source"):
        sdk_http.from_http_event(sdk_http.HTTPMessage(headers, body))


def test_sdk_adds_time_in_transit_and_we_do_not() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    assert "time" in sdk_http.from_http_event(sdk_http.HTTPMessage(headers, b"")).get_attributes()
    assert "time" not in from_http(headers, b"")  # type: ignore[operator]


def test_sdk_invents_a_missing_id_and_we_reject_the_event() -> None:
    headers = {"ce-specversion": "1.0", "ce-source": "/s", "ce-type": "t"}
    assert sdk_http.from_http_event(sdk_http.HTTPMessage(headers, b"")).get_id()
    with pytest.raises(ValueError, match=r"^id: is required"):
        from_http(headers, b"")


def test_sdk_refuses_time_as_an_rfc3339_string() -> None:
    attributes = {
        "specversion": "1.0",
        "id": "1",
        "source": "/s",
        "type": "t",
        "time": "2020-01-01T00:00:00Z",
    }
    with pytest.raises(Exception, match="time"):
        SdkEvent(dict(attributes))
    assert CloudEvent(attributes).time == "2020-01-01T00:00:00Z"


def test_sdk_accepts_overlong_utf8_and_we_reject_it() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "%C0%A0", "ce-source": "/s", "ce-type": "t"}
    assert sdk_http.from_http_event(sdk_http.HTTPMessage(headers, b"")).get_id() == "\ufffd\ufffd"
    with pytest.raises(ValueError, match="invalid UTF-8"):
        from_http(headers, b"")


# -- the legacy API (cloudevents.v1), on events where it writes what the spec says -----

LEGACY_CASES = [
    pytest.param(
        {
            "type": "t",
            "source": "/s",
            "id": "1",
            "time": "2020-01-01T00:00:00Z",
            "datacontenttype": "application/json",
            "ext": "value",
        },
        {"a": [1, 2]},
        id="json-data",
    ),
    pytest.param(
        {
            "type": "com.example",
            "source": "urn:x",
            "id": "abc",
            "time": "2020-01-01T00:00:00Z",
            "datacontenttype": "application/octet-stream",
            "subject": "s",
        },
        b"\x00\xff",
        id="binary-data",
    ),
    pytest.param(
        {"type": "t", "source": "/s", "id": "1", "time": "2020-01-01T00:00:00Z"}, None, id="no-data"
    ),
]


@pytest.mark.parametrize(("attributes", "data"), LEGACY_CASES)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_legacy_sdk_decodes_with_ours(attributes: dict[str, Any], data: Any, mode: str) -> None:
    event = LegacyEvent(dict(attributes), data)
    headers, body = legacy.to_binary(event) if mode == "binary" else legacy.to_structured(event)
    expected = CloudEvent({"specversion": "1.0", **attributes}, NO_DATA if data is None else data)
    assert from_http(headers, body) == expected


@pytest.mark.parametrize(("attributes", "data"), LEGACY_CASES)
@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_ours_decodes_with_legacy_sdk(attributes: dict[str, Any], data: Any, mode: Any) -> None:
    ours = CloudEvent({"specversion": "1.0", **attributes}, NO_DATA if data is None else data)
    theirs = legacy_from_http(*to_http(ours, mode))
    assert theirs.get_attributes() == ours.attributes
    assert theirs.get_data() == data
