"""CESQL v1, table-driven from the spec (shared/specs/cesql/spec.md)."""

from __future__ import annotations

from typing import Any

import pytest

from headwater import cesql
from headwater.cesql import (
    CastError,
    FunctionEvaluationError,
    MathError,
    MissingAttributeError,
    MissingFunctionError,
    ParseError,
)
from headwater.cloudevents import CloudEvent

EVENT = {
    "specversion": "1.0",
    "id": "42",
    "source": "/greenhouse/north",
    "type": "dev.headwater.telemetry",
    "subject": "greenhouse/s1",
    "time": "2026-11-28T12:00:00Z",
    "temperature": "31",
    "sequence": 10,
    "enabled": True,
    "firstname": "Francesco",
    "blob": b"\x00\x01",
    "hop": "5",
    "ttl": "10",
}


def evaluate(text: str, event: dict[str, Any] | None = None) -> tuple[Any, list[type]]:
    result = cesql.compile(text).evaluate(EVENT if event is None else event)
    return result.value, [type(e) for e in result.errors]


SAME = object()


def p(text: str, value: Any, *errors: type, id: str, complete: Any = SAME) -> Any:
    """A case: the value the CESQL TCK expects, the errors, and the value of the
    complete evaluation mode (4.1) where an error makes the two differ."""
    return pytest.param(text, value, list(errors), value if complete is SAME else complete, id=id)


CASES = [
    # literals (2.2)
    p("1", 1, id="integer"),
    p("-2147483648", -2147483648, id="int32-min-literal"),
    p("+5", 5, id="plus-sign-literal"),
    p("'single'", "single", id="single-quoted"),
    p('"double"', "double", id="double-quoted"),
    p("'it\\'s'", "it's", id="escaped-single-quote"),
    p("'it''s'", "it's", id="doubled-single-quote"),
    p('"say \\"hi\\""', 'say "hi"', id="escaped-double-quote"),
    p("true", True, id="true"),
    p("FaLsE", False, id="false-any-case"),
    # identifiers (3.2)
    p("id", "42", id="attribute"),
    p("sequence", 10, id="integer-extension"),
    p("blob", "AAE=", id="binary-as-base64-string"),
    # 3.2: a bare missing attribute has no type to take a zero value from, so
    # Boolean is assumed. (An older TCK case expects "" without an error; the
    # spec requires the MissingAttributeError.)
    p("missing", False, MissingAttributeError, id="missing-attribute-is-false"),
    p("time", "2026-11-28T12:00:00Z", id="timestamp-is-a-string"),
    p("time = '2026-11-28T12:00:00Z'", True, id="timestamp-compares-as-string"),
    p("time < '2027'", False, CastError, complete=True, id="timestamp-has-no-order-cast-fails"),
    p("source LIKE '/greenhouse/%'", True, id="uri-reference-is-a-string"),
    # 3.2 makes only "the subexpression" reading the missing attribute zero; the
    # TCK (fail fast) makes every operator around it zero as well.
    p("LENGTH(missing) + 1", 0, MissingAttributeError, complete=1, id="missing-zero-is-local"),
    p("NOT (missing = '')", False, MissingAttributeError, complete=True, id="missing-then-not"),
    # unary (3.4.1)
    p("NOT true", False, id="not"),
    p("not 'true'", False, id="not-casts-string"),
    p("-sequence", -10, id="unary-minus-attribute"),
    p("- -2147483648", 0, MathError, id="negation-overflow"),
    p("--10", 10, id="minus-minus"),
    p("-'10'", -10, id="minus-casts-string"),
    p("--'10'", 10, id="minus-minus-casts-string"),
    p("-TRUE", -1, id="minus-casts-boolean"),
    p("-missing", 0, MissingAttributeError, id="minus-missing"),
    p("NOT 'TRUE'", False, id="not-casts-string-any-case"),
    p("NOT 'FALSE'", True, id="not-casts-false-string"),
    # 3.7: Integer -> Boolean is a cast an engine MUST support (0 is false),
    # and NOT is not ambiguous, so NOT 10 is false without an error. (An
    # older TCK case expects a CastError here, from before that cast existed.)
    p("NOT 10", False, id="not-casts-integer"),
    p("NOT 0", True, id="not-zero"),
    p("NOT 'maybe'", False, CastError, complete=True, id="not-failed-cast-negates-false"),
    p("NOT missing", False, MissingAttributeError, id="not-missing"),
    # arithmetic (3.4.2)
    p("2 + 3 * 4", 14, id="precedence-mul-over-add"),
    p("(2 + 3) * 4", 20, id="parentheses"),
    p("10 - 4 - 3", 3, id="left-to-right"),
    p("7 / 2", 3, id="division-truncates"),
    p("-7 / 2", -3, id="division-towards-zero"),
    p("-7 % 3", -1, id="remainder-sign-of-dividend"),
    p("7 % -3", 1, id="remainder-positive-dividend"),
    p("5 / 0", 0, MathError, id="division-by-zero"),
    p("5 % 0", 0, MathError, id="modulo-by-zero"),
    p("2147483647 + 1", 0, MathError, id="addition-overflow"),
    p("-2147483648 - 1", 0, MathError, id="subtraction-overflow"),
    p("65536 * 65536", 0, MathError, id="multiplication-overflow"),
    p("1 / missing", 0, MissingAttributeError, id="missing-in-division-no-math-error"),
    p("missing * 5", 0, MissingAttributeError, id="missing-in-product"),
    p("4 * 2 + 4 / 2", 10, id="precedence-without-parentheses"),
    p("4 * (2 + 4) / 2", 12, id="precedence-with-parentheses"),
    p("5 / 3", 1, id="truncated-division"),
    p("-4 + -1", -5, id="negative-literals"),
    p("4 - 1", 3, id="subtraction"),
    p("'5' + '3'", 8, id="both-strings-cast"),
    p("5 + TRUE", 6, id="boolean-cast-in-sum"),
    p("missing / 0", 0, MissingAttributeError, id="missing-division-by-zero"),
    p("missing % 0", 0, MissingAttributeError, id="missing-modulo-by-zero"),
    p("-2147483648 / -1", 0, MathError, id="division-overflow"),
    p("-2147483648 % -1", 0, id="remainder-of-int32-min"),
    p("2147483647 * -1", -2147483647, id="product-in-range"),
    p("temperature + 1", 32, id="string-attribute-cast-to-integer"),
    p("'abc' + 1", 0, CastError, complete=1, id="bad-string-to-integer"),
    p("true + 1", 2, id="boolean-to-integer"),
    # comparisons (3.4.2, 3.7)
    p("sequence = 10", True, id="equal-integer"),
    p("temperature = 31", True, id="string-cast-to-right-type"),
    p("10 = '10'", True, id="left-cast-to-string"),
    p("sequence <> 11", True, id="not-equal-angle"),
    p("sequence != 10", False, id="not-equal-bang"),
    p("TRUE = 'true' AND FALSE = 'false'", True, id="boolean-to-string-spec-example"),
    p("TRUE = 'TRUE' OR FALSE = 'FALSE'", False, id="boolean-strings-case-sensitive"),
    p("'abc' = 'ABC'", False, id="strings-case-sensitive"),
    p("true = 'yes'", False, id="string-literal-right-compares-as-string"),
    p("'yes' = true", False, CastError, id="failed-cast-for-equality"),
    # 3.7: a failed cast "returns an error along with a value of false" and
    # 3.3 keeps the flow: the comparison goes on with that value (complete
    # mode); the TCK's answer is the zero value of `=`.
    p("'yes' = false", False, CastError, complete=True, id="failed-cast-value-is-compared"),
    p("'TRUE' = true", True, id="left-cast-to-boolean"),
    p("true = 'TRUE'", False, id="left-cast-to-string"),
    p("TRUE = FALSE", False, id="boolean-equality"),
    p("'abc' != '123'", True, id="string-inequality"),
    p("2 <> 2", False, id="diamond"),
    p("missing != 2", False, MissingAttributeError, id="missing-inequality"),
    p("missing <= 2", False, MissingAttributeError, id="missing-order"),
    p("hop < ttl", True, id="order-compares-integers-not-strings"),
    p("int(hop) < int(ttl) and int(hop) < 1000", True, id="spec-hop-example"),
    p("2 <= 2", True, id="less-or-equal"),
    p("2 > 2", False, id="greater"),
    p("2 >= 3", False, id="greater-or-equal"),
    p("1 < 2 = true", True, id="comparison-left-to-right"),
    p("temperature > 30", True, id="greater-casts"),
    p("temperature >= 31 AND temperature <= 31", True, id="range"),
    p("'a' < 1", False, CastError, complete=True, id="order-bad-cast-uses-zero"),
    p("missing = ''", False, MissingAttributeError, id="missing-equality"),
    p("true AND (missing = '')", False, MissingAttributeError, id="spec-missing-example"),
    p("subject = firstname", False, id="attribute-to-attribute"),
    p("id = sequence", False, id="dynamic-types-compare-by-right"),
    # logic (3.4.2)
    p("true AND false", False, id="and"),
    p("false OR true", True, id="or"),
    p("true XOR true", False, id="xor"),
    p("true XOR false", True, id="xor-true"),
    p("false AND missing", False, id="and-short-circuits"),
    p("false and (1 != 1 / 0)", False, id="and-skips-the-math-error"),
    p("true or (1 != 1 / 0)", True, id="or-skips-the-math-error"),
    # The TCK: false with a MathError. Complete evaluation (4.1): 1 / 0 is 0
    # with a MathError, so 1 != 0 is true. (matches() is false either way.)
    p("true and (1 != 1 / 0)", False, MathError, complete=True, id="and-evaluates-right"),
    p("false or (1 != 1 / 0)", False, MathError, complete=True, id="or-evaluates-right"),
    p("missing OR true", False, MissingAttributeError, id="or-missing-left-is-zero"),
    p("true AND missing", False, MissingAttributeError, id="and-missing-right"),
    p("missing XOR true", False, MissingAttributeError, id="xor-missing"),
    p("true OR missing", True, id="or-short-circuits"),
    p("false AND true OR true", True, id="logic-left-to-right"),
    p("NOT true = false", True, id="not-binds-tighter-than-equals"),
    p("sequence AND true", True, id="integer-to-boolean"),
    # LIKE (3.4.3)
    p("subject LIKE 'greenhouse/%'", True, id="like-percent"),
    p("subject LIKE 'greenhouse/s_'", True, id="like-underscore"),
    p("subject LIKE 'greenhouse/'", False, id="like-needs-whole-match"),
    p("subject NOT LIKE 'x%'", True, id="not-like"),
    p("'abc%' LIKE 'abc\\%'", True, id="like-escaped-percent"),
    p("'abcd' LIKE 'abc\\%'", False, id="like-escaped-percent-no-wildcard"),
    p("'a_c' LIKE 'a\\_c'", True, id="like-escaped-underscore"),
    p("'héllo' LIKE 'h_llo'", True, id="like-unicode-character"),
    p("'line1\nline2' LIKE 'line1%'", True, id="like-percent-spans-newline"),
    p("'ab' LIKE '_b%'", True, id="spec-like-example"),
    p("'abc' LIKE 'a%b%c'", True, id="like-percents-empty"),
    p("'azzzbzzzc' LIKE 'a%b%c'", True, id="like-percents-runs"),
    p("'ac' LIKE 'abc'", False, id="like-literal-mismatch"),
    p("'' LIKE 'abc'", False, id="like-empty-value"),
    p("'' LIKE '%'", True, id="like-percent-matches-empty"),
    p("'' LIKE '_'", False, id="like-underscore-needs-one"),
    p("'.ab.cde.' LIKE '.%.%.'", True, id="like-dots-literal"),
    p("'ab.cde' LIKE '.%.%.'", False, id="like-dots-anchor"),
    p("'abc' LIKE 'a_b_c'", False, id="like-underscores-need-characters"),
    p("'azbzc' LIKE 'a_b_c'", True, id="like-underscores"),
    p("'azbzc' LIKE 'a\\_b\\_c'", False, id="like-escaped-underscores"),
    p("'a%b%c' LIKE 'a\\%b\\%c'", True, id="like-escaped-percents"),
    # 3.4.3 escapes only % and _: any other backslash is itself.
    p("'ab\\c' LIKE 'ab\\c'", True, id="like-other-backslash-is-literal"),
    p("'abc' LIKE 'ab\\c'", False, id="like-backslash-not-dropped"),
    p("'x\\%' LIKE 'x\\\\%'", True, id="like-backslash-then-escaped-percent"),
    p("'日本語' LIKE '日_語'", True, id="like-underscore-is-a-character"),
    p("'😀' LIKE '_'", True, id="like-astral-character"),
    p("234 LIKE '23_'", True, id="like-integer-cast"),
    p("2344 LIKE '23_'", False, id="like-integer-cast-too-long"),
    p("TRUE LIKE 'tr%'", True, id="like-boolean-cast"),
    p("FALSE LIKE 'tr%'", False, id="like-false-cast"),
    p("'abc' NOT LIKE 'abc'", False, id="not-like-exact"),
    p("blob LIKE 'AA%'", True, id="like-binary-as-base64"),
    p("sequence LIKE '1%'", True, id="like-casts-left-to-string"),
    p("missing LIKE '%'", False, MissingAttributeError, id="like-missing"),
    # EXISTS (3.4.4)
    p("EXISTS subject", True, id="exists"),
    p("EXISTS nothere", False, id="exists-absent"),
    p("exists id", True, id="exists-required"),
    p("EXISTS blob", True, id="exists-extension"),
    # IN (3.4.5)
    p("type IN ('a', 'dev.headwater.telemetry')", True, id="in"),
    p("type NOT IN ('a', 'b')", True, id="not-in"),
    p("sequence IN ('10', 11)", True, id="in-casts-to-left-type"),
    # 3.1: a Set is unordered, so every element is cast and every failed cast
    # reported, wherever the match is (the value stays the one found).
    p("sequence IN ('x', 10)", False, CastError, complete=True, id="in-reports-uncastable"),
    p("sequence IN (10, 'x')", False, CastError, complete=True, id="in-error-independent-of-order"),
    p("sequence IN ('x', 11)", False, CastError, id="in-uncastable-element"),
    p("missing IN ('a')", False, MissingAttributeError, id="in-missing"),
    # 3.2: the IN operation references a missing attribute: its zero value.
    p("id IN (missing, '42')", False, MissingAttributeError, id="in-missing-element"),
    p("1 + 1 IN (2)", 1, id="in-binds-tighter-than-plus"),
    p("id IN (sequence, 42)", True, id="in-with-expressions"),
    p("123 IN (1, 12, 123)", True, id="in-integers"),
    p("123 NOT IN (1, 12, 123)", False, id="not-in-integers"),
    p("'true' IN (TRUE, 'false')", True, id="in-element-cast-to-string"),
    p("'true' IN ('TRUE', 'false')", False, id="in-strings-case-sensitive"),
    p("TRUE IN ('true', 'false')", True, id="in-element-cast-to-boolean"),
    p("'TRUE' IN (TRUE, 'false')", False, id="in-boolean-element-as-string"),
    p("1 IN ('1', '2')", True, id="in-element-cast-to-integer"),
    p("'1' IN (1, 2)", True, id="in-integer-element-as-string"),
    p("0 IN ('x')", False, CastError, complete=True, id="in-failed-cast-uses-its-zero"),
    p("blob IN ('AAE=')", True, id="in-binary-as-base64"),
    # functions (3.5)
    p("LENGTH('héllo')", 5, id="length-characters"),
    p("LENGTH('😀')", 1, id="length-astral"),
    p("LENGTH('')", 0, id="length-empty"),
    p("LENGTH(TRUE)", 4, id="length-casts-boolean"),
    p("CONCAT('a')", "a", id="concat-one"),
    p("CONCAT('a', 'b', 'c')", "abc", id="concat-three"),
    p("CONCAT_WS(',', 'a')", "a", id="concat-ws-one"),
    p("CONCAT_WS()", False, MissingFunctionError, id="concat-ws-needs-delimiter"),
    p("TRIM('\u3000a b\u2003')", "a b", id="trim-unicode-whitespace"),
    p("TRIM('\x01a')", "\x01a", id="trim-keeps-control-characters"),
    p("LEFT('', 0)", "", id="left-empty"),
    p("RIGHT('abc', 10)", "abc", id="right-longer"),
    p("LEFT('abc', 'x')", "", CastError, id="left-length-cast-fails"),
    p("SUBSTRING('Quadratically', 5)", "ratically", id="substring-middle"),
    p("SUBSTRING('Sakila', -3)", "ila", id="substring-from-end"),
    p("SUBSTRING('Sakila', -5, 3)", "aki", id="substring-from-end-length"),
    p("SUBSTRING('Quadratically', 0, 1)", "", id="substring-zero-with-length"),
    p("SUBSTRING('abcdef', 6)", "f", id="substring-last"),
    p("SUBSTRING('abcdef', -6)", "abcdef", id="substring-first-from-end"),
    p("SUBSTRING('abcdef', 10, 10)", "", FunctionEvaluationError, id="substring-past-end-len"),
    p("SUBSTRING('abcdef', -10, 10)", "", FunctionEvaluationError, id="substring-before-len"),
    p("SUBSTRING('', 0)", "", id="substring-empty"),
    p("ABS(0)", 0, id="abs-zero"),
    p("ABS(10)", 10, id="abs-positive"),
    p("INT('+5')", 5, id="int-cast-plus-sign"),
    p("INT('-2147483648')", -2147483648, id="int-cast-minimum"),
    p("INT(' 5')", 0, CastError, id="int-cast-no-spaces"),
    p("INT('٣')", 0, CastError, id="int-cast-ascii-digits-only"),
    p("INT('1.5')", 0, CastError, id="int-cast-no-decimals"),
    p("INT(-1)", -1, id="int-identity"),
    p("BOOL('False')", False, id="bool-cast-mixed-case"),
    p("BOOL(-50)", True, id="bool-of-negative"),
    p("BOOL(TRUE)", True, id="bool-identity"),
    p("STRING('abc')", "abc", id="string-identity"),
    p("STRING(INT('007'))", "7", id="string-of-int-cast"),
    p("INT(STRING(7)) + 1", 8, id="nested-casts"),
    p("CONCAT()", "", id="concat-none"),
    p("CONCAT('a', 1, true)", "a1true", id="concat-casts"),
    p("CONCAT_WS('-', 'a', 'b', 'c')", "a-b-c", id="concat-ws"),
    p("CONCAT_WS('-')", "", id="concat-ws-only-delimiter"),
    p("LOWER('ÀBC')", "àbc", id="lower"),
    p("UPPER('abc')", "ABC", id="upper"),
    p("TRIM('  a b \t')", "a b", id="trim"),
    p("LEFT('abc', 2)", "ab", id="left"),
    p("LEFT('abc', 5)", "abc", id="left-longer"),
    p("LEFT('abc', -1)", "abc", FunctionEvaluationError, id="left-negative"),
    p("RIGHT('abc', 2)", "bc", id="right"),
    p("RIGHT('abc', 0)", "", id="right-zero"),
    p("RIGHT('abc', -1)", "abc", FunctionEvaluationError, id="right-negative"),
    p("SUBSTRING('abcdef', 3)", "cdef", id="substring"),
    p("SUBSTRING('abcdef', -2)", "ef", id="substring-negative"),
    p("SUBSTRING('abcdef', 0)", "", id="substring-zero"),
    p("SUBSTRING('abcdef', 7)", "", FunctionEvaluationError, id="substring-past-end"),
    p("SUBSTRING('abcdef', -7)", "", FunctionEvaluationError, id="substring-before-start"),
    p("SUBSTRING('abcdef', 2, 3)", "bcd", id="substring-length"),
    p("SUBSTRING('abcdef', -3, 2)", "de", id="substring-negative-length"),
    p("SUBSTRING('abcdef', 5, 10)", "ef", id="substring-length-too-long"),
    p("SUBSTRING('abcdef', 2, -1)", "", FunctionEvaluationError, id="substring-negative-len"),
    p("ABS(-5)", 5, id="abs"),
    p("ABS(-2147483648)", 2147483647, MathError, id="abs-overflow"),
    p("INT('12')", 12, id="int-cast"),
    p("INT('abc')", 0, CastError, id="int-cast-fails"),
    p("INT('99999999999')", 0, CastError, id="int-cast-overflow"),
    p("INT(true)", 1, id="int-of-boolean"),
    p("BOOL('TRUE')", True, id="bool-cast-any-case"),
    p("BOOL(0)", False, id="bool-of-zero"),
    p("BOOL('yes')", False, CastError, id="bool-cast-fails"),
    p("STRING(-12)", "-12", id="string-of-integer"),
    p("STRING(false)", "false", id="string-of-boolean"),
    p("length(subject)", 13, id="function-names-case-insensitive"),
    p("LENGTH(missing)", 0, MissingAttributeError, id="function-missing-argument"),
    p("NOPE(1)", False, MissingFunctionError, id="missing-function"),
    p("LENGTH('a', 'b')", False, MissingFunctionError, id="wrong-arity"),
    p("ABS('x')", 0, CastError, id="function-argument-cast"),
]


@pytest.mark.parametrize(("text", "value", "errors", "complete"), CASES)
def test_semantics(text: str, value: Any, errors: list[type], complete: Any) -> None:
    result = cesql.compile(text).evaluate(EVENT)
    assert (result.value, [type(e) for e in result.errors]) == (value, errors)
    assert type(result.complete) is type(complete) and result.complete == complete


@pytest.mark.parametrize(
    ("text", "reason", "column"),
    [
        pytest.param("", "empty expression", 1, id="empty"),
        pytest.param("a =", "expected a value, found the end of the expression", 4, id="dangling"),
        pytest.param("type = = 1", "expected a value, found '='", 8, id="double-operator"),
        pytest.param("a_b = 1", "'a_b' is not a valid attribute name", 1, id="underscore-id"),
        pytest.param("2147483648", "outside the 32-bit range", 1, id="int-too-large"),
        pytest.param("-2147483649", "outside the 32-bit range", 1, id="int-too-small"),
        pytest.param("'abc", "unterminated string literal", 1, id="unterminated"),
        pytest.param("a LIKE b", "the LIKE pattern must be a string literal", 8, id="like-ref"),
        pytest.param("x IN ()", "an IN set needs at least one element", 7, id="empty-set"),
        pytest.param("x IN 'a'", "expected '(' to open the IN set", 6, id="set-without-parens"),
        pytest.param("(1 + 2", "expected ')'", 7, id="unclosed-parenthesis"),
        pytest.param("a b", "unexpected 'b' after the expression", 3, id="trailing"),
        pytest.param("EXISTS 1 + 1", "EXISTS needs an attribute name, found '1'", 8, id="exists-1"),
        pytest.param("EXISTS", "EXISTS needs an attribute name", 7, id="exists-alone"),
        pytest.param("a = 1 ;", "unexpected character ';'", 7, id="bad-character"),
        pytest.param("+ a", "'+' must be followed directly by digits", 1, id="unary-plus"),
        pytest.param("F_1(2)", "'F_1' is not a valid function name", 1, id="bad-function-name"),
        pytest.param("LENGTH('a'", "expected ',' or ')' in the arguments", 11, id="open-call"),
        pytest.param("(" * 300 + "1" + ")" * 300, "nested deeper than 128", 129, id="too-deep"),
    ],
)
def test_parse_errors(text: str, reason: str, column: int) -> None:
    with pytest.raises(ParseError) as info:
        cesql.compile(text)
    assert reason in info.value.reason
    assert (info.value.line, info.value.column) == (1, column)
    assert "^" in str(info.value)


@pytest.mark.parametrize(("text", "value", "errors", "complete"), CASES)
def test_matches_agrees_with_evaluate(
    text: str, value: Any, errors: list[type], complete: Any
) -> None:
    # matches() has fast paths of its own (fail-fast mode); they must decide
    # exactly as the 1.2 rule applied to evaluate() does, for dicts and events.
    expression = cesql.compile(text)
    expected = value is True and not errors
    assert expression.matches(EVENT) is expected
    assert expression.matches(CloudEvent(EVENT)) is expected


@pytest.mark.parametrize(
    ("raw", "value", "errors"),
    [
        pytest.param(None, False, [MissingAttributeError], id="none-is-absent"),
        pytest.param(1.5, "1.5", [], id="float-as-string"),
        pytest.param(2**40, "1099511627776", [], id="int-beyond-32-bits-as-string"),
        pytest.param(b"\xff", "/w==", [], id="bytes-as-base64"),
        pytest.param(-(2**31), -(2**31), [], id="int32-min"),
    ],
)
def test_plain_mapping_values_are_cesql_values(raw: Any, value: Any, errors: list[type]) -> None:
    # 3.2: "If the value of the attribute or extension is not one of the
    # primitive CESQL types, it MUST be represented by the String type."
    assert evaluate("x", {"x": raw}) == (value, errors)


def test_an_int_beyond_32_bits_never_matches_an_integer() -> None:
    # The String "4294967296" overflows the cast to Integer: 0 and a CastError.
    assert evaluate("x = 0", {"x": 2**32}) == (False, [CastError])
    assert not cesql.compile("x = 0").matches({"x": 2**32})


def test_parse_error_on_a_later_line() -> None:
    with pytest.raises(ParseError) as info:
        cesql.compile("type = 'x'\n  AND = 1")
    assert (info.value.line, info.value.column) == (2, 7)
    assert str(info.value).endswith("  AND = 1\n        ^")


@pytest.mark.parametrize("name", ["id", "source", "specversion", "type"])
def test_exists_is_true_for_required_attributes_whatever_the_input(name: str) -> None:
    # 3.4.4: "EXISTS MUST always return true for the REQUIRED context
    # attributes because the input CloudEvent is always assumed valid".
    expression = cesql.compile(f"EXISTS {name}")
    assert expression.evaluate({}) == cesql.Result(True, [])
    assert expression.matches({})


def test_keywords_are_case_insensitive() -> None:
    assert evaluate("exists subject and not (sequence in (1, 2)) or false") == (True, [])


def test_matches_requires_true_and_no_errors() -> None:
    assert cesql.compile("sequence = 10").matches(EVENT)
    assert not cesql.compile("sequence").matches(EVENT)  # 10, not Boolean TRUE
    assert cesql.compile("true OR missing = 1").matches({}) is not False
    assert not cesql.compile("missing = 1 OR true").matches(EVENT)  # error recorded first
    assert not cesql.compile("'yes' = true").matches(EVENT)


def test_evaluates_cloudevents_and_mappings_alike() -> None:
    event = CloudEvent(
        {k: v for k, v in EVENT.items() if k not in ("blob",)}, b'{"temperature": 31}'
    )
    expression = cesql.compile("type = 'dev.headwater.telemetry' AND INT(temperature) > 30")
    assert expression.matches(event)
    assert expression.evaluate(event) == expression.evaluate(dict(event.attributes))
    with pytest.raises(TypeError, match="takes a CloudEvent or a mapping"):
        expression.evaluate(42)


def test_user_defined_functions_with_overloads() -> None:
    registry = cesql.default_functions.copy()
    registry.register("ADD_ONE", lambda x: x + 1, [cesql.INTEGER], cesql.INTEGER)
    registry.register("ADD_ONE", lambda x, y: x + y + 1, [cesql.INTEGER] * 2, cesql.INTEGER)
    registry.register(
        "JOIN_ALL", lambda a, b, *r: "".join((a, b, *r)), ["String"] * 3, "String", variadic=True
    )
    registry.register("BROKEN", lambda: 1 / 0, [], cesql.INTEGER)
    registry.register("LIAR", lambda: "not an int", [], cesql.INTEGER)

    def run(text: str) -> tuple[Any, list[type]]:
        result = cesql.compile(text, registry).evaluate(EVENT)
        return result.value, [type(e) for e in result.errors]

    assert run("ADD_ONE('41')") == (42, [])
    assert run("add_one(1, 2)") == (4, [])
    assert run("JOIN_ALL('a', 'b', 'c', 1)") == ("abc1", [])
    assert run("JOIN_ALL('a')") == (False, [MissingFunctionError])
    assert run("BROKEN()") == (0, [FunctionEvaluationError])
    assert run("LIAR()") == (0, [FunctionEvaluationError])
    # The default registry is untouched.
    assert evaluate("ADD_ONE(1)") == (False, [MissingFunctionError])


@pytest.mark.parametrize(
    ("register", "message"),
    [
        pytest.param(
            lambda r: r.register("LENGTH", len, ["String"], "Integer"),
            "LENGTH/1 is already defined",
            id="same-arity",
        ),
        pytest.param(
            lambda r: r.register("CONCAT", len, ["String"], "String", variadic=True),
            "only one variadic overload",
            id="two-variadic",
        ),
        pytest.param(
            lambda r: r.register("SUBSTRING", len, ["String"], "String", variadic=True),
            "more fixed parameters than the arity",
            id="variadic-ambiguous",
        ),
        pytest.param(
            lambda r: r.register("X", len, ["Float"], "String"), "unknown type", id="bad-type"
        ),
        pytest.param(
            lambda r: r.register("X1", len, [], "String"), "not a CESQL function name", id="digit"
        ),
        pytest.param(
            lambda r: r.register("_X", len, [], "String"), "not a CESQL function name", id="under"
        ),
        pytest.param(
            lambda r: r.register("X", len, [], "String", variadic=True),
            "needs a parameter type",
            id="variadic-without-parameters",
        ),
        pytest.param(
            lambda r: (
                r.register("ABC", len, ["String"] * 3, "Integer", variadic=True),
                r.register("ABC", len, ["String"] * 3, "Integer"),
            ),
            "more fixed parameters than the arity",
            id="spec-invalid-example",
        ),
    ],
)
def test_invalid_function_definitions_are_rejected(register: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register(cesql.default_functions.copy())


def test_user_function_reports_an_error_with_its_value() -> None:
    # 3.5.3: a function in error "MUST still return a valid return value".
    def safe_div(x: int, y: int) -> int:
        if y == 0:
            raise cesql.FunctionFailed(FunctionEvaluationError("SAFE_DIV: y is 0"), -1)
        return x // y

    registry = cesql.default_functions.copy()
    registry.register("safe_div", safe_div, [cesql.INTEGER, cesql.INTEGER], cesql.INTEGER)
    error = FunctionEvaluationError("SAFE_DIV: y is 0")
    # The whole expression: the function's own answer stands (as ABS's in 3.5.2).
    assert cesql.compile("SAFE_DIV(sequence, 0)", registry).evaluate(EVENT) == cesql.Result(
        -1, [error]
    )
    # Inside another operator: the TCK's zero value; -1 = -1 in complete mode.
    expression = cesql.compile("SAFE_DIV(sequence, 0) = -1", registry)
    result = expression.evaluate(EVENT)
    assert result == cesql.Result(False, [error])
    assert result.complete is True
    assert not expression.matches(EVENT)
    assert cesql.compile("Safe_Div('9', 2)", registry).evaluate(EVENT).value == 4


def test_user_function_arguments_are_cast_and_missing_ones_skip_the_call() -> None:
    calls: list[tuple[Any, ...]] = []

    def record(*args: Any) -> bool:
        calls.append(args)
        return True

    registry = cesql.default_functions.copy()
    registry.register("REC", record, [cesql.STRING, cesql.BOOLEAN], cesql.BOOLEAN, variadic=True)
    assert cesql.compile("REC(sequence, 'TRUE', 1)", registry).matches(EVENT)
    assert calls == [("10", True, True)]
    assert cesql.compile("REC(missing)", registry).evaluate(EVENT) == cesql.Result(
        False, [MissingAttributeError("the event has no attribute 'missing'")]
    )
    assert len(calls) == 1  # 3.2: the zero value, without calling the function


def test_the_spec_example_of_valid_overloads() -> None:
    # 3.5: ABC(x), ABC(x, y) and ABC(x, y, z, ...) may live together.
    registry = cesql.default_functions.copy()
    registry.register("ABC", lambda x: 1, ["String"], "Integer")
    registry.register("ABC", lambda x, y: 2, ["String"] * 2, "Integer")
    registry.register("ABC", lambda *xs: len(xs), ["String"] * 4, "Integer", variadic=True)
    values = [
        cesql.compile(f"ABC({', '.join(['1'] * n)})", registry).evaluate({}).value for n in range(6)
    ]
    assert values == [False, 1, 2, 3, 4, 5]  # no ABC() at all: MissingFunctionError


def test_register_function_extends_the_default_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cesql, "default_functions", cesql.default_functions.copy())
    cesql.register_function("TWICE", lambda s: s + s, [cesql.STRING], cesql.STRING)
    assert cesql.compile("TWICE('ab')").evaluate({}).value == "abab"


def test_a_registry_resolves_at_compile_time() -> None:
    registry = cesql.default_functions.copy()
    expression = cesql.compile("LATER(1)", registry)
    registry.register("LATER", lambda x: x, [cesql.INTEGER], cesql.INTEGER)
    assert expression.evaluate({}).value is False  # compiled before LATER existed
    assert cesql.compile("LATER(1)", registry).evaluate({}).value == 1


@pytest.mark.parametrize(
    ("text", "warnings"),
    [
        pytest.param("type = 'x'", [], id="none"),
        pytest.param("false AND 'abc' + 1 = 1", [CastError], id="failed-literal-cast"),
        pytest.param("NOPE(1) OR NOPE(1)", [MissingFunctionError], id="missing-function-once"),
        pytest.param("sequence % 0 = 0", [MathError], id="modulo-by-literal-zero"),
        pytest.param("LENGTH(1, 2) OR 1 / '0' = 0", [MissingFunctionError, MathError], id="two"),
    ],
)
def test_compile_time_warnings(text: str, warnings: list[type]) -> None:
    # 3.3: "Whenever possible, some error checks SHOULD be done at compile time".
    assert [type(w) for w in cesql.compile(text).warnings] == warnings


def test_result_of_an_attribute_of_each_type() -> None:
    assert evaluate("enabled") == (True, [])
    assert cesql.compile("sequence").type is None  # decided by the event
    assert cesql.compile("sequence + 1").type == cesql.INTEGER


@pytest.mark.parametrize(
    ("text", "value", "errors"),
    [
        # The CESQL TCK's answers where an error occurs (binary_logical_operators,
        # binary_math_operators, integer_builtin_functions, string_builtin_functions):
        # the zero value of the expression's type, or the function's own answer
        # when the function is the whole expression.
        pytest.param("true and (1 != 1 / 0)", False, [MathError], id="and-right-error"),
        pytest.param("false or (1 != 1 / 0)", False, [MathError], id="or-right-error"),
        pytest.param("5 / 0", 0, [MathError], id="division"),
        pytest.param("missing / 0", 0, [MissingAttributeError], id="missing-division"),
        pytest.param("ABS(-2147483648)", 2147483647, [MathError], id="abs-own-answer"),
        pytest.param("LEFT('abc', -2)", "abc", [FunctionEvaluationError], id="left-own-answer"),
        pytest.param("RIGHT('abc', -2)", "abc", [FunctionEvaluationError], id="right-own-answer"),
        pytest.param("CONCAT_WS()", False, [MissingFunctionError], id="missing-function"),
        pytest.param("-missing", 0, [MissingAttributeError], id="negate-missing"),
        pytest.param("missing", False, [MissingAttributeError], id="bare-missing"),
        # A function whose argument failed does not answer for itself.
        pytest.param("ABS(1 / 0)", 0, [MathError], id="abs-of-failed-argument"),
        pytest.param("LEFT(missing, -2)", "", [MissingAttributeError], id="left-missing"),
        pytest.param("LENGTH(LEFT('abc', -2))", 0, [FunctionEvaluationError], id="nested"),
    ],
)
def test_after_an_error_the_value_is_the_one_the_tck_expects(
    text: str, value: Any, errors: list[type]
) -> None:
    assert evaluate(text, {}) == (value, errors)


def test_strings_a_function_builds_are_bounded() -> None:
    big = "x" * (cesql.MAX_STRING_LENGTH // 2 + 1)
    concat = cesql.compile("LENGTH(CONCAT(subject, subject))").evaluate({"subject": big})
    assert concat.value == 0
    [error] = concat.errors
    assert isinstance(error, FunctionEvaluationError)
    assert error.message == (
        f"CONCAT: the result would be {2 * len(big)} characters, over the limit of "
        f"{cesql.MAX_STRING_LENGTH}"
    )
    joined = cesql.compile("CONCAT_WS(subject, 'a', 'b', 'c')").evaluate({"subject": big})
    assert (joined.value, [type(e) for e in joined.errors]) == ("", [FunctionEvaluationError])
    # Exactly at the limit is fine.
    half = "y" * (cesql.MAX_STRING_LENGTH // 2)
    assert cesql.compile("LENGTH(CONCAT(s, s))").evaluate({"s": half}).value == len(half) * 2
    # A case mapping may make a string longer than its argument ("ß" is "SS").
    upper = cesql.compile("UPPER(s)").evaluate({"s": "ß" * (cesql.MAX_STRING_LENGTH // 2 + 1)})
    assert (upper.value, [type(e) for e in upper.errors]) == ("", [FunctionEvaluationError])


def test_the_probe_expression_is_cheap_on_a_large_subject() -> None:
    # 2,000 times the subject, once: 2 GB before the bound; now the lengths are
    # added up and the CONCAT refused, without building anything.
    expression = cesql.compile("LENGTH(CONCAT(" + ", ".join(["subject"] * 2000) + ")) > 0")
    event = {**EVENT, "subject": "s" * 1_000_000}
    result = expression.evaluate(event)
    assert (result.value, [type(e) for e in result.errors]) == (False, [FunctionEvaluationError])
    assert not expression.matches(event)


@pytest.mark.parametrize(
    ("text", "passes"),
    [
        pytest.param("subject = 'x' AND sequence > 3", 0, id="comparisons-are-free"),
        pytest.param("LENGTH(subject) > 3 AND INT(temperature) > 30", 0, id="constant-time"),
        pytest.param("LOWER(subject) = 'x'", 1, id="a-copy"),
        pytest.param("subject LIKE 'greenhouse/%'", 0, id="prefix-like"),
        pytest.param("subject LIKE '%/s1/%'", 1, id="inner-like"),
        pytest.param("subject LIKE '%s__x%'", 4, id="inner-like-with-underscores"),
        pytest.param("CONCAT(LOWER(a), UPPER(b))", 3, id="nested-copies"),
    ],
)
def test_string_passes_are_estimated_at_compile_time(text: str, passes: int) -> None:
    assert cesql.compile(text).string_passes == passes


def test_an_expression_that_may_cost_too_much_is_refused() -> None:
    def copies(n: int) -> str:
        return "'x' IN (" + ", ".join(["LOWER(subject)"] * n) + ")"

    cesql.compile(copies(cesql.MAX_STRING_PASSES))
    with pytest.raises(ParseError) as info:
        cesql.compile(copies(cesql.MAX_STRING_PASSES + 1))
    assert info.value.reason.startswith(
        f"the expression may read or copy a whole string {cesql.MAX_STRING_PASSES + 1} times"
    )
    # A LIKE whose inner `_` segment is long may try each character at each position.
    with pytest.raises(ParseError, match="a whole string 201 times"):
        cesql.compile("subject LIKE '%" + "a_" * 100 + "b%'")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("9" * 5000, id="long-digits"),
        pytest.param("-" + "0" * 5000 + "7", id="long-leading-zeros"),
        pytest.param("t" * 1_000_000, id="long-text"),
    ],
)
def test_long_strings_cast_in_one_pass_and_never_raise(raw: str) -> None:
    for text in ("x > 3", "INT(x) = 7", "x AND true", "x = 7"):
        expression = cesql.compile(text)
        expression.evaluate({"x": raw})
        expression.matches({"x": raw})
    assert evaluate("INT(x)", {"x": "-" + "0" * 5000 + "7"}) == (-7, [])
    assert evaluate("INT(x)", {"x": "9" * 5000}) == (0, [CastError])
