from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent
from headwater.sinks.lineprotocol import (
    LineProtocolError,
    PointMapping,
    escape_field_key,
    escape_key,
    escape_measurement,
    escape_string,
    escape_tag_value,
    parse_rfc3339_ns,
)

BASE = {
    "specversion": "1.0",
    "id": "1",
    "source": "/gw",
    "type": "dev.headwater.telemetry",
    "subject": "s1",
    "time": "2026-11-28T12:00:00.5Z",
    "datacontenttype": "application/json",
}
T_NS = 1795867200_500000000  # 2026-11-28T12:00:00.5Z


def event(data: object = b'{"t": 21.5}', **attrs: object) -> CloudEvent:
    attributes = {**BASE, **attrs}
    return CloudEvent({k: v for k, v in attributes.items() if v is not None}, data)


@pytest.mark.parametrize(
    ("function", "raw", "escaped"),
    [
        pytest.param(escape_measurement, "cpu load,x", "cpu\\ load\\,x", id="measurement"),
        pytest.param(escape_measurement, "a=b", "a=b", id="measurement-keeps-equals"),
        pytest.param(escape_key, "a b,c=d", "a\\ b\\,c\\=d", id="key"),
        pytest.param(escape_key, 'q"uote', 'q"uote', id="key-keeps-quote"),
        pytest.param(escape_string, 'say "hi" \\o/', '"say \\"hi\\" \\\\o/"', id="string"),
        pytest.param(escape_string, "a,b c=d\nx", '"a,b c=d\nx"', id="string-keeps-rest"),
        pytest.param(escape_tag_value, "x\\=y z", "x\\\\=y\\ z", id="tag-value-backslash-equals"),
        pytest.param(escape_field_key, 'k\\"x', 'k\\\\"x', id="field-key-backslash-quote"),
        pytest.param(escape_measurement, "a\\b", "a\\b", id="lone-backslash-kept"),
    ],
)
def test_escaping_follows_the_line_protocol_reference(function, raw, escaped) -> None:  # type: ignore[no-untyped-def]
    assert function(raw) == escaped


@pytest.mark.parametrize(
    "text",
    ["a\nb", "a\rb", "trailing\\", "", "a\\ b", "a\\,b", "a\\=b", 'a\\"b', "#temp"],
    ids=["newline", "cr", "trailing-backslash", "empty", "\\ ", "\\,", "\\=", '\\"', "comment"],
)
def test_unwritable_measurements_are_refused(text: str) -> None:
    with pytest.raises(LineProtocolError):
        escape_measurement(text)


@pytest.mark.parametrize("text", ["a\\ b", "a\\,b", "a\\=b", "end\\"])
def test_unwritable_keys_are_refused(text: str) -> None:
    with pytest.raises(LineProtocolError, match="backslash"):
        escape_key(text)
    with pytest.raises(LineProtocolError, match="backslash"):
        escape_field_key(text)


def test_default_mapping_type_tags_all_scalars_event_time() -> None:
    mapping = PointMapping.compile()
    data = (
        b'{"t": 21.5, "ok": true, "n": 3, "name": "a \\"b\\"", "deep": {"x": {"y": 1.5}}, "l": [1]}'
    )
    line = mapping.line(event(data), received_ns=0)
    assert line == (
        "dev.headwater.telemetry,source=/gw,subject=s1 "
        f't=21.5,ok=true,n=3.0,name="a \\"b\\"",deep_x_y=1.5 {T_NS}'
    )


def test_configured_measurement_tags_fields_integers_precision() -> None:
    mapping = PointMapping.compile(
        measurement="climate room",
        tags=["zone", "subject", "missing"],
        fields={"temp c": "reading.celsius", "first": "values[0]", "peak": "max(values)"},
        integers=True,
        precision="ms",
    )
    data = b'{"reading": {"celsius": 21}, "values": [3, 9, 4]}'
    line = mapping.line(event(data, zone="north,1"), received_ns=0)
    assert (
        line
        == f"climate\\ room,subject=s1,zone=north\\,1 temp\\ c=21i,first=3i,peak=9i {T_NS // 10**6}"
    )


def test_absent_fields_are_left_out_and_no_field_at_all_is_an_error() -> None:
    mapping = PointMapping.compile(measurement="m", tags=[], fields={"a": "a", "b": "b"})
    assert mapping.line(event(b'{"a": 1.5}'), 0) == f"m a=1.5 {T_NS}"
    with pytest.raises(LineProtocolError, match="no field"):
        mapping.line(event(b'{"c": 1}'), 0)


def test_receive_time_when_the_event_has_none() -> None:
    mapping = PointMapping.compile(measurement="m", tags=[], precision="s")
    assert mapping.line(event(time=None), received_ns=7_900_000_000) == "m t=21.5 7"


def test_scalar_payload_is_the_value_field_and_non_json_is_refused() -> None:
    mapping = PointMapping.compile(measurement="m", tags=[])
    assert mapping.line(event(b"42.5"), 0) == f"m value=42.5 {T_NS}"
    with pytest.raises(LineProtocolError, match="JSON"):
        mapping.line(event(b"\x00\x01", datacontenttype="application/octet-stream"), 0)
    with pytest.raises(LineProtocolError, match="JSON"):
        mapping.line(event(b"{not json"), 0)


def test_decoded_data_and_bool_int_extensions_as_tags() -> None:
    mapping = PointMapping.compile(measurement="m", tags=["flag", "count"])
    line = mapping.line(event({"t": 1.25}, flag=True, count=7), 0)
    assert line == f"m,count=7,flag=true t=1.25 {T_NS}"


def test_tag_values_that_cannot_be_written_fail_the_event() -> None:
    mapping = PointMapping.compile(measurement="m", tags=["subject"])
    with pytest.raises(LineProtocolError, match="backslash"):
        mapping.line(event(subject="dir\\"), 0)


def test_time_is_reserved() -> None:
    for options in ({"tags": ["time"]}, {"fields": {"time": "t"}}):
        with pytest.raises(ValueError, match="reserved"):
            PointMapping.compile(**options)  # type: ignore[arg-type]
    line = PointMapping.compile(measurement="m", tags=[]).line(event({"time": 5, "t": 1.5}), 0)
    assert line == f"m t=1.5 {T_NS}"


def test_bad_jmespath_is_refused_at_compile_time() -> None:
    with pytest.raises(ValueError, match="JMESPath"):
        PointMapping.compile(fields={"a": "values[0"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1970-01-01T00:00:00Z", 0, id="epoch"),
        pytest.param("1970-01-01T00:00:01.123456789Z", 1_123_456_789, id="nanos"),
        pytest.param("1970-01-01T00:00:01.123456789999Z", 1_123_456_789, id="beyond-nanos"),
        pytest.param("1970-01-01T01:00:00+01:00", 0, id="positive-offset"),
        pytest.param("1969-12-31T23:00:00-01:00", 0, id="negative-offset"),
        pytest.param("2026-11-28t12:00:00.5z", T_NS, id="lower-case"),
    ],
)
def test_rfc3339_to_nanoseconds(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected
    assert parse_rfc3339_ns(text) == expected  # the memoised path agrees


@given(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(-12 * 60, 14 * 60),
)
def test_rfc3339_agrees_with_datetime(moment: datetime, offset_minutes: int) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    whole = (aware.replace(microsecond=0) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        seconds=1
    )
    text = aware.isoformat()
    assert parse_rfc3339_ns(text) == whole * 10**9 + aware.microsecond * 1000
    utc = aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert parse_rfc3339_ns(utc) == parse_rfc3339_ns(text)


@pytest.mark.parametrize(
    "text", ["2026-11-28", "2026-11-28T12:00:00", "yesterday", "2026-11-28T12:00:00.Z"]
)
def test_rfc3339_garbage_is_refused(text: str) -> None:
    with pytest.raises(LineProtocolError):
        parse_rfc3339_ns(text)


def test_non_finite_floats_cannot_be_written() -> None:
    mapping = PointMapping.compile(measurement="m", tags=[], fields={"v": "v"})
    with pytest.raises(LineProtocolError, match="NaN"):
        mapping.line(event({"v": float("nan")}), 0)
