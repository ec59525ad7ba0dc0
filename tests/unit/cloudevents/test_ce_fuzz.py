"""Fuzz: garbage into every decoder only ever raises InvalidEvent.

Inputs are arbitrary bytes, header names and values (surrogate-escaped bytes
included, as servers hand them over), user properties and Kafka headers, and
also near-valid documents (valid events with random members mixed in), which
get past the first checks. Whatever decodes must encode again.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from headwater.cloudevents import (
    CloudEvent,
    InvalidEvent,
    from_http,
    from_json,
    from_json_batch,
    from_kafka,
    from_mqtt,
    from_nats,
    is_cloudevent,
    is_cloudevent_mqtt,
    to_http,
    to_json,
)
from tests.unit.cloudevents.ce_strategies import events

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ATTRIBUTE_NAMES = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
    "schemaurl",
    "datacontentencoding",
    "ext",
    "Ext",
    "x" * 21,
    "",
]
CONTENT_TYPES = st.sampled_from(
    [
        "application/cloudevents+json",
        "application/cloudevents-batch+json",
        "APPLICATION/CLOUDEVENTS+JSON; charset=utf-8",
        "application/cloudevents+avro",
        "application/json",
        "text/plain",
        "",
        ";",
        "application/cloudevents",
    ]
) | st.text(max_size=40)
# Servers decode header bytes with surrogateescape: lone surrogates can arrive.
HEADER_TEXT = st.lists(
    st.characters(codec=None)
    | st.sampled_from(["%", '"', "\\", "\udcc0", "\ud800", "%C0%A0", "%41", "%e2%82%ac", "%"]),
    max_size=12,
).map("".join)
HEADER_NAMES = (
    st.sampled_from(ATTRIBUTE_NAMES).map(lambda name: "ce-" + name)
    | st.just("content-type")
    | st.text(max_size=12)
)
JSON_ATTRIBUTE_VALUES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.none(), max_size=2)
)


@st.composite
def near_valid_documents(draw: st.DrawFn) -> bytes:
    """A valid event's JSON with members changed, added or removed at random."""
    obj: Any = orjson.loads(to_json(draw(events())))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(ATTRIBUTE_NAMES) | st.text(max_size=8))
        if draw(st.booleans()):
            obj[name] = draw(JSON_ATTRIBUTE_VALUES)
        else:
            obj.pop(name, None)
    if draw(st.booleans()):
        obj = [obj, draw(st.just(obj) | JSON_ATTRIBUTE_VALUES)]
    # The standard library writes what orjson refuses to: integers of any
    # size, NaN, lone surrogates as \\u escapes.
    return json.dumps(obj).encode()


BODIES = st.binary(max_size=200) | near_valid_documents()


def survives(decode: Any, *args: Any, **kwargs: Any) -> None:
    try:
        decoded = decode(*args, **kwargs)
    except InvalidEvent as exc:
        event(f"rejected: {exc.attribute.partition('[')[0][:16]}")
        return
    event("decoded")
    for one in decoded if isinstance(decoded, list) else [decoded]:
        assert isinstance(one, CloudEvent)
        to_json(one)  # what was accepted is valid: it encodes again
        try:
            to_http(one, "binary")
        except InvalidEvent as exc:
            assert exc.attribute == "datacontenttype"  # an event-format type: no binary mode


@FUZZ
@given(BODIES)
def test_json(body: bytes) -> None:
    survives(from_json, body)
    survives(from_json_batch, body)
    survives(from_json, body.decode("utf-8", "surrogateescape"))


@FUZZ
@given(st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=8), CONTENT_TYPES, BODIES)
def test_http(headers: dict[str, str], content_type: str, body: bytes) -> None:
    survives(from_http, headers, body)
    survives(from_http, {**headers, "Content-Type": content_type}, body)
    survives(from_http, [*headers.items(), ("content-type", content_type)], body)
    assert is_cloudevent(headers) in (True, False)


@st.composite
def near_valid_headers(draw: st.DrawFn) -> dict[str, str]:
    """A valid binary-mode message's headers with values and names changed at random."""
    event = draw(events())
    try:
        headers, _ = to_http(event, "binary")
    except InvalidEvent:
        headers = {}
    for _ in range(draw(st.integers(1, 3))):
        headers[draw(HEADER_NAMES | st.sampled_from(sorted(headers) or ["ce-id"]))] = draw(
            HEADER_TEXT
        )
    return headers


@FUZZ
@given(near_valid_headers(), BODIES)
def test_http_near_valid_binary(headers: dict[str, str], body: bytes) -> None:
    survives(from_http, headers, body)


@FUZZ
@given(
    st.lists(
        st.tuples(st.sampled_from(ATTRIBUTE_NAMES) | st.text(max_size=8), HEADER_TEXT), max_size=8
    ),
    st.none() | CONTENT_TYPES,
    BODIES,
    st.sampled_from([4, 5]),
)
def test_mqtt(
    properties: list[tuple[str, str]], content_type: str | None, payload: bytes, version: int
) -> None:
    survives(from_mqtt, payload, content_type, properties, version=version)
    assert is_cloudevent_mqtt(content_type, properties) in (True, False)


@FUZZ
@given(st.none() | st.dictionaries(HEADER_NAMES, HEADER_TEXT, max_size=8), BODIES)
def test_nats(headers: dict[str, str] | None, payload: bytes) -> None:
    survives(from_nats, headers, payload)


@FUZZ
@given(
    st.lists(
        st.tuples(
            HEADER_NAMES.map(lambda n: n.replace("ce-", "ce_")), st.none() | st.binary(max_size=20)
        ),
        max_size=8,
    ),
    st.none() | BODIES,
    st.none() | st.binary(max_size=8),
)
def test_kafka(
    headers: list[tuple[str, bytes | None]], value: bytes | None, key: bytes | None
) -> None:
    survives(from_kafka, headers, value, key)
