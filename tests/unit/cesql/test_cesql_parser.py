"""The CESQL grammar (spec.md 2, CESQLLexer.g4, CESQLParser.g4), case by case."""

from __future__ import annotations

from typing import Any

import pytest

from headwater import cesql
from headwater.cesql.parser import MAX_DEPTH, MAX_LENGTH, parse

EVENT = {"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "x1": "v", "1x": 2}


def value(text: str) -> Any:
    result = cesql.compile(text).evaluate(EVENT)
    assert result.errors == []
    return result.value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 2: "Although in the EBNF keywords are defined using uppercase
        # characters, they are case-insensitive."
        pytest.param("true AND true", True, id="and-upper"),
        pytest.param("true and true", True, id="and-lower"),
        pytest.param("true AnD true", True, id="and-mixed"),
        pytest.param("false Or true", True, id="or-mixed"),
        pytest.param("true xOr true", False, id="xor-mixed"),
        pytest.param("nOt false", True, id="not-mixed"),
        pytest.param("tRuE", True, id="true-mixed"),
        pytest.param("fAlSe", False, id="false-mixed"),
        pytest.param("'a' LiKe 'a'", True, id="like-mixed"),
        pytest.param("'a' not like 'b'", True, id="not-like-lower"),
        pytest.param("1 iN (1)", True, id="in-mixed"),
        pytest.param("1 Not In (2)", True, id="not-in-mixed"),
        pytest.param("ExIsTs id", True, id="exists-mixed"),
        pytest.param("aBs(-10)", 10, id="function-mixed"),
        pytest.param("concat_ws('-', 'a', 'b')", "a-b", id="function-with-underscore-lower"),
        # 2.2: value identifiers are lower-case letters and digits.
        pytest.param("x1", "v", id="identifier-with-digit"),
        # CloudEvents attribute names are lower-case, so an upper-case letter
        # can only mean the lower-case one: the CESQL TCK and the other SDKs
        # accept `EXISTS SOURCE` (2.2 asks for the naming convention, which
        # the TCK reads as case-insensitive).
        pytest.param("EXISTS SOURCE", True, id="uppercase-exists"),
        pytest.param("X1", "v", id="uppercase-identifier"),
        pytest.param("Source = '/s' AND EXISTS Id", True, id="mixed-case-identifiers"),
        pytest.param("1x", 2, id="identifier-starting-with-digit"),
        # 2.2: a value identifier "SHOULD NOT be greater than 20 characters":
        # advice to authors; a longer extension name is still addressable.
        pytest.param("EXISTS abcdefghijklmnopqrstuvwxyz", False, id="long-identifier"),
        # 2.2: integer literals, signed, 32-bit.
        pytest.param("2147483647", 2147483647, id="int32-max"),
        pytest.param("+2147483647", 2147483647, id="int32-max-plus-sign"),
        pytest.param("-2147483648", -2147483648, id="int32-min"),
        pytest.param("007", 7, id="leading-zeros"),
        pytest.param("-0", 0, id="minus-zero"),
        # A sign glued to digits after an operand is the binary operator: the
        # lexer grammar would read `1-1` as `1` `-1` and fail; the spec's EBNF
        # (2.3 binary-operation) allows the subtraction, which users expect.
        pytest.param("1-1", 0, id="subtraction-without-spaces"),
        pytest.param("1+1", 2, id="addition-without-spaces"),
        pytest.param("3 -1", 2, id="subtraction-glued-sign"),
        pytest.param("- -10", 10, id="negation-of-negative"),
        # 2.2 strings: both quote styles, the delimiter escaped with \ (or
        # doubled, as CESQLLexer.g4 also allows); other backslashes are kept.
        pytest.param("'abc'", "abc", id="single-quoted"),
        pytest.param('"abc"', "abc", id="double-quoted"),
        pytest.param("'aBc'", "aBc", id="case-kept"),
        pytest.param("'a\"b\\'c'", "a\"b'c", id="single-quoted-escapes"),
        pytest.param('"a\'b\\"c"', "a'b\"c", id="double-quoted-escapes"),
        pytest.param("'a''b'", "a'b", id="doubled-single-quote"),
        pytest.param('"a""b"', 'a"b', id="doubled-double-quote"),
        pytest.param("'a\\\\b'", "a\\\\b", id="backslashes-kept"),
        pytest.param("'a\\nb'", "a\\nb", id="no-c-escapes"),
        pytest.param("'line\nbreak'", "line\nbreak", id="newline-inside-string"),
        pytest.param("'日本'", "日本", id="unicode-string"),
        pytest.param("''", "", id="empty-string"),
        # Whitespace: space, tab, CR, LF (CESQLLexer.g4 SPACE).
        pytest.param("\t1\r\n+\n2 ", 3, id="whitespace"),
        pytest.param("((((1))))", 1, id="parentheses"),
        # 3.6 precedence.
        pytest.param("NOT true = false", True, id="not-before-equals"),
        pytest.param("-2 * 3 + 1", -5, id="minus-before-times-before-plus"),
        pytest.param("2 + 3 * 4", 14, id="times-before-plus"),
        pytest.param("10 - 4 - 3", 3, id="minus-left-to-right"),
        pytest.param("16 / 4 / 2", 2, id="divide-left-to-right"),
        pytest.param("1 + 2 = 3", True, id="plus-before-equals"),
        pytest.param("1 = 1 AND 2 = 2", True, id="equals-before-and"),
        pytest.param("1 + 1 IN (1)", 2, id="in-before-plus"),
        pytest.param("'a' LIKE 'a' = true", True, id="like-before-equals"),
        pytest.param("-ABS(-1)", -1, id="function-before-minus"),
        # 3.6: equal precedence is evaluated left to right, AND/OR/XOR included
        # (CESQLParser.g4 says <assoc=right>; the spec's text wins).
        pytest.param("false AND true OR true", True, id="and-or-left-to-right"),
        pytest.param("true OR false AND false", False, id="or-and-left-to-right"),
        pytest.param("true XOR true OR true", True, id="xor-or-left-to-right"),
    ],
)
def test_grammar(text: str, expected: Any) -> None:
    result = value(text)
    assert (type(result), result) == (type(expected), expected)


@pytest.mark.parametrize(
    ("text", "reason", "column"),
    [
        # 2.2: identifiers are letters and digits (no underscore).
        pytest.param("my_ext", "not a valid attribute name", 1, id="underscore-identifier"),
        pytest.param("EXISTS my_ext", "EXISTS needs an attribute name", 8, id="underscore-exists"),
        pytest.param("and = 1", "expected a value, found 'AND'", 1, id="keyword-as-identifier"),
        pytest.param("1 = in", "expected a value, found 'IN'", 5, id="in-as-identifier"),
        pytest.param("ABS1(1)", "'ABS1' is not a valid function name", 1, id="digit-in-function"),
        pytest.param("_A(1)", "'_A' is not a valid function name", 1, id="leading-underscore"),
        pytest.param("+ 1", "'+' must be followed directly by digits", 1, id="no-unary-plus"),
        pytest.param("- 2147483648", "outside the 32-bit range", 3, id="negated-too-large"),
        # Python's int() refuses strings of more than 4,300 digits with a
        # ValueError of its own: still the literal's ParseError, with its position.
        pytest.param("a = " + "9" * 4301, "(4301 digits) is outside the 32-bit", 5, id="huge-int"),
        pytest.param(
            "-" + "1" * 5000, "(5001 digits) is outside the 32-bit", 1, id="huge-negative"
        ),
        pytest.param("0" * 5000 + "1", None, None, id="leading-zeros-are-not-digits-of-range"),
        # CESQL v1 has no decimals: say so, rather than "unexpected character".
        pytest.param("temperature > 23.5", "CESQL v1 has only integers", 15, id="decimal"),
        pytest.param("x = .5", "CESQL v1 has only integers", 5, id="decimal-no-integer-part"),
        pytest.param("'a' LIKE \"%\" || 'b'", "unexpected character '|'", 14, id="pipe"),
        pytest.param("1 == 1", "expected a value, found '='", 4, id="double-equals"),
        pytest.param("1 =\u00a01", "unexpected character '\\xa0'", 4, id="no-break-space"),
        pytest.param("'it's'", "unterminated string literal", 6, id="unescaped-quote"),
        pytest.param("'a\\'", "unterminated string literal", 1, id="escaped-final-quote"),
        pytest.param("x LIKE 'a' 'b'", "unexpected \"'b'\"", 12, id="two-patterns"),
        pytest.param("x NOT 1", "unexpected 'NOT' after the expression", 3, id="dangling-not"),
        pytest.param("x IN (1,)", "expected a value, found ')'", 9, id="trailing-comma"),
        pytest.param("ABS(1,)", "expected a value, found ')'", 7, id="trailing-argument-comma"),
        pytest.param("()", "expected a value, found ')'", 2, id="empty-parentheses"),
        pytest.param("1)", "unexpected ')' after the expression", 2, id="extra-parenthesis"),
    ],
)
def test_rejected(text: str, reason: str | None, column: int | None) -> None:
    if reason is None:  # the control case: valid after all
        assert cesql.compile(text).evaluate(EVENT).value == 1
        return
    with pytest.raises(cesql.ParseError) as info:
        cesql.compile(text)
    assert reason in info.value.reason
    assert info.value.column == column


def _nested(kind: str, depth: int) -> str:
    if kind == "parentheses":
        return "(" * (depth - 1) + "true" + ")" * (depth - 1)
    if kind == "not":
        return "NOT " * (depth - 1) + "true"
    if kind == "minus":
        return "- " * (depth - 1) + "1"
    if kind == "and":
        return " AND ".join(["true"] * depth)
    if kind == "plus":
        return " + ".join(["1"] * depth)
    if kind == "calls":
        return "ABS(" * (depth - 1) + "1" + ")" * (depth - 1)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parentheses", "not", "minus", "and", "plus", "calls"])
def test_depth_limit_is_a_parse_error_and_the_limit_itself_evaluates(kind: str) -> None:
    deepest = cesql.compile(_nested(kind, MAX_DEPTH - 1))
    result = deepest.evaluate(EVENT)
    assert result.errors == []
    deepest.matches(EVENT)
    with pytest.raises(cesql.ParseError, match="nested deeper than"):
        parse(_nested(kind, MAX_DEPTH + 2))


def test_trees_are_plain_tuples() -> None:
    assert parse("a = 1 AND NOT b LIKE 'x%'") == (
        "bin",
        "AND",
        ("bin", "=", ("id", "a"), ("lit", 1)),
        ("like", ("not", ("id", "b")), "x%", False),
    )
    assert parse("x NOT IN (1, 'a')") == ("in", ("id", "x"), [("lit", 1), ("lit", "a")], True)
    assert parse("concat_ws(',')") == ("call", "CONCAT_WS", [("lit", ",")], 0)
    assert parse("EXISTS subject") == ("exists", "subject")


def test_the_decimal_error_suggests_integers_and_floor() -> None:
    with pytest.raises(cesql.ParseError) as info:
        cesql.compile("temperature > 23.5")
    assert info.value.reason.startswith("23.5: CESQL v1 has only integers, no decimal numbers")
    assert "floor(temperature)" in info.value.reason


def test_expressions_longer_than_the_limit_are_refused_before_parsing() -> None:
    longest = "a IN (" + ",".join(["1"] * ((MAX_LENGTH - 7) // 2)) + ")"
    assert len(longest) <= MAX_LENGTH
    cesql.compile(longest)
    with pytest.raises(cesql.ParseError, match=f"over the limit of {MAX_LENGTH}"):
        cesql.compile(longest + " " * (MAX_LENGTH - len(longest) + 1))


def test_compile_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError):
        cesql.compile(b"true")  # type: ignore[arg-type]
