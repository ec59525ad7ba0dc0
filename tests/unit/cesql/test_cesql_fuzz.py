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
