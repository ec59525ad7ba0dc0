"""Closures for the common shapes of a CESQL tree, and the fail-fast tests of filters.

How this works: :class:`~headwater.cesql.compiler.Compiler` builds every node
as a general closure ``fn(attributes, errors)``; for shapes that filters use
most (an attribute of the expected type compared with a literal, ``IN`` a
list of literals, ``LIKE``, a function call with constant arguments) it uses
the specialised closures here instead, and for ``matches`` the *tests*
(``test(attributes) -> True | False | None``) that take the common case inline
and hand anything unusual to the general closure, so both modes agree by
construction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headwater.cesql._values import (
    CASTS,
    MIRRORED,
    MISSING,
    Attributes,
    Errors,
    Fn,
    Test,
    fast_int,
    is_int32,
    read,
    to_integer,
    type_of,
)
from headwater.cesql.errors import (
    CesqlError,
    FunctionEvaluationError,
)
from headwater.cesql.functions import (
    BOOLEAN,
    INT32_MAX,
    INT32_MIN,
    INTEGER,
    PYTHON_TYPE,
    STRING,
    ZERO,
    Function,
    FunctionFailed,
)

# -- closures for common shapes ---------------------------------------------------------


def typed_attribute(name: str, target: str) -> Fn:
    """An attribute cast to ``target``: the value itself when it has that type."""
    cast = CASTS[target]
    if target == INTEGER:

        def integer_attribute(a: Attributes, e: Errors) -> Any:
            value = a.get(name)
            if type(value) is int and INT32_MIN <= value <= INT32_MAX:
                return value
            if type(value) is str:
                number = fast_int(value)
                if number is not None:
                    return number
            value = read(a, name, e)
            return value if value is MISSING else to_integer(value, e)

        return integer_attribute
    kind = PYTHON_TYPE[target]

    def attribute_as(a: Attributes, e: Errors) -> Any:
        value = a.get(name)
        if type(value) is kind:
            return value
        value = read(a, name, e)
        return value if value is MISSING else cast(value, e)

    return attribute_as


def in_literals(lf: Fn, literals: list[Any], negated: bool) -> Fn:
    """``x IN (literal, ...)``: the set cast once per possible type of ``x`` (3.4.5)."""
    table: dict[str, tuple[frozenset[Any], tuple[CesqlError, ...]]] = {}
    for target, cast in CASTS.items():
        errors: Errors = []
        table[target] = (frozenset(cast(literal, errors) for literal in literals), tuple(errors))

    def in_literals(a: Attributes, e: Errors) -> Any:
        x = lf(a, e)
        if x is MISSING:
            return False
        values, errors = table[type_of(x)]
        if errors:
            e.extend(errors)  # every element is cast, wherever the match is (3.1)
        return (x in values) is not negated

    return in_literals


def native_call(function: Function, fns: list[Fn]) -> Fn:
    implementation = function.implementation
    zero = ZERO[function.returns]
    if len(fns) == 1:
        (f0,) = fns

        def call1(a: Attributes, e: Errors) -> Any:
            x = f0(a, e)
            return zero if x is MISSING else implementation(e, x)

        return call1
    if len(fns) == 2:
        f0, f1 = fns

        def call2(a: Attributes, e: Errors) -> Any:
            x, y = f0(a, e), f1(a, e)
            if x is MISSING or y is MISSING:
                return zero
            return implementation(e, x, y)

        return call2

    def call(a: Attributes, e: Errors) -> Any:
        values = [fn(a, e) for fn in fns]
        for value in values:
            if value is MISSING:
                return zero
        return implementation(e, *values)

    return call


def native_call_constant(function: Function, first: Fn, second: Any) -> Fn:
    implementation = function.implementation
    zero = ZERO[function.returns]

    def call_constant(a: Attributes, e: Errors) -> Any:
        x = first(a, e)
        return zero if x is MISSING else implementation(e, x, second)

    return call_constant


def equals_literal(lf: Fn, literal: Any, equal: bool) -> Fn:
    if equal:

        def equals(a: Attributes, e: Errors) -> Any:
            x = lf(a, e)
            return False if x is MISSING else x == literal

        return equals

    def differs(a: Attributes, e: Errors) -> Any:
        x = lf(a, e)
        return False if x is MISSING else x != literal

    return differs


def user_call(function: Function, fns: list[Fn]) -> Fn:
    implementation = function.implementation
    zero = ZERO[function.returns]
    returns = PYTHON_TYPE[function.returns]
    name = function.name

    def call(a: Attributes, e: Errors) -> Any:
        values = [fn(a, e) for fn in fns]
        for value in values:
            if value is MISSING:
                return zero
        result: Any
        try:
            result = implementation(*values)
        except FunctionFailed as failed:
            e.append(failed.error)
            result = failed.value
        except Exception as exc:  # a user function's bug must not escape evaluate()
            e.append(FunctionEvaluationError(f"{name} failed: {type(exc).__name__}: {exc}"))
            return zero
        # 3.5.3: a user function that fails "to provide a valid return value for
        # their return type": the zero value and a FunctionEvaluationError.
        if type(result) is not returns or (returns is int and not is_int32(result)):
            e.append(
                FunctionEvaluationError(f"{name} returned {result!r}, not a {function.returns}")
            )
            return zero
        return result

    return call


# -- tests ---------------------------------------------------------------------------


def via(fn: Fn) -> Test:
    """The general closure as a test: its Boolean value, or None if it reported errors."""

    def test(a: Attributes) -> bool | None:
        errors: Errors = []
        value = fn(a, errors)
        return None if errors else value

    return test


def logic_test(op: str, left: Test, right: Test) -> Test:
    if op == "AND":

        def and_(a: Attributes) -> bool | None:
            x = left(a)
            return x if x is not True else right(a)

        return and_
    if op == "OR":

        def or_(a: Attributes) -> bool | None:
            x = left(a)
            return x if x is not False else right(a)

        return or_

    def xor(a: Attributes) -> bool | None:
        x, y = left(a), right(a)
        if x is None or y is None:
            return None
        return x is not y

    return xor


def equals_test(name: str, literal: Any, equal: bool, slow: Test) -> Test:
    kind = type(literal)
    if kind is int:

        def int_equals(a: Attributes) -> bool | None:
            value = a.get(name)
            if type(value) is int and INT32_MIN <= value <= INT32_MAX:
                return (value == literal) is equal
            return slow(a)

        return int_equals
    if equal:

        def equals(a: Attributes) -> bool | None:
            value = a.get(name)
            if type(value) is kind:
                return value == literal  # type: ignore[no-any-return]
            return slow(a)

        return equals

    def differs(a: Attributes) -> bool | None:
        value = a.get(name)
        if type(value) is kind:
            return value != literal  # type: ignore[no-any-return]
        return slow(a)

    return differs


def order_test(name: str, op: str, bound: int, slow: Test) -> Test:
    compare = getattr(bound, MIRRORED[op])

    def order(a: Attributes) -> bool | None:
        value = a.get(name)
        if type(value) is str:
            if len(value) < 10 and value.isdigit() and value.isascii():
                return compare(int(value))  # type: ignore[no-any-return]
        elif type(value) is int and INT32_MIN <= value <= INT32_MAX:
            return compare(value)  # type: ignore[no-any-return]
        return slow(a)

    return order


def like_test(
    name: str, matcher: Callable[[str], bool], pattern: str, negated: bool, slow: Test
) -> Test:
    if not negated and pattern.endswith("%") and not any(c in pattern[:-1] for c in "%_\\"):
        prefix = pattern[:-1]  # `subject LIKE 'greenhouse/%'`, the common filter

        def starts_with(a: Attributes) -> bool | None:
            value = a.get(name)
            if type(value) is str:
                return value.startswith(prefix)
            return slow(a)

        return starts_with

    def like(a: Attributes) -> bool | None:
        value = a.get(name)
        if type(value) is str:
            return matcher(value) is not negated
        return slow(a)

    return like


def in_test(name: str, literals: list[Any], negated: bool, slow: Test) -> Test:
    # The set cast once per possible type of the attribute; a type whose cast
    # reports errors takes the slow path (which reports them).
    sets: dict[type, frozenset[Any]] = {}
    for kind, target in ((str, STRING), (int, INTEGER), (bool, BOOLEAN)):
        errors: Errors = []
        values = frozenset(CASTS[target](literal, errors) for literal in literals)
        if not errors:
            sets[kind] = values

    strings = sets[str]  # a cast to String never fails

    def in_set(a: Attributes) -> bool | None:
        value = a.get(name)
        if type(value) is str:
            return (value in strings) is not negated
        values = sets.get(type(value))
        if values is None or (type(value) is int and not INT32_MIN <= value <= INT32_MAX):
            return slow(a)
        return (value in values) is not negated

    return in_set
