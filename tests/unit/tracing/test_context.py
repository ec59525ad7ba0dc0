"""W3C Trace Context parsing: the Recommendation's rules and its test suite's cases."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.tracing.context import (
    MAX_TRACESTATE,
    TraceContext,
    extract,
    new_span_id,
    new_trace_id,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "12345678901234567890123456789012"
SPAN = "1234567890123456"
VALID = f"00-{TRACE}-{SPAN}-01"


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        pytest.param(VALID, 1, id="sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-00", 0, id="not-sampled"),
        pytest.param(f"00-{TRACE}-{SPAN}-09", 9, id="unknown-flag-bits-kept"),
        pytest.param(f" {VALID}", 1, id="leading-space"),
        pytest.param(f"\t{VALID}", 1, id="leading-tab"),
        pytest.param(f"{VALID} \t", 1, id="trailing-ows"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01", 1, id="future-version"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01-what-the-future-will-be-like", 1, id="future-fields"),
    ],
)
def test_valid_traceparents(value: str, flags: int) -> None:
    assert parse_traceparent(value) == TraceContext(TRACE, SPAN, flags)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"00-{TRACE}-{SPAN}-01.", id="v00-trailing-character"),
        pytest.param(f"00-{TRACE}-{SPAN}-01-what-the-future-will-be-like", id="v00-extra-field"),
        pytest.param(f"cc-{TRACE}-{SPAN}-01.what-the-future", id="future-bad-separator"),
        pytest.param(f"ff-{TRACE}-{SPAN}-01", id="version-ff"),
        pytest.param(f".0-{TRACE}-{SPAN}-01", id="version-illegal-1"),
        pytest.param(f"0.-{TRACE}-{SPAN}-01", id="version-illegal-2"),
        pytest.param(f"000-{TRACE}-{SPAN}-01", id="version-too-long"),
        pytest.param(f"0-{TRACE}-{SPAN}-01", id="version-too-short"),
        pytest.param(f"0A-{TRACE}-{SPAN}-01", id="version-upper-case"),
        pytest.param(f"00-{'0' * 32}-{SPAN}-01", id="trace-id-all-zero"),
        pytest.param(f"00-.{TRACE[1:]}-{SPAN}-01", id="trace-id-illegal"),
        pytest.param(f"00-{TRACE}3-{SPAN}-01", id="trace-id-too-long"),
        pytest.param(f"00-{TRACE[1:]}-{SPAN}-01", id="trace-id-too-short"),
        pytest.param(f"00-{TRACE.upper()}AB-{SPAN}-01", id="trace-id-upper-case"),
        pytest.param(f"00-4BF92F3577B34DA6A3CE929D0E0E4736-{SPAN}-01", id="trace-id-upper-hex"),
        pytest.param(f"00-{TRACE}-{'0' * 16}-01", id="parent-id-all-zero"),
        pytest.param(f"00-{TRACE}-.{SPAN[1:]}-01", id="parent-id-illegal"),
        pytest.param(f"00-{TRACE}-{SPAN}7-01", id="parent-id-too-long"),
        pytest.param(f"00-{TRACE}-{SPAN[1:]}-01", id="parent-id-too-short"),
        pytest.param(f"00-{TRACE}-00F067AA0BA902B7-01", id="parent-id-upper-hex"),
        pytest.param(f"00-{TRACE}-{SPAN}-.0", id="flags-illegal"),
        pytest.param(f"00-{TRACE}-{SPAN}-001", id="flags-too-long"),
        pytest.param(f"00-{TRACE}-{SPAN}-1", id="flags-too-short"),
        pytest.param(f"cc-{TRACE}-{SPAN}-1", id="future-shorter-than-55"),
        pytest.param(f"cc-{'0' * 32}-{SPAN}-01-x", id="future-zero-trace-id"),
        pytest.param("", id="empty"),
        pytest.param("00", id="version-only"),
        pytest.param(f"00-{TRACE}-{SPAN}-01\n", id="newline"),
        pytest.param(f"00_{TRACE}_{SPAN}_01", id="wrong-delimiters"),
        pytest.param(None, id="none"),
        pytest.param(1, id="a-number"),
        pytest.param(b"00-" + TRACE.encode() + b"-" + SPAN.encode() + b"-01", id="bytes"),
    ],
)
def test_invalid_traceparents_are_ignored(value: object) -> None:
    assert parse_traceparent(value) is None


@given(st.text(max_size=80))
def test_any_text_is_a_context_or_none_never_an_error(value: str) -> None:
    context = parse_traceparent(value)
    if context is not None:
        assert len(context.trace_id) == 32 and len(context.span_id) == 16
        assert parse_traceparent(context.traceparent) == context


def test_written_as_version_00_whatever_came_in() -> None:
    context = parse_traceparent(f"cc-{TRACE}-{SPAN}-01-future")
    assert context is not None
    assert context.traceparent == VALID


def test_child_keeps_trace_and_state_and_decides_its_own_flag() -> None:
    parent = TraceContext(TRACE, SPAN, 1, "congo=t61rcWkgMzE")
    child = parent.child("00f067aa0ba902b7", False)
    assert child == TraceContext(TRACE, "00f067aa0ba902b7", 0, "congo=t61rcWkgMzE")
    assert child.fields() == [
        ("traceparent", f"00-{TRACE}-00f067aa0ba902b7-00"),
        ("tracestate", "congo=t61rcWkgMzE"),
    ]


def test_new_ids_are_valid_and_differ() -> None:
    ids = {new_trace_id() for _ in range(100)}
    assert len(ids) == 100
    for trace_id in ids:
        assert parse_traceparent(f"00-{trace_id}-{new_span_id()}-01") is not None


# -- tracestate ---------------------------------------------------------------------

KEY = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE = (
    "".join(map(chr, range(0x20, 0x2C)))
    + "".join(map(chr, range(0x2D, 0x3D)))
    + "".join(map(chr, range(0x3E, 0x7F)))
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(["foo=1,bar=2"], "foo=1,bar=2", id="two"),
        pytest.param(["foo=1 \t , \t bar=2, \t baz=3"], "foo=1,bar=2,baz=3", id="ows"),
        pytest.param([" foo=1"], "foo=1", id="leading-ows"),
        pytest.param(["foo=1\t"], "foo=1", id="trailing-tab"),
        pytest.param([""], "", id="empty"),
        pytest.param(["foo=1", ""], "foo=1", id="empty-second-field"),
        pytest.param(["", "foo=1"], "foo=1", id="empty-first-field"),
        pytest.param(["foo=1,,bar=2"], "foo=1,bar=2", id="empty-member"),
        pytest.param(
            ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"],
            "foo=1,bar=2,rojo=1,congo=2,baz=3",
            id="several-fields-in-order",
        ),
        pytest.param([f"{KEY}={VALUE}"], f"{KEY}={VALUE}", id="all-allowed-characters"),
        pytest.param(
            [f"{KEY}@a-z0-9_-*/={VALUE}"], f"{KEY}@a-z0-9_-*/={VALUE}", id="multi-tenant-key"
        ),
        pytest.param(
            [",".join(f"bar{i:02}={i:02}" for i in range(1, 33))],
            ",".join(f"bar{i:02}={i:02}" for i in range(1, 33)),
            id="32-members",
        ),
        pytest.param(
            ["foo=1", "t" * 241 + "@" + "v" * 14 + "=1"],
            "foo=1," + "t" * 241 + "@" + "v" * 14 + "=1",
            id="longest-tenant-and-system",
        ),
    ],
)
def test_valid_tracestates(values: list[str], expected: str) -> None:
    assert parse_tracestate(values) == expected


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(["foo=1,foo=1"], id="duplicate-key"),
        pytest.param(["foo=1,foo=2"], id="duplicate-key-other-value"),
        pytest.param(["foo=1", "foo=2"], id="duplicate-key-across-fields"),
        pytest.param(["foo =1"], id="space-in-key"),
        pytest.param(["FOO=1"], id="upper-case-key"),
        pytest.param(["foo.bar=1"], id="dot-in-key"),
        pytest.param(["foo@=1,bar=2"], id="empty-system"),
        pytest.param(["@foo=1,bar=2"], id="empty-tenant"),
        pytest.param(["foo@@bar=1,bar=2"], id="double-at"),
        pytest.param(["foo@bar@baz=1,bar=2"], id="two-ats"),
        pytest.param(["foo=1", "z" * 257 + "=1"], id="key-too-long"),
        pytest.param(["foo=1", "t" * 242 + "@v=1"], id="tenant-too-long"),
        pytest.param(["foo=1", "t@" + "v" * 15 + "=1"], id="system-too-long"),
        pytest.param(["foo=bar=baz"], id="equals-in-value"),
        pytest.param(["foo=,bar=3"], id="empty-value"),
        pytest.param(["foo=" + "x" * 257], id="value-too-long"),
        pytest.param(["foo=a\x7fb"], id="control-in-value"),
        pytest.param(["foo"], id="no-equals"),
        pytest.param([",".join(f"bar{i:02}={i:02}" for i in range(1, 34))], id="33-members"),
    ],
)
def test_invalid_tracestates_are_dropped_whole(values: list[str]) -> None:
    assert parse_tracestate(values) is None


def test_a_long_tracestate_loses_large_entries_first_then_from_the_end() -> None:
    large = "big=" + "x" * 200
    small = [f"k{i:02}=" + "v" * 30 for i in range(20)]  # 34 characters each
    state = parse_tracestate([",".join([small[0], large, *small[1:]])])
    assert state is not None
    assert len(state) <= MAX_TRACESTATE
    assert "big=" not in state
    kept = state.split(",")
    assert kept == small[: len(kept)]  # whole entries, cut from the end
    assert len(",".join(small[: len(kept) + 1])) > MAX_TRACESTATE


def test_a_key_of_256_characters_is_valid() -> None:
    assert parse_tracestate(["foo=1", "z" * 256 + "=1"]) == "foo=1," + "z" * 256 + "=1"


# -- both -----------------------------------------------------------------------------


def test_extract_keeps_a_valid_traceparent_whatever_the_tracestate() -> None:
    assert extract([VALID], ["foo=1,foo=2"]) == TraceContext(TRACE, SPAN, 1)
    assert extract([VALID], ["foo=1"]) == TraceContext(TRACE, SPAN, 1, "foo=1")


def test_extract_ignores_tracestate_without_a_valid_traceparent() -> None:
    assert extract([], ["foo=1"]) is None
    assert extract([f"ff-{TRACE}-{SPAN}-01"], ["foo=1"]) is None


def test_two_traceparents_make_a_new_trace() -> None:
    other = f"00-{TRACE[:-1]}1-{SPAN}-01"
    assert extract([VALID, other]) is None
    assert extract([VALID, VALID]) is None
