r"""CESQL v1: the CloudEvents SQL expression language (shared/specs/cesql/spec.md).

``compile(text)`` parses once (a hand-written lexer and parser following
CESQLLexer.g4/CESQLParser.g4) and builds closures. ``Expression.evaluate``
runs them in the complete evaluation mode of 4.1 against a CloudEvent or a
mapping of attribute names to values, and returns a :class:`Result` (value
and every error); it never raises. ``Expression.matches`` is the filter rule
of the Subscriptions API (1.2), true only for a Boolean TRUE with no error,
evaluated fail-fast with the common shapes inlined: it is a Trigger's hot path.

    >>> expr = compile("type = 'dev.headwater.telemetry' AND INT(temperature) > 30")
    >>> expr.matches({"type": "dev.headwater.telemetry", "temperature": "31"})
    True

Where the spec leaves room (each choice is tested):

- AND/OR/XOR associate left to right, as 3.6 says, although CESQLParser.g4
  marks them ``<assoc=right>``: ``false AND true OR true`` is true.
- ``1-1`` is a subtraction (2.3's EBNF), not ``1`` followed by ``-1`` as the
  lexer grammar alone would read it.
- Identifiers with upper-case letters are a ParseError: 2.2 says they MUST
  follow the attribute naming convention, so they could never match. Longer
  names than the 20 characters 2.2 advises (SHOULD NOT) are accepted, as
  events may carry such extensions.
- Strings escape their own quote with a backslash or by doubling it (the
  lexer grammar allows both); other backslashes are kept, and LIKE treats
  only ``\%`` and ``\_`` as escapes (3.4.3).
- A failed cast gives the value the 3.7 table names (0, false) with a
  CastError, and the operator goes on with it (3.3): ``'yes' = false`` is
  true with a CastError. ``NOT 10`` is false: Integer to Boolean is a cast
  an engine MUST support (3.7).
- A missing attribute makes the operator or function that reads it return
  its own zero value (3.2); the operators around it go on as usual.
  ``x IN (missing, ...)`` is false.
- IN casts and compares every element of the set (3.1: a Set is unordered),
  so a failed cast is reported wherever the match is.
- Attribute values that are not CESQL values are represented as Strings
  (3.2): Binary as Base64; for plain mappings, None means absent.
- EXISTS is true for the four REQUIRED attributes whatever the input holds
  (3.4.4: the input is "always assumed valid").
- Expressions nested deeper than 128 levels are a ParseError.
- Against the CloudEvents CESQL TCK, the answers differ only where its
  expected values assume fail-fast evaluation (``true AND (1 != 1 / 0)`` is
  true with a MathError here) or predate 3.2 and 3.7 (a bare missing
  attribute, ``NOT 10``); ``matches`` agrees with every TCK case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headwater.cesql.compiler import MISSING, Compiler, Fn
from headwater.cesql.errors import (
    CastError,
    CesqlError,
    FunctionEvaluationError,
    GenericError,
    MathError,
    MissingAttributeError,
    MissingFunctionError,
    ParseError,
)
from headwater.cesql.functions import (
    BOOLEAN,
    BUILTINS,
    INTEGER,
    STRING,
    ZERO,
    FunctionFailed,
    FunctionRegistry,
)
from headwater.cesql.parser import Node, parse
from headwater.cloudevents import CloudEvent

__all__ = [
    "BOOLEAN",
    "INTEGER",
    "STRING",
    "CastError",
    "CesqlError",
    "Expression",
    "FunctionEvaluationError",
    "FunctionFailed",
    "FunctionRegistry",
    "GenericError",
    "MathError",
    "MissingAttributeError",
    "MissingFunctionError",
    "ParseError",
    "Result",
    "compile",
    "default_functions",
    "format_value",
    "register_function",
]

Value = bool | int | str

default_functions = BUILTINS
"""The registry ``compile`` uses unless given another: the built-ins, plus
whatever :func:`register_function` adds."""


def register_function(
    name: str,
    implementation: Callable[..., Any],
    parameters: Sequence[str],
    returns: str,
    *,
    variadic: bool = False,
) -> None:
    """Add a user-defined function to the default registry (see FunctionRegistry)."""
    default_functions.register(name, implementation, parameters, returns, variadic=variadic)


@dataclass(frozen=True, slots=True)
class Result:
    """What an evaluation returns: a value of the CESQL type system and the errors."""

    value: Value
    errors: list[CesqlError]


def _attributes(event: Any) -> Mapping[str, Any]:
    if type(event) is dict:
        return event
    if type(event) is CloudEvent:
        return event._attributes  # read the attributes without a copy
    if isinstance(event, Mapping):
        return event
    raise TypeError(f"evaluate() takes a CloudEvent or a mapping, not {type(event).__name__}")


class Expression:
    """A compiled CESQL expression. Cheap to evaluate, safe to share across tasks."""

    __slots__ = ("_fn", "_zero", "matches", "text", "type", "warnings")

    def __init__(
        self,
        text: str,
        fn: Fn,
        result_type: str | None,
        matches: Matcher,
        warnings: tuple[CesqlError, ...] = (),
    ) -> None:
        self.text = text
        self.warnings = warnings
        """Errors found at compile time that every evaluation reaching their
        part of the expression reports (a cast of a literal that fails, a
        function that does not exist, a division by a literal 0): spec.md 3.3
        asks for such checks "whenever possible". They do not stop the
        expression from compiling, as it stays valid CESQL."""
        self._fn = fn
        self.type = result_type
        """Boolean, Integer, String, or None when the event decides (a bare attribute)."""
        # 3.2: when the type cannot be determined, Boolean is assumed.
        self._zero = ZERO[result_type or BOOLEAN]
        self.matches: Matcher = matches
        """True only when the value is Boolean TRUE and no error occurred (spec.md 1.2).

        Evaluated in fail-fast mode (4.1), as 1.2 recommends for filters; a
        plain attribute rather than a method, as it is the hot path of every
        Trigger. Raises TypeError (like evaluate) for an event that is neither
        a CloudEvent nor a mapping."""

    def evaluate(self, event: Any) -> Result:
        """Evaluate against a CloudEvent or a mapping of attribute name to value.

        Complete evaluation mode (4.1): the value and every error that
        occurred; never raises for any event (TypeError if ``event`` is not
        an event at all).
        """
        attributes = _attributes(event)
        errors: list[CesqlError] = []
        try:
            value = self._fn(attributes, errors)
        except Exception as exc:  # a defect here must still not escape evaluate()
            errors.append(GenericError(f"{type(exc).__name__}: {exc}"))
            value = self._zero
        if value is MISSING:
            value = self._zero
        return Result(value, errors)

    def __call__(self, event: Any) -> bool:
        return self.matches(event)

    def __repr__(self) -> str:
        return f"cesql.compile({self.text!r})"


Matcher = Callable[[Any], bool]


def _matcher(compiler: Compiler, tree: Node, fn: Fn, result_type: str | None) -> Matcher:
    if result_type != BOOLEAN:
        # An Integer or String can never be Boolean TRUE; a bare attribute can.
        def matches_value(event: Any) -> bool:
            attributes = _attributes(event)
            errors: list[CesqlError] = []
            try:
                return fn(attributes, errors) is True and not errors
            except Exception:  # never expected; a filter that cannot decide does not match
                return False

        return matches_value
    tests = tuple(compiler.test(node) for node in compiler.conjuncts(tree))
    if len(tests) == 1:
        (test,) = tests

        def matches_one(event: Any) -> bool:
            if type(event) is not dict:
                event = event._attributes if type(event) is CloudEvent else _attributes(event)
            return test(event) is True

        return matches_one

    def matches_all(event: Any) -> bool:
        if type(event) is not dict:
            event = event._attributes if type(event) is CloudEvent else _attributes(event)
        # 3.6: AND short-circuits; fail fast on the first operand not TRUE.
        for test in tests:  # noqa: SIM110 (a plain loop is faster than all() here)
            if test(event) is not True:
                return False
        return True

    return matches_all


def format_value(value: Value) -> str:
    """``value`` written as a CESQL literal: ``true``, ``-3``, ``'it''s'`` (2.2)."""
    if type(value) is bool:
        return "true" if value else "false"
    if type(value) is int:
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def compile(text: str, functions: FunctionRegistry | None = None) -> Expression:
    """Parse and compile ``text``; :class:`ParseError` (line, column, caret) if invalid.

    ``functions`` is the registry to resolve function calls in (default:
    :data:`default_functions`); resolution happens here, once.
    """
    tree = parse(text)
    compiler = Compiler(functions or default_functions)
    fn, result_type = compiler.compile(tree)
    matches = _matcher(compiler, tree, fn, result_type)
    return Expression(text, fn, result_type, matches, tuple(compiler.warnings))
