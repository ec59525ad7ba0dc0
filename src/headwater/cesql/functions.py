"""CESQL functions: the built-ins (spec.md 3.5) and a registry for user functions.

A function is a name, parameter types and a return type; ``variadic`` means
its last parameter type repeats (zero or more times). Overloading is by arity
(3.5), with at most one variadic overload whose fixed parameters outnumber
every other overload's arity. An implementation receives arguments already
cast to the parameter types and returns a value of the return type; it
signals an error by raising :class:`FunctionEvaluationError` or
:class:`MathError` with ``value`` set to the result to use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from headwater.cesql.errors import CesqlError, FunctionEvaluationError, MathError

BOOLEAN, INTEGER, STRING = "Boolean", "Integer", "String"
TYPES = (BOOLEAN, INTEGER, STRING)
ZERO: dict[str, Any] = {BOOLEAN: False, INTEGER: 0, STRING: ""}
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class FunctionFailed(Exception):
    """Raised by an implementation: ``error`` to report, ``value`` to return."""

    def __init__(self, error: CesqlError, value: Any) -> None:
        self.error = error
        self.value = value
        super().__init__(error.message)


@dataclass(frozen=True, slots=True)
class Function:
    name: str
    parameters: tuple[str, ...]
    returns: str
    implementation: Callable[..., Any]
    variadic: bool = False

    def accepts(self, arity: int) -> bool:
        if self.variadic:
            return arity >= len(self.parameters) - 1
        return arity == len(self.parameters)

    def parameter(self, index: int) -> str:
        if self.variadic and index >= len(self.parameters) - 1:
            return self.parameters[-1]
        return self.parameters[index]


class FunctionRegistry:
    """Functions by name (case-insensitive) and arity."""

    def __init__(self, functions: Sequence[Function] = ()) -> None:
        self._by_name: dict[str, list[Function]] = {}
        for function in functions:
            self.add(function)

    def copy(self) -> FunctionRegistry:
        return FunctionRegistry([f for fs in self._by_name.values() for f in fs])

    def register(
        self,
        name: str,
        implementation: Callable[..., Any],
        parameters: Sequence[str],
        returns: str,
        *,
        variadic: bool = False,
    ) -> None:
        """Add a function; ``ValueError`` if it clashes with an overload (spec.md 3.5)."""
        self.add(Function(name.upper(), tuple(parameters), returns, implementation, variadic))

    def add(self, function: Function) -> None:
        for kind in (*function.parameters, function.returns):
            if kind not in TYPES:
                raise ValueError(f"{function.name}: unknown type {kind!r}; use one of {TYPES}")
        if function.variadic and not function.parameters:
            raise ValueError(f"{function.name}: a variadic function needs a parameter type")
        existing = self._by_name.setdefault(function.name.upper(), [])
        fixed = len(function.parameters) - (1 if function.variadic else 0)
        for other in existing:
            other_fixed = len(other.parameters) - (1 if other.variadic else 0)
            if function.variadic and other.variadic:
                raise ValueError(f"{function.name}: only one variadic overload is allowed")
            if (function.variadic and fixed <= other_fixed) or (
                other.variadic and other_fixed <= fixed
            ):
                raise ValueError(
                    f"{function.name}: a variadic overload needs more fixed parameters than "
                    "the arity of every other overload (spec.md 3.5)"
                )
            if not function.variadic and not other.variadic and fixed == other_fixed:
                raise ValueError(f"{function.name}/{fixed} is already defined")
        existing.append(function)

    def resolve(self, name: str, arity: int) -> Function | None:
        for function in self._by_name.get(name.upper(), ()):
            if function.accepts(arity):
                return function
        return None


def _fail(error: CesqlError, value: Any) -> FunctionFailed:
    return FunctionFailed(error, value)


def _left(x: str, y: int) -> str:
    if y < 0:
        raise _fail(FunctionEvaluationError(f"LEFT: length {y} is negative"), x)
    return x[:y]


def _right(x: str, y: int) -> str:
    if y < 0:
        raise _fail(FunctionEvaluationError(f"RIGHT: length {y} is negative"), x)
    return x[len(x) - y :] if y else ""


def _substring(x: str, pos: int, length: int | None = None) -> str:
    n = len(x)
    if pos > n or pos < -n:
        raise _fail(
            FunctionEvaluationError(f"SUBSTRING: position {pos} is outside a string of {n}"), ""
        )
    if length is not None and length < 0:
        raise _fail(FunctionEvaluationError(f"SUBSTRING: length {length} is negative"), "")
    if pos == 0:
        return ""
    start = pos - 1 if pos > 0 else n + pos
    return x[start:] if length is None else x[start : start + length]


def _abs(x: int) -> int:
    if x == INT32_MIN:
        raise _fail(MathError("ABS(-2147483648) overflows a 32-bit integer"), INT32_MAX)
    return abs(x)


def _identity(x: Any) -> Any:
    return x


BUILTINS = FunctionRegistry(
    [
        Function("LENGTH", (STRING,), INTEGER, len),
        Function("CONCAT", (STRING,), STRING, lambda *xs: "".join(xs), variadic=True),
        Function("CONCAT_WS", (STRING, STRING), STRING, lambda d, *xs: d.join(xs), variadic=True),
        Function("LOWER", (STRING,), STRING, str.lower),
        Function("UPPER", (STRING,), STRING, str.upper),
        Function("TRIM", (STRING,), STRING, str.strip),
        Function("LEFT", (STRING, INTEGER), STRING, _left),
        Function("RIGHT", (STRING, INTEGER), STRING, _right),
        Function("SUBSTRING", (STRING, INTEGER), STRING, _substring),
        Function("SUBSTRING", (STRING, INTEGER, INTEGER), STRING, _substring),
        Function("ABS", (INTEGER,), INTEGER, _abs),
        # Explicit casts: the argument is cast on the way in (spec.md 3.7).
        Function("INT", (INTEGER,), INTEGER, _identity),
        Function("BOOL", (BOOLEAN,), BOOLEAN, _identity),
        Function("STRING", (STRING,), STRING, _identity),
    ]
)
