r"""CESQL v1: the CloudEvents SQL expression language (shared/specs/cesql/spec.md).

``compile(text)`` parses once (a hand-written lexer and parser following
CESQLLexer.g4/CESQLParser.g4) and builds closures. ``Expression.evaluate``
runs them against a CloudEvent or a mapping of attribute names to values, and
returns a :class:`Result`: the value the CESQL TCK expects, every error, and
the value of the complete evaluation mode of 4.1; it never raises.
``Expression.matches`` is the filter rule of the Subscriptions API (1.2), true
only for a Boolean TRUE with no error, evaluated fail-fast with the common
shapes inlined: it is a Trigger's hot path.

    >>> expr = compile("type = 'dev.headwater.telemetry' AND INT(temperature) > 30")
    >>> expr.matches({"type": "dev.headwater.telemetry", "temperature": "31"})
    True

Where the spec leaves room (each choice is tested):

- AND/OR/XOR associate left to right, as 3.6 says, although CESQLParser.g4
  marks them ``<assoc=right>``: ``false AND true OR true`` is true.
- ``1-1`` is a subtraction (2.3's EBNF), not ``1`` followed by ``-1`` as the
  lexer grammar alone would read it.
- Identifiers with upper-case letters read as their lower-case names
  (``EXISTS SOURCE``), as the TCK and the other SDKs do: CloudEvents attribute
  names are lower-case (2.2), so nothing else could be meant. Longer names
  than the 20 characters 2.2 advises (SHOULD NOT) are accepted, as events may
  carry such extensions.
- Strings escape their own quote with a backslash or by doubling it (the
  lexer grammar allows both); other backslashes are kept, and LIKE treats
  only ``\%`` and ``\_`` as escapes (3.4.3).
- After an error, the value is the zero value of the expression's type, as
  the TCK expects (``true AND (1 != 1 / 0)`` is false with a MathError),
  unless the error is the answer of the function that is the whole
  expression (``ABS(-2147483648)`` is 2147483647). The spec's text (3.3,
  3.2) reads as the complete mode, where every operator goes on with what
  its operands gave: that value is Result.complete (``'yes' = false`` is
  true there: the failed cast gives false, 3.7). ``NOT 10`` is false:
  Integer to Boolean is a cast an engine MUST support (3.7).
- A missing attribute makes the operator or function that reads it return
  its own zero value (3.2); in the complete mode the operators around it go
  on as usual. ``x IN (missing, ...)`` is false.
- IN casts and compares every element of the set (3.1: a Set is unordered),
  so a failed cast is reported wherever the match is.
- Attribute values that are not CESQL values are represented as Strings
  (3.2): Binary as Base64; for plain mappings, None means absent.
- EXISTS is true for the four REQUIRED attributes whatever the input holds
  (3.4.4: the input is "always assumed valid").
- Expressions nested deeper than 128 levels, longer than 64 KiB, or whose
  evaluation could read or copy whole strings more than 128 times
  (MAX_STRING_PASSES) are a ParseError; a function never builds a String
  longer than MAX_STRING_LENGTH (it returns '' with a FunctionEvaluationError).
  What one event can cost a filter is bounded when it is compiled.
- Integer literals are 32-bit (2.2), whatever their length: a literal of
  thousands of digits is a ParseError at its position, never Python's own
  ValueError. A decimal (``23.5``) is a ParseError that says CESQL v1 has
  only integers.
- Against the CloudEvents CESQL TCK, the answers differ only where its
  expected values predate 3.2 and 3.7 (a bare missing attribute, ``NOT
  10``); ``matches`` agrees with every TCK case.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from headwater.cesql._values import MISSING, Fn
from headwater.cesql.compiler import Compiler, read_attributes, string_passes
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
    MAX_STRING_LENGTH,
    STRING,
    ZERO,
    FunctionFailed,
    FunctionRegistry,
)
from headwater.cesql.parser import MAX_LENGTH, Node, parse
from headwater.cloudevents import CloudEvent

__all__ = [
    "BOOLEAN",
    "INTEGER",
    "MAX_LENGTH",
    "MAX_STRING_LENGTH",
    "MAX_STRING_PASSES",
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
    """What an evaluation returns: a value of the CESQL type system and the errors.

    ``value`` is what the CESQL TCK expects: with no error, the expression's
    value; after an error, the zero value of the expression's type (4.1, fail
    fast), unless the error is the outermost function's own answer
    (``ABS(-2147483648)`` is 2147483647 with a MathError, 3.5.2). ``errors``
    lists every error met, in order (the first is the one fail fast stops at).
    ``complete`` is the value in the complete evaluation mode of 4.1, where
    every operator goes on with what its operands gave despite their errors
    (``true AND (1 != 1 / 0)`` is true there, false as ``value``).
    """

    value: Value
    errors: list[CesqlError]
    complete: Value | None = field(default=None, compare=False)


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

    __slots__ = (
        "_arguments",
        "_fn",
        "_zero",
        "attributes",
        "matches",
        "string_passes",
        "text",
        "type",
        "warnings",
    )

    def __init__(
        self,
        text: str,
        fn: Fn,
        result_type: str | None,
        matches: Matcher,
        warnings: tuple[CesqlError, ...] = (),
        root_arguments: Sequence[Fn] | None = None,
        string_passes: int = 0,
        attributes: frozenset[str] = frozenset(),
    ) -> None:
        self.text = text
        self.attributes = attributes
        """The attributes the expression reads, where an absent one is a
        MissingAttributeError (the operand of EXISTS is not one of them)."""
        self.string_passes = string_passes
        """At most how many times an evaluation reads or copies a whole String
        (see compiler.string_passes); at most MAX_STRING_PASSES."""
        self._arguments = root_arguments
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
        self._zero: Value = ZERO[result_type or BOOLEAN]
        self.matches: Matcher = matches
        """True only when the value is Boolean TRUE and no error occurred (spec.md 1.2).

        Evaluated in fail-fast mode (4.1), as 1.2 recommends for filters; a
        plain attribute rather than a method, as it is the hot path of every
        Trigger. Raises TypeError (like evaluate) for an event that is neither
        a CloudEvent nor a mapping."""

    def evaluate(self, event: Any) -> Result:
        """Evaluate against a CloudEvent or a mapping of attribute name to value.

        The value, every error that occurred, and the complete evaluation's
        value (see Result); never raises for any event (TypeError if ``event``
        is not an event at all).
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
        if not errors:
            return Result(value, errors, value)
        return Result(self._failed(attributes, value), errors, value)

    def _failed(self, attributes: Mapping[str, Any], value: Value) -> Value:
        """The value after an error, as the CESQL TCK expects it.

        The TCK answers ``true AND (1 != 1 / 0)`` with false: the operator
        whose operand failed gives its zero value, and so does every operator
        around it, up to the expression's own type (4.1's fail fast mode). The
        spec's text (3.3: errors do not change the flow; 3.2: only "the
        subexpression" reading a missing attribute is zero) reads as the
        complete mode, where that expression is true: where the two disagree,
        the TCK decides, and the complete value stays in Result.complete. The
        one value that survives is a function's own answer in error when it
        is the whole expression and its arguments had no error (3.5.2:
        ``ABS(-2147483648)`` "returns 2147483647 as well as a MathError").
        """
        if self._arguments is None:
            return self._zero
        scratch: list[CesqlError] = []
        try:
            for argument in self._arguments:
                argument(attributes, scratch)
                if scratch:
                    return self._zero
        except Exception:  # as in evaluate(): a defect is an error, never a crash
            return self._zero
        return value

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


MAX_STRING_PASSES = 128
"""The most times one evaluation may read or copy a whole String (string
functions, LIKE patterns that search). Each pass may cost a whole attribute
value, up to the largest event (1 MiB by default), so this bounds what one
event may cost a filter to about a tenth of a second. Filters written by
people make a handful; an expression over the limit is refused when compiled
(a Trigger with it is a config error), not slowed down when events arrive."""


def compile(text: str, functions: FunctionRegistry | None = None) -> Expression:
    """Parse and compile ``text``; :class:`ParseError` (line, column, caret) if invalid.

    ``functions`` is the registry to resolve function calls in (default:
    :data:`default_functions`); resolution happens here, once. An expression
    whose evaluation could cost more than MAX_STRING_PASSES is a ParseError too.
    """
    tree = parse(text)
    registry = functions or default_functions
    passes = string_passes(tree, registry)
    if passes > MAX_STRING_PASSES:
        raise ParseError(
            f"the expression may read or copy a whole string {passes} times per event "
            f"(string functions, LIKE patterns with a wildcard inside); the limit is "
            f"{MAX_STRING_PASSES}: use fewer (an IN set costs nothing of the kind)",
            text,
            0,
        )
    compiler = Compiler(registry, root=tree)
    fn, result_type = compiler.compile(tree)
    matches = _matcher(compiler, tree, fn, result_type)
    return Expression(
        text,
        fn,
        result_type,
        matches,
        tuple(compiler.warnings),
        compiler.root_arguments,
        passes,
        read_attributes(tree),
    )
