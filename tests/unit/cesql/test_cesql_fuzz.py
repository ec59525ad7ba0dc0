"""Garbage into `compile` only raises ParseError; any event into any expression never raises."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater import cesql

NAMES = st.sampled_from(["id", "type", "subject", "sequence", "flag", "blob", "missing", "x1"])
VALUES = st.one_of(
    st.text(max_size=8),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.booleans(),
    st.binary(max_size=4),
    st.sampled_from(["10", "-3", "true", "FALSE", "2147483648", "", " 1"]),
)
EVENTS = st.dictionaries(NAMES, VALUES, max_size=8)

LITERALS = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1).map(str),
    st.sampled_from(["true", "FALSE", "'a'", '"10"', "'%'", "''", "'x\\'y'"]),
)


def _expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(LITERALS, NAMES, NAMES.map(lambda n: f"EXISTS {n}"))

    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.sampled_from(
            ["+", "-", "*", "/", "%", "=", "!=", "<>", "<", "<=", ">", ">=", "AND", "OR", "XOR"]
        )
        functions = st.sampled_from(
            [
                "LENGTH",
                "CONCAT",
                "CONCAT_WS",
                "LOWER",
                "UPPER",
                "TRIM",
                "LEFT",
                "RIGHT",
                "SUBSTRING",
                "ABS",
                "INT",
                "BOOL",
                "STRING",
                "NOPE",
            ]
        )
        return st.one_of(
            st.tuples(inner, binary, inner).map(" ".join),
            inner.map(lambda x: f"NOT {x}"),
            inner.map(lambda x: f"-{x}"),
            inner.map(lambda x: f"({x})"),
            st.tuples(inner, st.sampled_from(["'%a_'", "'\\%'", "''"])).map(
                lambda t: f"{t[0]} LIKE {t[1]}"
            ),
            st.tuples(inner, st.lists(inner, min_size=1, max_size=3)).map(
                lambda t: f"{t[0]} NOT IN ({', '.join(t[1])})"
            ),
            st.tuples(functions, st.lists(inner, max_size=3)).map(
                lambda t: f"{t[0]}({', '.join(t[1])})"
            ),
        )

    return st.recursive(leaves, extend, max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_only_raises_parse_error(text: str) -> None:
    with contextlib.suppress(cesql.ParseError):
        cesql.compile(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["(", ")", "'", "NOT", "-", "a", "1", "IN", "LIKE", ",", "="]), max_size=30
    ).map(" ".join)
)
def test_token_soup_only_raises_parse_error(text: str) -> None:
    with contextlib.suppress(cesql.ParseError):
        cesql.compile(text)


@settings(max_examples=500, deadline=None)
@given(_expressions(), EVENTS)
def test_valid_expressions_never_raise_and_return_a_cesql_value(
    text: str, event: dict[str, Any]
) -> None:
    expression = cesql.compile(text)
    result = expression.evaluate(event)
    assert type(result.value) in (bool, int, str)
    if type(result.value) is int:
        assert -(2**31) <= result.value <= 2**31 - 1
    assert all(isinstance(e, cesql.CesqlError) for e in result.errors)
    assert expression.matches(event) == (result.value is True and not result.errors)


ANY_VALUE = st.one_of(
    VALUES,
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from(["greenhouse/1", "greenhouse/", "%", "_", "日本", "a\\b", "٣", "0031"]),
)
SHAPES = st.sampled_from(
    [
        "x = 'greenhouse/1'",
        "x != 'a'",
        "x <> 10",
        "x = 10",
        "x = true",
        "x != false",
        "x > 30",
        "INT(x) >= -5",
        "x < 0",
        "x LIKE 'greenhouse/%'",
        "x LIKE '%a%'",
        "x NOT LIKE '_'",
        "x LIKE 'a\\b'",
        "x IN ('a', 'greenhouse/1', 10, true)",
        "x NOT IN (10, 0031)",
        "x IN ('x', 1)",
        "EXISTS x",
        "x = 'a' AND x = 'a'",
        "x = 10 OR NOT x = 'b'",
        "x > 1 XOR x < 1",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(SHAPES, ANY_VALUE)
def test_fast_paths_of_matches_agree_with_evaluate(text: str, value: Any) -> None:
    # matches() takes the common shapes inline; whatever the attribute holds,
    # it must decide exactly as evaluate() and the 1.2 rule do.
    expression = cesql.compile(text)
    event = {"id": "1", "x": value}
    result = expression.evaluate(event)
    assert expression.matches(event) == (result.value is True and not result.errors)
