"""The type system (spec.md "Type System"): canonical strings, Base64, bounded memories."""

from __future__ import annotations

import pickle
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from headwater.cloudevents import CloudEvent, InvalidEvent
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
    # made possessive).
    start = time.perf_counter()
    with pytest.raises(InvalidEvent, match=name):
        CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", name: value})
    assert time.perf_counter() - start < 1.0


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
