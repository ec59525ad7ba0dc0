"""CESQL functions: the built-ins (spec.md 3.5) and a registry for user functions.

A function is a name, parameter types and a return type; ``variadic`` means
its last parameter type repeats (zero or more times). Overloading is by arity
(3.5), with at most one variadic overload whose fixed parameters outnumber
every other overload's arity.

A user function receives its arguments already cast to the parameter types
(3.7) and returns a value of its return type. To report an error it raises
:class:`FunctionFailed` with the error and the value to return (3.5.3: a
function "MUST still return a valid return value"); any other exception, or
a value of the wrong type, becomes a :class:`FunctionEvaluationError` with
the zero value of the return type.

The built-ins are *native*: they take the error list as their first argument
and append to it, so that evaluating them never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from headwater.cesql.errors import CesqlError, FunctionEvaluationError, MathError

BOOLEAN, INTEGER, STRING = "Boolean", "Integer", "String"
TYPES = (BOOLEAN, INTEGER, STRING)
ZERO: dict[str, Any] = {BOOLEAN: False, INTEGER: 0, STRING: ""}
PYTHON_TYPE: dict[str, type] = {BOOLEAN: bool, INTEGER: int, STRING: str}
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

MAX_STRING_LENGTH = 1024 * 1024
"""The longest String a function may build, in characters: as long as the
largest event Headwater accepts by default (DEFAULT_MAX_EVENT_SIZE), so a
CONCAT of an event's own attributes fits. Longer, the function returns the
empty string with a FunctionEvaluationError (3.5.3: a function in error
"MUST still return a valid return value"), and no string of that size is ever
built: ``CONCAT(subject, subject, ...)`` cannot take gigabytes."""

Errors = list[CesqlError]


class IntegerOverflow(ValueError):
    """Digits that are an integer, but not a 32-bit one."""


def int32(text: str) -> int:
    """``text`` as a 32-bit Integer (3.7: base 10, an optional leading sign).

    ValueError if it is not an integer, IntegerOverflow if it does not fit 32
    bits. Only ASCII digits count, and the length is checked before ``int()``
    runs, so a long string costs one pass (Python's ``int()`` refuses more than
    4,300 digits with a ValueError of its own, and is quadratic below that).
    """
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"{text[:40]!r} is not an integer")
    significant = digits.lstrip("0")
    if len(significant) > len(str(INT32_MAX)):
        raise IntegerOverflow(f"{len(digits)} digits overflow a 32-bit integer")
    value = int(significant or "0")
    if text[:1] == "-":
        value = -value
    if not INT32_MIN <= value <= INT32_MAX:
        raise IntegerOverflow(f"{value} overflows a 32-bit integer")
    return value


def _too_long(e: Errors, name: str, length: int) -> str:
    e.append(
        FunctionEvaluationError(
            f"{name}: the result would be {length} characters, over the limit of "
            f"{MAX_STRING_LENGTH}"
        )
    )
    return ""


class FunctionFailed(Exception):
    """Raised by a user function: ``error`` to report, ``value`` to return."""

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
    native: bool = False
    """Takes the error list first and always returns its return type (built-ins)."""

    def accepts(self, arity: int) -> bool:
        if self.variadic:
            return arity >= len(self.parameters) - 1
        return arity == len(self.parameters)

    def parameter(self, index: int) -> str:
        if self.variadic and index >= len(self.parameters) - 1:
            return self.parameters[-1]
        return self.parameters[index]


class FunctionRegistry:
    """Functions by name (case-insensitive, as every CESQL keyword) and arity."""

    def __init__(self, functions: Sequence[Function] = ()) -> None:
        self._by_name: dict[str, list[Function]] = {}
        for function in functions:
            self.add(function)

    def copy(self) -> FunctionRegistry:
        """A registry with the same functions, to extend without touching this one."""
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
        """Add a user function; ``ValueError`` if it clashes with an overload (spec.md 3.5)."""
        self.add(Function(name.upper(), tuple(parameters), returns, implementation, variadic))

    def add(self, function: Function) -> None:
        name = function.name.upper()
        # 2.4: function-identifier ::= char ( "_" | char )*
        if not (name[:1].isascii() and name[:1].isalpha()) or not all(
            c == "_" or (c.isascii() and c.isalpha()) for c in name
        ):
            raise ValueError(f"{function.name!r} is not a CESQL function name (spec.md 2.4)")
        for kind in (*function.parameters, function.returns):
            if kind not in TYPES:
                raise ValueError(f"{name}: unknown type {kind!r}; use one of {TYPES}")
        if function.variadic and not function.parameters:
            raise ValueError(f"{name}: a variadic function needs a parameter type")
        existing = self._by_name.setdefault(name, [])
        fixed = len(function.parameters) - (1 if function.variadic else 0)
        for other in existing:
            other_fixed = len(other.parameters) - (1 if other.variadic else 0)
            if function.variadic and other.variadic:
                raise ValueError(f"{name}: only one variadic overload is allowed (spec.md 3.5)")
            # 3.5: "only if the number of initial fixed arguments is greater
            # than the maximum arity of all other function definitions"
            if (function.variadic and fixed <= other_fixed) or (
                other.variadic and other_fixed <= fixed
            ):
                raise ValueError(
                    f"{name}: a variadic overload needs more fixed parameters than "
                    "the arity of every other overload (spec.md 3.5)"
                )
            if not function.variadic and not other.variadic and fixed == other_fixed:
                raise ValueError(f"{name}/{fixed} is already defined")
        existing.append(function)

    def resolve(self, name: str, arity: int) -> Function | None:
        for function in self._by_name.get(name.upper(), ()):
            if function.accepts(arity):
                return function
        return None


# -- built-ins (spec.md 3.5.1, 3.5.2) ---------------------------------------------


def _length(e: Errors, x: str) -> int:
    return len(x)  # characters (code points), not bytes


def _concat(e: Errors, *xs: str) -> str:
    length = sum(map(len, xs))
    if length > MAX_STRING_LENGTH:
        return _too_long(e, "CONCAT", length)
    return "".join(xs)


def _concat_ws(e: Errors, delimiter: str, *xs: str) -> str:
    length = sum(map(len, xs)) + len(delimiter) * max(len(xs) - 1, 0)
    if length > MAX_STRING_LENGTH:
        return _too_long(e, "CONCAT_WS", length)
    return delimiter.join(xs)


def _lower(e: Errors, x: str) -> str:
    # A character may change length with its case ("İ".lower() is two), so the
    # result is checked, not the argument.
    result = x.lower()
    return result if len(result) <= MAX_STRING_LENGTH else _too_long(e, "LOWER", len(result))


def _upper(e: Errors, x: str) -> str:
    result = x.upper()  # "ß".upper() is "SS"
    return result if len(result) <= MAX_STRING_LENGTH else _too_long(e, "UPPER", len(result))


def _trim(e: Errors, x: str) -> str:
    # "leading and trailing whitespaces (as defined by unicode)": str.strip()
    # with no argument strips exactly the Unicode White_Space characters.
    return x.strip()


def _left(e: Errors, x: str, y: int) -> str:
    if y < 0:
        # "Returns x if y < 0 and a FunctionEvaluationError."
        e.append(FunctionEvaluationError(f"LEFT: length {y} is negative"))
        return x
    return x[:y]


def _right(e: Errors, x: str, y: int) -> str:
    if y < 0:
        e.append(FunctionEvaluationError(f"RIGHT: length {y} is negative"))
        return x
    return x[len(x) - y :] if y < len(x) else x


def _substring_from(e: Errors, x: str, pos: int) -> str:
    return _substring(e, x, pos, len(x))


def _substring(e: Errors, x: str, pos: int, length: int) -> str:
    n = len(x)
    # "Returns the empty string and a FunctionEvaluationError if
    # pos > LENGTH(x) OR pos < -LENGTH(x) or if len is negative."
    if pos > n or pos < -n:
        e.append(FunctionEvaluationError(f"SUBSTRING: position {pos} is outside a string of {n}"))
        return ""
    if length < 0:
        e.append(FunctionEvaluationError(f"SUBSTRING: length {length} is negative"))
        return ""
    if pos == 0:  # "If pos is 0, then returns the empty string."
        return ""
    # "If pos is negative, the beginning of the substring is pos characters
    # from the end of the string."
    start = pos - 1 if pos > 0 else n + pos
    return x[start : start + length]


def _abs(e: Errors, x: int) -> int:
    if x == INT32_MIN:
        # 3.5.2: "returns 2147483647 as well as a MathError"
        e.append(MathError("ABS(-2147483648) overflows a 32-bit integer"))
        return INT32_MAX
    return abs(x)


def cast_function(e: Errors, x: Any) -> Any:
    """INT, BOOL and STRING: the argument is cast on the way in (spec.md 3.7)."""
    return x


def _native(
    name: str, parameters: tuple[str, ...], returns: str, fn: Callable[..., Any], **kw: bool
) -> Function:
    return Function(name, parameters, returns, fn, native=True, **kw)


BUILTINS = FunctionRegistry(
    [
        _native("LENGTH", (STRING,), INTEGER, _length),
        _native("CONCAT", (STRING,), STRING, _concat, variadic=True),
        _native("CONCAT_WS", (STRING, STRING), STRING, _concat_ws, variadic=True),
        _native("LOWER", (STRING,), STRING, _lower),
        _native("UPPER", (STRING,), STRING, _upper),
        _native("TRIM", (STRING,), STRING, _trim),
        _native("LEFT", (STRING, INTEGER), STRING, _left),
        _native("RIGHT", (STRING, INTEGER), STRING, _right),
        _native("SUBSTRING", (STRING, INTEGER), STRING, _substring_from),
        _native("SUBSTRING", (STRING, INTEGER, INTEGER), STRING, _substring),
        _native("ABS", (INTEGER,), INTEGER, _abs),
        _native("INT", (INTEGER,), INTEGER, cast_function),
        _native("BOOL", (BOOLEAN,), BOOLEAN, cast_function),
        _native("STRING", (STRING,), STRING, cast_function),
    ]
)
