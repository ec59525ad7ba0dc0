"""The type system (spec.md "Type System"): canonical strings, Base64, bounded memories."""

from __future__ import annotations

import calendar
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import CloudEvent, InvalidEvent, from_http, from_json, to_http
from headwater.cloudevents import _types as types


@pytest.mark.parametrize(
    ("value", "text"),
    [
        pytest.param("x", "x", id="string"),
        pytest.param(True, "true", id="true"),
        pytest.param(False, "false", id="false"),
        pytest.param(0, "0", id="zero"),
        pytest.param(-(2**31), "-2147483648", id="int32-min"),
        pytest.param(b"\xfb\xff", "+/8=", id="binary-standard-alphabet"),
        pytest.param(b"", "", id="empty-binary"),
    ],
)
def test_canonical_string(value: types.AttributeValue, text: str) -> None:
    assert types.canonical_string(value) == text


def test_canonical_string_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        types.canonical_string(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("-_8=", id="url-safe-alphabet"),
        pytest.param("QQ", id="missing-padding"),
        pytest.param("QQ==\n", id="trailing-newline"),
        pytest.param("é", id="non-ascii"),
    ],
)
def test_decode_base64_is_strict(text: str) -> None:
    with pytest.raises(InvalidEvent, match=r"^x: is not valid Base64"):
        types.decode_base64("x", text)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(datetime(2020, 1, 1), "time zone", id="naive"),
        pytest.param(
            datetime(2020, 1, 1, tzinfo=timezone(timedelta(seconds=30))),
            "whole minutes",
            id="sub-minute-offset",
        ),
    ],
)
def test_format_timestamp_rejects(value: datetime, problem: str) -> None:
    with pytest.raises(InvalidEvent, match=problem):
        types.format_timestamp("time", value)


def test_format_timestamp_writes_utc_as_z() -> None:
    assert types.format_timestamp("t", datetime(2020, 1, 1, tzinfo=UTC)) == "2020-01-01T00:00:00Z"


def test_remembered_values_are_bounded() -> None:
    base = {"specversion": "1.0", "id": "1", "type": "t"}
    for i in range(types.MAX_REMEMBERED_VALUES + 10):
        CloudEvent({**base, "source": f"/s/{i}"})
    assert len(types.V1_0.remembered) <= types.MAX_REMEMBERED_VALUES
    assert ("specversion", "1.0") in types.V1_0.remembered


def test_remembered_names_are_bounded() -> None:
    base = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}
    for i in range(types.MAX_REMEMBERED_NAMES + 10):
        CloudEvent({**base, f"x{i}": 1})
    assert len(types.KNOWN_NAMES) <= types.MAX_REMEMBERED_NAMES


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("datacontenttype", "a/b" + (";" + " " * 30) * 30 + "!", id="media-type"),
        pytest.param("source", "a:" * 50_000 + " ", id="uri-reference"),
        pytest.param("dataschema", "a" * 50_000 + "#" * 2, id="uri"),
        pytest.param("time", "2020-01-01T00:00:00." + "1" * 50_000 + "x", id="timestamp"),
    ],
)
def test_hostile_values_are_rejected_in_linear_time(name: str, value: str) -> None:
    # A pattern that backtracks exponentially would hang here (it did, for
    # media types with many empty parameters, before its quantifiers were
    # made possessive). Measured in this thread's CPU time, the work done, which
    # other processes loading the machine do not add to.
    start = time.thread_time()
    with pytest.raises(InvalidEvent, match=name):
        CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", name: value})
    assert time.thread_time() - start < 1.0


@pytest.mark.parametrize(
    ("attributes", "attribute"),
    [
        pytest.param({"source": "a b" * 10_000}, "source", id="long-value"),
        pytest.param({"x" * 10_000: 1}, "x" * 10_000, id="long-name"),
        pytest.param({"ext": 10**10_000}, "ext", id="int-too-long-to-print"),
    ],
)
def test_error_messages_stay_short(attributes: dict[str, object], attribute: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", **attributes})
    assert info.value.attribute == attribute
    assert len(str(info.value)) < 300


def test_invalid_event_pickles() -> None:
    error = pickle.loads(pickle.dumps(InvalidEvent("id", "is required")))
    assert (error.attribute, error.reason, str(error)) == ("id", "is required", "id: is required")


# -- timestamps: the fast path of the validation loop ---------------------------------
#
# The loop accepts a time at once when TIMESTAMP_BEFORE_29TH matches (days 01-28
# exist in every month) and leaves every other value to check_timestamp. Both
# routes must give exactly RFC 3339, whether an event is built or decoded.

TIME_BASE = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}


def constructed(text: str) -> CloudEvent:
    return CloudEvent({**TIME_BASE, "time": text})


def decoded_json(text: str) -> CloudEvent:
    return from_json(orjson.dumps({**TIME_BASE, "time": text}))


def decoded_structured_http(text: str) -> CloudEvent:
    body = orjson.dumps({**TIME_BASE, "time": text})
    decoded = from_http({"Content-Type": "application/cloudevents+json"}, body)
    assert isinstance(decoded, CloudEvent)
    return decoded


BUILDS = [
    pytest.param(constructed, id="constructed"),
    pytest.param(decoded_json, id="from-json"),
    pytest.param(decoded_structured_http, id="structured-http"),
]


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("year", [1900, 2000, 2023, 2024])
def test_every_day_of_the_year_is_checked_against_the_calendar(
    build: Callable[[str], CloudEvent], year: int
) -> None:
    for month in range(1, 13):
        last = calendar.monthrange(year, month)[1]
        for day in range(34):
            text = f"{year:04d}-{month:02d}-{day:02d}T12:00:00Z"
            if 1 <= day <= last:
                assert build(text)["time"] == text
            else:
                with pytest.raises(InvalidEvent) as info:
                    build(text)
                assert info.value.attribute == "time", text
                assert "RFC 3339" in info.value.reason, text


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("2018-00-05T17:31:00Z", id="month-00"),
        pytest.param("2018-04-5T17:31:00Z", id="one-digit-day"),
        pytest.param("2018-04-05T17:60:00Z", id="minute-60"),
        pytest.param("2018-04-05T17:31:61Z", id="second-61"),
        pytest.param("2018-04-05T17:31:00.Z", id="empty-fraction"),
        pytest.param("2018-04-05T17:31:00,5Z", id="comma-fraction"),
        pytest.param("2018-04-05T17:31:00+24:00", id="offset-hour-24"),
        pytest.param("2018-04-05T17:31:00+05:60", id="offset-minute-60"),
        pytest.param("2018-04-05T17:31:00+05:30:00", id="offset-seconds"),
        pytest.param("2018-04-05T17:31Z", id="no-seconds"),
        pytest.param("20180405T173100Z", id="iso-basic-format"),
        pytest.param("2018-W14-4T17:31:00Z", id="iso-week-date"),
        pytest.param("2018-04-05T17:31:00Z ", id="trailing-space"),
        pytest.param("2018-04-05T17:31:00Z\n", id="trailing-newline"),
        pytest.param("2018-04-05_17:31:00Z", id="other-separator"),
    ],
)
def test_iso_8601_forms_outside_rfc_3339_are_rejected(
    build: Callable[[str], CloudEvent], text: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        build(text)
    assert info.value.attribute == "time"


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("0000-01-01T00:00:00Z", id="year-0"),
        pytest.param("2018-04-28t23:59:60z", id="lower-case-leap-second"),
        pytest.param("2018-04-28T17:31:00.1234567890-23:59", id="long-fraction-offset"),
        pytest.param("2018-04-30T00:00:00-00:00", id="unknown-local-offset"),
    ],
)
def test_rfc_3339_forms_are_kept_as_given(build: Callable[[str], CloudEvent], text: str) -> None:
    assert build(text)["time"] == text


TIMESTAMPS = st.from_regex(types._TIMESTAMP.__self__, fullmatch=True)


@given(TIMESTAMPS)
def test_fast_timestamp_pattern_is_the_full_grammar_up_to_the_28th(text: str) -> None:
    assert bool(types.TIMESTAMP_BEFORE_29TH(text)) == (text[8:10] <= "28")


@given(TIMESTAMPS, st.integers(0, 40), st.sampled_from("0123456789-:.+TtZz x\n"))
def test_fast_timestamp_pattern_admits_nothing_check_timestamp_refuses(
    text: str, position: int, char: str
) -> None:
    # One character of a valid timestamp replaced, inserted or appended.
    for mutated in (
        text[:position] + char + text[position + 1 :],
        text[:position] + char + text[position:],
    ):
        if types.TIMESTAMP_BEFORE_29TH(mutated):
            assert types.check_timestamp("time", mutated) == mutated


def test_round_trip_keeps_the_time_exactly() -> None:
    text = "2026-11-28t12:00:00.000000001+05:30"
    headers, body = to_http(constructed(text), "structured")
    decoded = from_http(headers, body)
    assert isinstance(decoded, CloudEvent) and decoded["time"] == text
