"""The log's record format: exact round trips, and garbage only ever raises CorruptRecord."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent
from headwater.log._codec import HEADER_SIZE, CorruptRecord, decode, encode
from tests.unit.cloudevents.ce_strategies import CHARACTERS

_names = st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True).filter(
    lambda n: (
        n
        not in {
            "specversion",
            "id",
            "source",
            "type",
            "data",
            "time",
            "subject",
            "datacontenttype",
            "dataschema",
            "data_base64",
        }
    )
)
# Any character a String may hold (noncharacters of every plane excluded, as the model does).
_text = st.text(CHARACTERS, max_size=30)
_values = st.one_of(
    _text,
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.binary(max_size=16),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=10,
)
_data = st.one_of(st.just(NO_DATA), st.binary(max_size=64), _text, _json)


@given(extensions=st.dictionaries(_names, _values, max_size=5), data=_data)
def test_round_trip_keeps_values_and_types(extensions: dict[str, object], data: object) -> None:
    content_type = "text/plain" if type(data) is str else "application/json"
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": "1",
            "source": "/s",
            "type": "t",
            "datacontenttype": content_type,
            **extensions,
        },
        data,
    )
    back = decode(encode(event))
    assert back == event
    assert list(back.attributes.items()) == list(event.attributes.items())
    assert [type(v) for v in back.attributes.values()] == [
        type(v) for v in event.attributes.values()
    ]
    assert back.has_data == event.has_data
    assert type(back.data) is type(event.data)


def test_a_plain_event_has_no_binary_flag_and_a_small_header() -> None:
    event = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, b"ab")
    record = encode(event)
    assert record[0] == 1  # bytes, no binary attributes
    assert record.endswith(b"ab")
    assert (
        len(record)
        == HEADER_SIZE + len(b'{"specversion":"1.0","id":"1","source":"/s","type":"t"}') + 2
    )


def test_unserialisable_data_is_an_invalid_event() -> None:
    event = CloudEvent._trusted(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t"}, {1.5j}
    )
    with pytest.raises(InvalidEvent):
        encode(event)


def _record(tag: int, attributes: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<BI", tag, len(attributes)) + attributes + data


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x05\x00", id="short-header"),
        pytest.param(_record(1, b"{nope"), id="bad-json"),
        pytest.param(_record(9, b"{}"), id="unknown-kind"),
        pytest.param(_record(0, b"[]"), id="not-an-object"),
        pytest.param(_record(2, b"{}", b"\xff"), id="bad-utf8-text"),
        pytest.param(_record(3, b"{}", b"{"), id="bad-json-data"),
        pytest.param(_record(0x81, b'{"x":{"c":1}}'), id="binary-wrap-without-b"),
        pytest.param(_record(0x81, b'{"x":{"b":1}}'), id="binary-wrap-not-text"),
        pytest.param(_record(0x81, b'{"x":{"b":"!"}}'), id="binary-wrap-not-base64"),
        pytest.param(_record(0x80, b"[]"), id="binary-flag-on-an-array"),
    ],
)
def test_foreign_bytes_raise_corrupt_record(record: bytes) -> None:
    with pytest.raises(CorruptRecord):
        decode(record)


@given(st.binary(max_size=64))
def test_garbage_only_raises_corrupt_record(record: bytes) -> None:
    with contextlib.suppress(CorruptRecord):
        decode(record)
