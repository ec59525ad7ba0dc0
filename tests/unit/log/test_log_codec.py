"""The log's record format: exact round trips, and garbage only ever raises CorruptRecord."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.cloudevents import NO_DATA, CloudEvent, InvalidEvent
from headwater.log._codec import (
    BATCH,
    HEADER_SIZE,
    CorruptRecord,
    batch_lengths,
    decode,
    encode,
    encode_batch,
    is_batch,
    split_batch,
    stored_size,
    stored_value,
)
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


# -- batches: several records stored as one value ----------------------------------------

_batch_records = st.lists(st.binary(max_size=64), min_size=2, max_size=50)


def test_a_batch_is_framed_as_documented() -> None:
    value = encode_batch([b"ab", b"", b"cde"])
    assert value == bytes.fromhex("40 03000000 02000000 00000000 03000000") + b"abcde"
    assert BATCH == 0x40
    assert is_batch(value)
    assert batch_lengths(value) == (2, 0, 3)
    assert split_batch(value) == [b"ab", b"", b"cde"]


@given(records=_batch_records, data=st.data())
def test_a_batch_splits_back_into_its_records(records: list[bytes], data: st.DataObject) -> None:
    value = encode_batch(records)
    assert is_batch(value)
    assert batch_lengths(value) == tuple(len(record) for record in records)
    assert split_batch(value) == records
    assert len(value) == HEADER_SIZE + 4 * len(records) + sum(map(len, records))
    skip = data.draw(st.integers(0, len(records) + 2), label="skip")
    limit = data.draw(st.none() | st.integers(0, len(records) + 2), label="limit")
    expected = records[skip:] if limit is None else records[skip : skip + limit]
    assert split_batch(value, skip, limit) == expected
    assert split_batch(value, skip=skip) == records[skip:]
    assert split_batch(value, limit=limit) == records[:limit]


def _event(i: int) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(i), "source": "/s", "type": "t"}, b"x" * i)


def test_an_empty_value_is_not_a_batch() -> None:
    assert not is_batch(b"")
    with pytest.raises(CorruptRecord):
        decode(b"")


def test_an_event_record_is_not_a_batch() -> None:
    binary = CloudEvent(
        {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "blob": b"\x40"}, "text"
    )
    for event in (_event(0), _event(3), binary, CloudEvent._trusted(_event(1)._attributes, 1)):
        record = encode(event)
        assert not is_batch(record)
        assert decode(record) == event


@given(records=st.lists(st.binary(max_size=64), min_size=1, max_size=50))
def test_stored_size_is_the_size_the_writer_stores(records: list[bytes]) -> None:
    lengths = [len(record) for record in records]
    stored = stored_value(records)  # what the writer puts in a row for these records
    assert stored_size(lengths) == len(stored)
    if len(records) == 1:
        assert stored == records[0]  # a single record is stored as itself, unframed
    else:
        assert stored == encode_batch(records)
    # A batch cut by retention keeps a suffix of its records, stored the same way.
    for skip in range(len(records)):
        assert stored_size(lengths[skip:]) == len(stored_value(records[skip:]))


def _framed(count: int, lengths: list[int], body: bytes) -> bytes:
    return struct.pack(f"<BI{len(lengths)}I", BATCH, count, *lengths) + body


_GOOD = encode_batch([b"abc", b"de"])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x40", id="tag-only"),
        pytest.param(b"\x40\x02\x00", id="truncated-header"),
        pytest.param(b"\x40\x02\x00\x00\x00", id="no-lengths"),
        pytest.param(_GOOD[:9], id="truncated-lengths"),
        pytest.param(_GOOD[:-1], id="truncated-record"),
        pytest.param(_GOOD + b"x", id="trailing-byte"),
        pytest.param(_framed(2, [3, 3], b"abcde"), id="lengths-sum-too-large"),
        pytest.param(_framed(2, [1, 1], b"abcde"), id="lengths-sum-too-small"),
        pytest.param(_framed(3, [3, 2], b"abcde"), id="count-too-large"),
        pytest.param(_framed(1, [3, 2], b"abcde"), id="count-too-small"),
        pytest.param(_framed(1, [5], b"abcde"), id="count-one"),  # adds up: still no batch
        pytest.param(_framed(0, [], b""), id="count-zero"),
        pytest.param(_framed(0xFFFFFFFF, [3, 2], b"abcde"), id="huge-count"),
        pytest.param(_framed(2, [0xFFFFFFFF, 2], b"abcde"), id="huge-length"),
        pytest.param(b"\x41" + _GOOD[1:], id="wrong-tag"),
        pytest.param(b"\xc0" + _GOOD[1:], id="tag-with-binary-flag"),
        pytest.param(b"\x01" + _GOOD[1:], id="a-record-tag"),
        pytest.param(encode(_event(2)), id="an-event-record"),
    ],
)
def test_a_damaged_batch_raises_corrupt_record(value: bytes) -> None:
    with pytest.raises(CorruptRecord, match="not a batch of records"):
        batch_lengths(value)
    with pytest.raises(CorruptRecord, match="not a batch of records"):
        split_batch(value)
    with pytest.raises(CorruptRecord, match="not a batch of records"):
        split_batch(value, 1, 1)


def _check_garbage(value: bytes) -> None:
    """Either a consistent batch or CorruptRecord: never another exception."""
    try:
        lengths = batch_lengths(value)
    except CorruptRecord:
        with pytest.raises(CorruptRecord):
            split_batch(value)
        return
    records = split_batch(value)
    assert len(lengths) >= 2  # a single record is stored as itself, never as a batch
    assert [len(record) for record in records] == list(lengths)
    assert value[0] == BATCH
    assert b"".join(records) == value[HEADER_SIZE + 4 * len(lengths) :]


@given(st.binary(max_size=64))
def test_garbage_batches_only_raise_corrupt_record(value: bytes) -> None:
    _check_garbage(value)
    _check_garbage(bytes([BATCH]) + value)


@given(records=_batch_records, data=st.data())
def test_a_damaged_batch_only_raises_corrupt_record(
    records: list[bytes], data: st.DataObject
) -> None:
    value = bytearray(encode_batch(records))
    how = data.draw(st.sampled_from(["flip", "cut", "extend"]), label="how")
    if how == "flip":
        at = data.draw(st.integers(0, len(value) - 1), label="at")
        value[at] ^= data.draw(st.integers(1, 255), label="bits")
    elif how == "cut":
        del value[data.draw(st.integers(0, len(value) - 1), label="at") :]
    else:
        value += data.draw(st.binary(min_size=1, max_size=8), label="tail")
    _check_garbage(bytes(value))
    if how != "flip":  # the framing no longer adds up
        with pytest.raises(CorruptRecord):
            batch_lengths(bytes(value))


@given(records=_batch_records)
def test_decode_refuses_a_batch_of_any_records(records: list[bytes]) -> None:
    with pytest.raises(CorruptRecord):
        decode(encode_batch(records))


@pytest.mark.parametrize("records", [[], [b"abc"], [encode(_event(1))]])
def test_a_batch_of_fewer_than_two_records_is_damaged(records: list[bytes]) -> None:
    # encode_batch is only ever given two or more; a stored value claiming fewer is damage.
    value = encode_batch(records)
    assert is_batch(value)
    with pytest.raises(CorruptRecord, match="not a batch of records"):
        batch_lengths(value)
    with pytest.raises(CorruptRecord, match="not a batch of records"):
        split_batch(value)


def test_decode_refuses_a_batch_of_event_records() -> None:
    records = [encode(_event(i)) for i in range(3)]
    for value in (encode_batch(records), encode_batch(records[:2]), encode_batch([b"{}", b"{}"])):
        with pytest.raises(CorruptRecord):
            decode(value)
