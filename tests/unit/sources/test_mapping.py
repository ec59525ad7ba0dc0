"""The MQTT -> CloudEvent mapping: patterns, templates, content types, lifts, passthrough."""

from __future__ import annotations

import jmespath
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent, InvalidEvent
from headwater.cloudevents.mqtt import MQTT_3_1_1, to_mqtt
from headwater.log._codec import decode, encode
from headwater.sources.mapping import (
    _JSON_FIRST_BYTES,
    DEFAULT_TYPE,
    IdSequence,
    Inbound,
    InvalidMapping,
    Mapping,
    TopicPattern,
    Unmatched,
    _search,
    map_publish,
    to_cloudevent,
)

NOW = 1_700_000_000.0


def event(mapping: Mapping, topic: str, payload: bytes, **kw: object) -> CloudEvent:
    return to_cloudevent(mapping, Inbound(topic, payload, **kw), "id-1", NOW)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        pytest.param("sensors/{device}/{metric}", "sensors/a/t", {"device": "a", "metric": "t"}),
        pytest.param("sensors/{device}/{metric}", "sensors/a", None, id="too-short"),
        pytest.param("sensors/{device}/{metric}", "sensors/a/t/x", None, id="too-long"),
        pytest.param("sensors/{device}/#", "sensors/a/t/x", {"device": "a"}, id="rest"),
        pytest.param("sensors/{device}", "plant/a", None, id="literal-differs"),
        pytest.param("sensors/{device}", "sensors/", {"device": ""}, id="empty-level"),
    ],
)
def test_topic_pattern_match(pattern: str, topic: str, expected: dict[str, str] | None) -> None:
    assert TopicPattern.parse(pattern).match(topic) == expected


def test_topic_pattern_filter() -> None:
    assert TopicPattern.parse("sensors/{device}/{metric}").filter == "sensors/+/+"
    assert TopicPattern.parse("a/{b}/#").filter == "a/+/#"
    assert TopicPattern.parse("#").filter == "#"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({"topic_pattern": "a/{id}"}, "cannot be an extension", id="reserved-capture"),
        pytest.param({"topic_pattern": "a/{x}/{x}"}, "appears twice", id="twice"),
        pytest.param({"topic_pattern": "a/+/b"}, "must be a literal", id="wildcard"),
        pytest.param({"topic_pattern": "a/x{y}"}, "must be a literal", id="partial"),
        pytest.param({"type": "t.{nope}"}, "unknown variable {nope}", id="unknown-var"),
        pytest.param({"type": "t.{"}, "type template", id="bad-brace"),
        pytest.param({"extensions": {"Temp": "t"}}, "lower-case", id="ext-case"),
        pytest.param({"extensions": {"type": "t"}}, "core attribute", id="ext-core"),
        pytest.param({"extensions": {"t": "a[["}}, "invalid JMESPath", id="jmespath"),
        pytest.param(
            {"topic_pattern": "s/{device}", "extensions": {"device": "d"}},
            "also a topic capture",
            id="ext-capture",
        ),
    ],
)
def test_invalid_mappings_are_rejected_with_a_reason(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidMapping, match=message.replace("{", r"\{").replace("[", r"\[")):
        Mapping.compile(**settings)  # type: ignore[arg-type]


def test_defaults() -> None:
    e = event(Mapping.compile(), "a/b", b'{"x": 1}', qos=1, client_id="dev", listener="h:1883")
    assert dict(e.attributes) == {
        "specversion": "1.0",
        "id": "id-1",
        "source": "mqtt://h:1883/a/b",
        "type": DEFAULT_TYPE,
        "subject": "a/b",
        "time": "2023-11-14T22:13:20.000000Z",
        "datacontenttype": "application/json",
        "mqtttopic": "a/b",
        "mqttqos": 1,
        "mqttretain": False,
    }
    assert e.data_bytes() == b'{"x": 1}'


def test_templates_captures_and_lifts() -> None:
    mapping = Mapping.compile(
        topic_pattern="sensors/{device}/{metric}",
        type="dev.headwater.{metric}",
        source="/greenhouse/{device}",
        subject="{device}",
        extensions={
            "temperature": "temperature",
            "humidity": "hum",
            "ok": "status.ok",
            "big": "big",
            "tags": "tags",
            "missing": "nope",
        },
        time="ts",
    )
    payload = orjson.dumps(
        {
            "temperature": 21.0,
            "hum": 40.5,
            "status": {"ok": True},
            "big": 2**40,
            "tags": ["a"],
            "ts": "2024-01-01T00:00:00Z",
        }
    )
    e = event(mapping, "sensors/s1/climate", payload, retain=True)
    assert e.type == "dev.headwater.climate"
    assert e.source == "/greenhouse/s1"
    assert e.subject == "s1"
    assert e["device"] == "s1" and e["metric"] == "climate"
    assert e["temperature"] == 21  # integral: an Integer
    assert e["humidity"] == "40.5"  # CloudEvents has no float: the JSON text
    assert e["ok"] is True
    assert e["big"] == str(2**40)  # outside 32 bits
    assert e["tags"] == '["a"]'
    assert "missing" not in e
    assert e["mqttretain"] is True
    assert e.time == "2024-01-01T00:00:00Z"


def test_unmatched_topic() -> None:
    with pytest.raises(Unmatched):
        event(Mapping.compile(topic_pattern="sensors/{d}"), "other/x", b"")


@pytest.mark.parametrize(
    ("payload", "content_type", "expected"),
    [
        pytest.param(b'{"a": 1}', None, "application/json", id="sniffed-json"),
        pytest.param(b"42", None, "application/json", id="json-number"),
        pytest.param(b"\xff\xfe\x00", None, "application/octet-stream", id="not-utf8"),
        pytest.param(b"hello", None, "application/octet-stream", id="text"),
        pytest.param(b"hello", "text/plain", "text/plain", id="mqtt5-content-type"),
    ],
)
def test_datacontenttype(payload: bytes, content_type: str | None, expected: str) -> None:
    e = event(Mapping.compile(), "t", payload, content_type=content_type)
    assert e.datacontenttype == expected
    assert e.data_bytes() == payload


def test_declared_json_that_is_not_lifts_nothing() -> None:
    mapping = Mapping.compile(extensions={"t": "t"})
    e = event(mapping, "t", b"{not json", content_type="application/json")
    assert "t" not in e
    assert e.data_bytes() == b"{not json"


def test_empty_payload_has_no_data() -> None:
    e = event(Mapping.compile(), "t", b"")
    assert not e.has_data
    assert e.datacontenttype == "application/octet-stream"


CARRIED = CloudEvent(
    {"specversion": "1.0", "id": "dev-1", "source": "/d", "type": "t.x", "subject": "s"},
    b'{"v": 1}',
)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_carried_cloudevents_pass_through(mode: str) -> None:
    message = to_mqtt(CARRIED, mode)  # type: ignore[arg-type]
    e = event(
        Mapping.compile(type="ignored", topic_pattern="x/{y}"),
        "anything",
        message.payload,
        content_type=message.content_type,
        user_properties=message.user_properties,
        qos=2,
    )
    assert e.id == "dev-1" and e.type == "t.x" and e.subject == "s"
    assert e["mqttqos"] == 2 and e["mqtttopic"] == "anything"
    assert orjson.loads(e.data_bytes()) == {"v": 1}


def test_passthrough_off_maps_the_message() -> None:
    message = to_mqtt(CARRIED, "binary")
    e = event(
        Mapping.compile(passthrough=False),
        "t",
        message.payload,
        content_type=message.content_type,
        user_properties=message.user_properties,
    )
    assert e.id == "id-1" and e.type == DEFAULT_TYPE


def test_mqtt311_structured_json_is_not_taken_as_an_event() -> None:
    # 3.1.1 has no content type: a structured event is just JSON telemetry.
    e = event(Mapping.compile(), "t", to_mqtt(CARRIED, version=MQTT_3_1_1).payload, version=4)
    assert e.type == DEFAULT_TYPE
    assert e.datacontenttype == "application/json"


def test_malformed_carried_event_raises_invalid_event() -> None:
    with pytest.raises(InvalidEvent):
        event(Mapping.compile(), "t", b"{}", content_type="application/cloudevents+json")


def test_ids_are_unique_across_instances() -> None:
    a, b = IdSequence(), IdSequence()
    ids = {a.next() for _ in range(100)} | {b.next() for _ in range(100)}
    assert len(ids) == 200


@given(st.binary(max_size=200), st.text(alphabet="abc/", min_size=1, max_size=20))
def test_any_payload_maps_or_raises_a_defined_error(payload: bytes, topic: str) -> None:
    mapping = Mapping.compile(topic_pattern="a/{b}", extensions={"x": "x"})
    try:
        e = event(mapping, topic, payload)
    except Unmatched:
        return
    assert e.data_bytes() == payload


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"temperature": 21.5}, id="present"),
        pytest.param({"humidity": 40}, id="missing"),
        pytest.param({"temperature": None}, id="null"),
        pytest.param({"temperature": {"c": 1}}, id="object"),
        pytest.param([{"temperature": 1}], id="array"),
        pytest.param(42, id="number"),
        pytest.param("temperature", id="string"),
    ],
)
def test_top_level_field_shortcut_agrees_with_jmespath(document: object) -> None:
    expression = jmespath.compile("temperature")
    assert _search(expression, document) == expression.search(document)


@given(st.binary(min_size=1, max_size=40))
def test_a_payload_skipped_as_not_json_could_not_have_parsed(payload: bytes) -> None:
    # The mapping parses only payloads whose first byte can begin a JSON text.
    if payload[0] not in _JSON_FIRST_BYTES:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(payload)


@pytest.mark.parametrize("first", sorted(set(range(256)) - set(b'{["-0123456789tfn \t\r\n')))
def test_no_byte_outside_the_json_first_bytes_begins_a_json_text(first: int) -> None:
    for rest in (b"", b"1", b'"a"', b"{}", b"rue", b"alse", b"ull", b"aN", b"nfinity"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bytes([first]) + rest)


RECORD_MAPPINGS = {
    "defaults": Mapping.compile(),
    "pattern": Mapping.compile(topic_pattern="s/{device}/{metric}", type="t.{metric}"),
    "static-stamped": Mapping.compile(static={"site": 'a"b\\c'}, subject=None).stamping(
        {"knativebrokerttl": 255}
    ),
    "lifts": Mapping.compile(extensions={"temp": "temp"}),
    "per-client": Mapping.compile(source="/c/{clientid}"),  # the subject: any topic
    "device-time": Mapping.compile(time="ts"),  # raises for a payload's bad time
}


@given(
    st.sampled_from(sorted(RECORD_MAPPINGS)),
    st.sampled_from(["s/d1/temp", 's/ü/"x"', "a", "s/d/t/x"]),
    st.one_of(
        st.binary(max_size=60),
        st.sampled_from([b'{"temp": 21.5}', b"[1]", b"", b'{"ts": "noon"}', b'{"ts": 1e9}']),
    ),
    st.integers(0, 2),
    st.booleans(),
    st.sampled_from([None, "text/plain", "text", "application/json"]),
    st.sampled_from([4, 5]),
)
def test_a_record_the_mapping_encodes_is_the_one_the_log_would_write(
    name: str,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    content_type: str | None,
    version: int,
) -> None:
    records: list[bytes | None] = []
    try:
        e = map_publish(
            RECORD_MAPPINGS[name],
            topic,
            payload,
            qos,
            retain,
            content_type,
            (),
            "client-1",
            "127.0.0.1:1883",
            version,
            "f00d-7",
            NOW,
            records,
        )
    except (Unmatched, InvalidEvent):
        assert records == []  # nothing for a message that is no event
        return
    (record,) = records
    if record is not None:
        assert record == encode(e)
        assert decode(record) == e


def test_the_usual_shape_is_encoded_by_the_mapping_and_a_replaced_stamp_is_not() -> None:
    stamped = Mapping.compile(topic_pattern="s/{knativebrokerttl}").stamping(
        {"knativebrokerttl": 255}
    )
    records: list[bytes | None] = []
    for topic in ("s/3", "s/3"):  # the first renders the topic's entry, the second reuses it
        e = map_publish(
            stamped, topic, b"\x00", 1, False, None, (), "c", "l", 4, "i-1", NOW, records
        )
        assert e["knativebrokerttl"] == "3"  # the capture wins, as it always did
    assert records == [None, None]  # so the records cannot promise the stamped TTL
    plain = Mapping.compile(topic_pattern="s/{device}").stamping({"knativebrokerttl": 255})
    records = []
    e = map_publish(plain, "s/3", b"\x00", 1, False, None, (), "c", "l", 4, "i-1", NOW, records)
    assert records == [encode(e)]


def test_ids_taken_together_continue_the_sequence() -> None:
    ids = IdSequence("p")
    assert [ids.next(), *ids.take(3), ids.next()] == ["p-1", "p-2", "p-3", "p-4", "p-5"]
    assert ids.take(0) == []


def test_a_message_that_fails_to_map_leaves_no_record() -> None:
    records: list[bytes | None] = []
    mapping = RECORD_MAPPINGS["device-time"]
    with pytest.raises(InvalidEvent):
        map_publish(
            mapping, "t", b'{"ts": "noon"}', 1, False, None, (), "c", "l", 4, "i", NOW, records
        )
    assert records == []  # the next event's record stays in line with it


@pytest.mark.parametrize("ts", ["1.7e12", "1.7e18", "1e20", "-1e20"])
def test_a_device_time_no_datetime_can_hold_is_an_invalid_event(ts: str) -> None:
    """Milliseconds or nanoseconds since the epoch (Go's UnixNano) are no epoch seconds:
    datetime refuses them with ValueError, OSError or OverflowError by size, and each
    is the device's invalid event (PUBACK 0x99), never an error of the source."""
    with pytest.raises(InvalidEvent, match="time"):
        event(Mapping.compile(time="ts"), "s/d1/temp", f'{{"ts": {ts}}}'.encode())
