"""CESQL v1: the CloudEvents SQL expression language (shared/specs/cesql/spec.md).

``compile(text)`` parses once and builds closures; ``Expression.evaluate``
runs them against a CloudEvent (or a mapping of attribute names to values)
and returns a :class:`Result` (value and errors); it never raises.
``Expression.matches`` is the filter rule of the Subscriptions API (1.2): true
only for a Boolean TRUE with no error.

    >>> expr = compile("type = 'dev.headwater.telemetry' AND INT(temperature) > 30")
    >>> expr.matches({"type": "dev.headwater.telemetry", "temperature": "31"})
    True
"""

from __future__ import annotations

import base64
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
from headwater.cesql.parser import parse
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

    __slots__ = ("_fn", "_zero", "matches", "text", "type")

    def __init__(self, text: str, fn: Fn, result_type: str | None) -> None:
        self.text = text
        self._fn = fn
        self.type = result_type
        # 3.2: when the type cannot be determined, Boolean is assumed.
        self._zero = ZERO[result_type or BOOLEAN]
        self.matches: Callable[[Any], bool] = _matcher(fn)
        """True only when the value is Boolean TRUE and no error occurred (spec.md 1.2).

        A closure rather than a method: it is the hot path of every Trigger."""

    def evaluate(self, event: Any) -> Result:
        """Evaluate against a CloudEvent or a mapping of attribute name to value."""
        attributes = _attributes(event)
        errors: list[CesqlError] = []
        try:
            value = self._fn(attributes, errors)
        except Exception as exc:  # a defect here must still not escape evaluate()
            errors.append(GenericError(f"{type(exc).__name__}: {exc}"))
            value = self._zero
        if value is MISSING:
            value = self._zero
        elif type(value) is bytes:
            value = base64.b64encode(value).decode("ascii")
        elif type(value) not in (bool, int, str):
            errors.append(GenericError(f"unexpected value {value!r}"))
            value = self._zero
        return Result(value, errors)

    def __call__(self, event: Any) -> bool:
        return self.matches(event)

    def __repr__(self) -> str:
        return f"cesql.compile({self.text!r})"


def _matcher(fn: Fn) -> Callable[[Any], bool]:
    def matches(event: Any) -> bool:
        attributes = event if type(event) is dict else _attributes(event)
        errors: list[CesqlError] = []
        try:
            return fn(attributes, errors) is True and not errors
        except Exception:  # never expected; a filter that cannot decide does not match
            return False

    return matches


def compile(text: str, functions: FunctionRegistry | None = None) -> Expression:
    """Parse and compile ``text``; :class:`ParseError` (line, column, caret) if invalid."""
    tree = parse(text)
    fn, result_type = Compiler(functions or default_functions).compile(tree)
    return Expression(text, fn, result_type)
