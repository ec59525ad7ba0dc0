"""CESQL values for the compiled closures: the MISSING marker, casts, arithmetic (spec.md 3).

How this works: pure functions over Python values, each appending a
:class:`~headwater.cesql.errors.CesqlError` to the evaluation's error list and
returning the value the specification gives when it fails (the complete
evaluation mode of spec.md 4.1), so the closures that call them
(:mod:`headwater.cesql.compiler`, :mod:`headwater.cesql._fast`) never branch
on errors.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Callable, Mapping
from typing import Any

from headwater.cesql.errors import (
    CastError,
    CesqlError,
    MathError,
    MissingAttributeError,
)
from headwater.cesql.functions import (
    BOOLEAN,
    INT32_MAX,
    INT32_MIN,
    INTEGER,
    STRING,
    IntegerOverflow,
    int32,
)

Attributes = Mapping[str, Any]
Errors = list[CesqlError]
Fn = Callable[[Attributes, Errors], Any]
Test = Callable[[Attributes], "bool | None"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# 3.4.4: "EXISTS MUST always return true for the REQUIRED context attributes
# because the input CloudEvent is always assumed valid".
REQUIRED = frozenset({"id", "source", "specversion", "type"})
COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# `x OP bound` as a method of the bound: `x > 30` is `(30).__lt__(x)`.
MIRRORED = {"<": "__gt__", "<=": "__ge__", ">": "__lt__", ">=": "__le__"}


# -- values and casts (spec.md 3.1, 3.2, 3.7) -----------------------------------------


def value_of(raw: Any) -> Any:
    """An attribute value as a CESQL value (3.2).

    "If the value of the attribute or extension is not one of the primitive
    CESQL types, it MUST be represented by the String type": Binary as its
    canonical Base64 string (CloudEvents "Type System"), anything else a plain
    mapping may hold (a float, an int beyond 32 bits) as ``str()``. ``None``
    means absent, as for ``CloudEvent.evolve``.
    """
    kind = type(raw)
    if kind is str or kind is bool:
        return raw
    if kind is int:
        return raw if INT32_MIN <= raw <= INT32_MAX else str(raw)
    if raw is None or raw is MISSING:
        return MISSING
    if kind is bytes:
        return base64.b64encode(raw).decode("ascii")
    return str(raw)


def read(a: Attributes, name: str, e: Errors) -> Any:
    value = value_of(a.get(name))
    if value is MISSING:
        e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
    return value


def to_string(value: Any, errors: Errors) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"  # "Returns "true" if the boolean is true"
    return str(value)  # Integer: base 10, no leading zeros, '-' when negative


def to_integer(value: Any, errors: Errors) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return 1 if value else 0
    # String: "MAY begin with a leading sign '+' or '-'. If the result will
    # overflow or the string is not a valid integer an error is returned along
    # with a value of 0."
    try:
        return int32(value)
    except IntegerOverflow:
        errors.append(CastError(f"{_quote(value)} overflows a 32-bit Integer"))
    except ValueError:
        errors.append(CastError(f"cannot cast {_quote(value)} to Integer"))
    return 0


def to_boolean(value: Any, errors: Errors) -> bool:
    kind = type(value)
    if kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return value != 0  # type: ignore[no-any-return]
    # "Returns true or false if the lower case representation of the string is
    # exactly "true" or "false", respectively. Otherwise returns an error along
    # with a value of false"
    lower = value.lower() if len(value) <= 5 else ""  # no copy of a long string
    if lower == "true":
        return True
    if lower != "false":
        errors.append(CastError(f"cannot cast {_quote(value)} to Boolean"))
    return False


CASTS: dict[str, Callable[[Any, Errors], Any]] = {
    BOOLEAN: to_boolean,
    INTEGER: to_integer,
    STRING: to_string,
}


def type_of(value: Any) -> str:
    kind = type(value)
    if kind is bool:
        return BOOLEAN
    if kind is int:
        return INTEGER
    return STRING


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")


def is_int32(value: Any) -> bool:
    return INT32_MIN <= value <= INT32_MAX  # type: ignore[no-any-return]


def fast_int(value: str) -> int | None:
    """The value of plain ASCII digits that surely fit 32 bits, else None (use the cast)."""
    if len(value) < 10 and value.isdigit() and value.isascii():
        return int(value)
    return None


# -- arithmetic (spec.md 3.4.2) -------------------------------------------------------


def overflow(what: str) -> CesqlError:
    return MathError(f"{what} overflows a 32-bit integer")


def _checked(result: int, what: str, e: Errors) -> int:
    if INT32_MIN <= result <= INT32_MAX:
        return result
    e.append(overflow(what))
    return 0


def _add(x: int, y: int, e: Errors) -> int:
    return _checked(x + y, f"{x} + {y}", e)


def _subtract(x: int, y: int, e: Errors) -> int:
    return _checked(x - y, f"{x} - {y}", e)


def _multiply(x: int, y: int, e: Errors) -> int:
    return _checked(x * y, f"{x} * {y}", e)


def _quotient(x: int, y: int) -> int:
    # "rounded towards 0": Python's // rounds towards negative infinity.
    q = abs(x) // abs(y)
    return q if (x < 0) == (y < 0) else -q


def _divide(x: int, y: int, e: Errors) -> int:
    if y == 0:
        e.append(MathError(f"{x} / 0: division by zero"))  # "Returns 0 and a MathError"
        return 0
    return _checked(_quotient(x, y), f"{x} / {y}", e)  # -2147483648 / -1 overflows


def _remainder(x: int, y: int, e: Errors) -> int:
    if y == 0:
        e.append(MathError(f"{x} % 0: division by zero"))
        return 0
    return x - y * _quotient(x, y)  # "the result has the same sign as x"


ARITHMETIC: dict[str, Callable[[int, int, Errors], int]] = {
    "+": _add,
    "-": _subtract,
    "*": _multiply,
    "/": _divide,
    "%": _remainder,
}
