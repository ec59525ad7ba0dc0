"""Compile a CESQL tree into nested closures, once; evaluation calls them per event.

How this works: every node becomes ``fn(attributes, errors) -> value`` and a
static result type (Boolean, Integer, String, or None when it depends on the
event: a bare attribute). Operators cast their operands as spec.md 3.7 says,
appending a :class:`CastError` when a cast fails. A missing attribute yields
the MISSING marker plus a :class:`MissingAttributeError`, and any operator or
function receiving MISSING returns the zero value of its own result type
(spec.md 3.2). Common shapes (an attribute compared with a literal) get
closures of their own, so that a typical Trigger filter costs a dict lookup
and a compare. Nothing is ever evaluated with ``eval``.
"""

from __future__ import annotations

import base64
import operator
import re
from collections.abc import Callable, Mapping
from typing import Any

from headwater.cesql.errors import (
    CastError,
    CesqlError,
    FunctionEvaluationError,
    MathError,
    MissingAttributeError,
    MissingFunctionError,
)
from headwater.cesql.functions import (
    BOOLEAN,
    INT32_MAX,
    INT32_MIN,
    INTEGER,
    STRING,
    ZERO,
    Function,
    FunctionFailed,
    FunctionRegistry,
    _identity,
)
from headwater.cesql.parser import Node

Errors = list[CesqlError]
Fn = Callable[[Mapping[str, Any], Errors], Any]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

# Required attributes always exist on a valid event (spec.md 3.4.4).
_REQUIRED = frozenset({"id", "source", "specversion", "type"})
_INT = re.compile(r"[+-]?[0-9]+\Z")


# -- casts (spec.md 3.7) ------------------------------------------------------


def to_string(value: Any, errors: Errors) -> str:
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is bytes:
        # 3.2: attribute values of other types are represented as String
        # (a Binary's canonical string is Base64, CloudEvents "Type System").
        return base64.b64encode(value).decode("ascii")
    errors.append(CastError(f"cannot cast {value!r} to String"))
    return ""


def to_integer(value: Any, errors: Errors) -> int:
    kind = type(value)
    if kind is int:
        return value  # type: ignore[no-any-return]
    if kind is bool:
        return 1 if value else 0
    if kind is str and value.isascii() and value.isdigit() and len(value) < 10:
        return int(value)  # the common case: plain ASCII digits that fit
    text = to_string(value, errors) if kind is bytes else value
    if type(text) is str and _INT.match(text):
        number = int(text)
        if INT32_MIN <= number <= INT32_MAX:
            return number
        errors.append(CastError(f"{text!r} overflows a 32-bit Integer"))
        return 0
    errors.append(CastError(f"cannot cast {value!r} to Integer"))
    return 0


def to_boolean(value: Any, errors: Errors) -> bool:
    kind = type(value)
    if kind is bool:
        return value  # type: ignore[no-any-return]
    if kind is int:
        return bool(value != 0)
    if kind is str:
        lower: str = value.lower()
        if lower == "true":
            return True
        if lower == "false":
            return False
    errors.append(CastError(f"cannot cast {value!r} to Boolean"))
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


# -- compiling -----------------------------------------------------------------


class Compiler:
    def __init__(self, functions: FunctionRegistry) -> None:
        self.functions = functions

    def compile(self, node: Node) -> tuple[Fn, str | None]:
        kind = node[0]
        return getattr(self, "_" + kind)(node)  # type: ignore[no-any-return]

    def typed(self, node: Node, target: str) -> Fn:
        """``node`` cast to ``target`` (MISSING passes through)."""
        fn, kind = self.compile(node)
        if kind == target:
            return fn
        if node[0] == "lit":
            errors: Errors = []
            value = CASTS[target](node[1], errors)
            if errors:
                error = errors[0]

                def failed_literal(a: Mapping[str, Any], e: Errors) -> Any:
                    e.append(error)
                    return value

                return failed_literal
            return lambda a, e: value
        cast = CASTS[target]

        def casted(a: Mapping[str, Any], e: Errors) -> Any:
            value = fn(a, e)
            return value if value is MISSING else cast(value, e)

        return casted

    # -- leaves ------------------------------------------------------------------

    def _lit(self, node: Node) -> tuple[Fn, str | None]:
        value = node[1]
        return (lambda a, e: value), type_of(value)

    def _id(self, node: Node) -> tuple[Fn, str | None]:
        name = node[1]

        def attribute(a: Mapping[str, Any], e: Errors) -> Any:
            value = a.get(name, MISSING)
            if value is MISSING:
                e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
            return value

        return attribute, None

    def _exists(self, node: Node) -> tuple[Fn, str | None]:
        name = node[1]
        if name in _REQUIRED:
            return (lambda a, e: True), BOOLEAN
        return (lambda a, e: name in a), BOOLEAN

    # -- unary -------------------------------------------------------------------

    def _not(self, node: Node) -> tuple[Fn, str | None]:
        fn = self.typed(node[1], BOOLEAN)

        def negate(a: Mapping[str, Any], e: Errors) -> Any:
            value = fn(a, e)
            return False if value is MISSING else not value

        return negate, BOOLEAN

    def _neg(self, node: Node) -> tuple[Fn, str | None]:
        fn = self.typed(node[1], INTEGER)

        def minus(a: Mapping[str, Any], e: Errors) -> Any:
            value = fn(a, e)
            if value is MISSING:
                return 0
            if value == INT32_MIN:
                e.append(MathError("-(-2147483648) overflows a 32-bit integer"))
                return 0
            return -value

        return minus, INTEGER

    # -- binary ------------------------------------------------------------------

    def _bin(self, node: Node) -> tuple[Fn, str | None]:
        op, left, right = node[1], node[2], node[3]
        if op in ("AND", "OR", "XOR"):
            return self._logic(op, left, right), BOOLEAN
        if op in ("+", "-", "*", "/", "%"):
            return self._arithmetic(op, left, right), INTEGER
        if op in ("<", "<=", ">", ">="):
            return self._order(op, left, right), BOOLEAN
        return self._equality(op != "=", left, right), BOOLEAN

    def _chain(self, op: str, node: Node) -> list[Node]:
        """The operands of a left-nested chain of one logic operator, in order."""
        if node[0] == "bin" and node[1] == op:
            return [*self._chain(op, node[2]), node[3]]
        return [node]

    def _logic(self, op: str, left: Node, right: Node) -> Fn:
        if op in ("AND", "OR"):
            nodes = (*self._chain(op, left), right)
            operands = tuple(self.typed(n, BOOLEAN) for n in nodes)
            head = nodes[0]
            # The usual Trigger filter starts with `type = '...'`: check that
            # inline and leave the rest to the chain.
            if (
                op == "AND"
                and head[:2] == ("bin", "=")
                and head[2][0] == "id"
                and head[3][0] == "lit"
                and type(head[3][1]) is str
            ):
                return _all_of_after_equality(head[2][1], head[3][1], operands)
            if len(operands) > 2:
                return _all_of(operands) if op == "AND" else _any_of(operands)
        lf, rf = self.typed(left, BOOLEAN), self.typed(right, BOOLEAN)
        if op == "AND":
            # 3.4.2: AND and OR short-circuit.
            def and_(a: Mapping[str, Any], e: Errors) -> Any:
                x = lf(a, e)
                if x is not True:
                    return False
                y = rf(a, e)
                return y is True

            return and_
        if op == "OR":

            def or_(a: Mapping[str, Any], e: Errors) -> Any:
                x = lf(a, e)
                if x is True:
                    return True
                if x is MISSING:
                    return False
                y = rf(a, e)
                return y is True

            return or_

        def xor(a: Mapping[str, Any], e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            return x is not y

        return xor

    def _arithmetic(self, op: str, left: Node, right: Node) -> Fn:
        lf, rf = self.typed(left, INTEGER), self.typed(right, INTEGER)

        def arithmetic(a: Mapping[str, Any], e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return 0
            if op == "+":
                result = x + y
            elif op == "-":
                result = x - y
            elif op == "*":
                result = x * y
            else:
                if y == 0:
                    e.append(MathError(f"{x} {op} 0: division by zero"))
                    return 0
                # 3.4.2: division rounds towards 0; the remainder has x's sign.
                quotient = abs(x) // abs(y) * (1 if (x < 0) == (y < 0) else -1)
                result = quotient if op == "/" else x - y * quotient
            if not INT32_MIN <= result <= INT32_MAX:
                e.append(MathError(f"{x} {op} {y} overflows a 32-bit integer"))
                return 0
            return result

        return arithmetic

    def _order(self, op: str, left: Node, right: Node) -> Fn:
        if left[0] == "call" and left[1] == "INT" and len(left[2]) == 1:
            function = self.functions.resolve("INT", 1)
            if function is not None and function.implementation is _identity:
                left = left[2][0]  # the comparison casts to Integer anyway
        lf, rf = self.typed(left, INTEGER), self.typed(right, INTEGER)
        if right[0] == "lit" and type(right[1]) is int and left[0] == "id":
            # attribute < 30: one lookup, one compare.
            name, bound = left[1], right[1]
            compare = _ORDER[op]

            def order_literal(a: Mapping[str, Any], e: Errors) -> Any:
                value = a.get(name, MISSING)
                if type(value) is not int:
                    if value is MISSING:
                        e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
                        return False
                    value = to_integer(value, e)
                return compare(value, bound)

            return order_literal
        compare = _ORDER[op]

        def order(a: Mapping[str, Any], e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            return compare(x, y)

        return order

    def _equality(self, negated: bool, left: Node, right: Node) -> Fn:
        # 3.7: `=` is ambiguous; the right operand's type decides, and the
        # left operand is cast to it.
        rf, rtype = self.compile(right)
        if rtype is not None:
            lf = self.typed(left, rtype)
            if right[0] == "lit" and left[0] == "id":
                return _attribute_equals_literal(left[1], right[1], negated)

            def equals_static(a: Mapping[str, Any], e: Errors) -> Any:
                x, y = lf(a, e), rf(a, e)
                if x is MISSING or y is MISSING:
                    return False
                return (x != y) if negated else (x == y)

            return equals_static
        lf_raw, _ = self.compile(left)

        def equals_dynamic(a: Mapping[str, Any], e: Errors) -> Any:
            x, y = lf_raw(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            x = _cast_like(x, y, e)
            if x is MISSING:
                return False
            if type(y) is bytes:
                y = to_string(y, e)
            return (x != y) if negated else (x == y)

        return equals_dynamic

    # -- LIKE, IN ----------------------------------------------------------------

    def _like(self, node: Node) -> tuple[Fn, str | None]:
        matcher = like_pattern(node[2])
        negated = node[3]
        if node[1][0] == "id":
            name = node[1][1]

            def like_attribute(a: Mapping[str, Any], e: Errors) -> Any:
                value = a.get(name, MISSING)
                if type(value) is not str:
                    if value is MISSING:
                        e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
                        return False
                    value = to_string(value, e)
                return (not matcher(value)) if negated else matcher(value)

            return like_attribute, BOOLEAN
        fn = self.typed(node[1], STRING)

        def like(a: Mapping[str, Any], e: Errors) -> Any:
            value = fn(a, e)
            if value is MISSING:
                return False
            return (not matcher(value)) if negated else matcher(value)

        return like, BOOLEAN

    def _in(self, node: Node) -> tuple[Fn, str | None]:
        lf, ltype = self.compile(node[1])
        items = [self.compile(item) for item in node[2]]
        negated = node[3]
        literals = [item for item in node[2] if item[0] == "lit"]
        if ltype is None and node[1][0] == "id" and len(literals) == len(items):
            # attribute IN ('a', 'b', ...): precompute the set per target type.
            return _attribute_in_literals(
                node[1][1], [lit[1] for lit in literals], negated
            ), BOOLEAN

        def in_(a: Mapping[str, Any], e: Errors) -> Any:
            x = lf(a, e)
            if x is MISSING:
                return False
            if type(x) is bytes:
                x = to_string(x, e)
            target = CASTS[type_of(x)]
            found = False
            for fn, _ in items:
                y = fn(a, e)
                if y is MISSING:
                    continue
                # 3.4.5: the left operand's type is the target of the cast.
                errors: Errors = []
                y = target(y, errors)
                if errors:
                    e.extend(errors)
                    continue
                if y == x:
                    found = True
                    break
            return (not found) if negated else found

        return in_, BOOLEAN

    # -- functions -----------------------------------------------------------------

    def _call(self, node: Node) -> tuple[Fn, str | None]:
        name, args = node[1], node[2]
        function = self.functions.resolve(name, len(args))
        if function is not None and function.implementation is _identity:
            # INT(x), BOOL(x), STRING(x): the cast of x is the whole call.
            target = function.returns
            return self.typed(args[0], target), target
        if function is None:
            message = f"no function {name} taking {len(args)} argument(s)"

            def missing_function(a: Mapping[str, Any], e: Errors) -> Any:
                # 3.5: the value is false, with a MissingFunctionError.
                e.append(MissingFunctionError(message))
                return False

            return missing_function, BOOLEAN
        return _invocation(
            function, [self.typed(arg, function.parameter(i)) for i, arg in enumerate(args)]
        ), function.returns


def _all_of(operands: tuple[Fn, ...]) -> Fn:
    # 3.4.2: AND short-circuits: the first operand that is not TRUE decides.
    def all_of(a: Mapping[str, Any], e: Errors) -> Any:
        for fn in operands:  # noqa: SIM110 (a plain loop is faster than all() here)
            if fn(a, e) is not True:
                return False
        return True

    return all_of


def _all_of_after_equality(name: str, literal: str, operands: tuple[Fn, ...]) -> Fn:
    head, rest = operands[0], operands[1:]

    def all_of(a: Mapping[str, Any], e: Errors) -> Any:
        value = a.get(name)
        if type(value) is str:
            if value != literal:
                return False
        elif head(a, e) is not True:  # a cast, or a missing attribute: the slow path
            return False
        for fn in rest:  # noqa: SIM110 (a plain loop is faster than all() here)
            if fn(a, e) is not True:
                return False
        return True

    return all_of


def _any_of(operands: tuple[Fn, ...]) -> Fn:
    def any_of(a: Mapping[str, Any], e: Errors) -> Any:
        for fn in operands:
            value = fn(a, e)
            if value is True:
                return True
            if value is MISSING:
                return False
        return False

    return any_of


_ORDER: dict[str, Callable[[int, int], bool]] = {
    "<": lambda x, y: x < y,
    "<=": lambda x, y: x <= y,
    ">": lambda x, y: x > y,
    ">=": lambda x, y: x >= y,
}


def _cast_like(x: Any, y: Any, errors: Errors) -> Any:
    """``x`` cast to the type of ``y`` (3.7, ambiguous binary operator)."""
    local: Errors = []
    value = CASTS[type_of(y)](x, local)
    if local:
        errors.extend(local)
        return MISSING
    return value


def _attribute_equals_literal(name: str, literal: Any, negated: bool) -> Fn:
    target = CASTS[type_of(literal)]
    literal_type = type(literal)

    def equals(a: Mapping[str, Any], e: Errors) -> Any:
        value = a.get(name, MISSING)
        if type(value) is not literal_type:
            if value is MISSING:
                e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
                return False
            errors: Errors = []
            value = target(value, errors)
            if errors:
                # 3.7: a failed cast for an ambiguous operator: CastError, false.
                e.extend(errors)
                return False
        return (value != literal) if negated else (value == literal)

    return equals


def _attribute_in_literals(name: str, literals: list[Any], negated: bool) -> Fn:
    by_type: dict[str, tuple[frozenset[Any], Errors]] = {}
    for target_type, cast in CASTS.items():
        errors: Errors = []
        values = set()
        for literal in literals:
            local: Errors = []
            value = cast(literal, local)
            if local:
                errors.extend(local)
            else:
                values.add(value)
        by_type[target_type] = (frozenset(values), errors)

    def in_literals(a: Mapping[str, Any], e: Errors) -> Any:
        value = a.get(name, MISSING)
        if value is MISSING:
            e.append(MissingAttributeError(f"the event has no attribute {name!r}"))
            return False
        if type(value) is bytes:
            value = to_string(value, e)
        values, errors = by_type[type_of(value)]
        found = value in values
        if errors and not found:
            e.extend(errors)  # elements that could not be cast to the value's type
        return (not found) if negated else found

    return in_literals


def _invocation(function: Function, args: list[Fn]) -> Fn:
    implementation = function.implementation
    zero = ZERO[function.returns]
    returns: type = {BOOLEAN: bool, INTEGER: int, STRING: str}[function.returns]
    name = function.name

    def call(a: Mapping[str, Any], e: Errors) -> Any:
        values = [fn(a, e) for fn in args]
        if MISSING in values:
            return zero
        try:
            result = implementation(*values)
        except FunctionFailed as failed:
            e.append(failed.error)
            return failed.value
        except Exception as exc:  # a user function's bug must not escape evaluate()
            e.append(FunctionEvaluationError(f"{name} failed: {type(exc).__name__}: {exc}"))
            return zero
        if type(result) is not returns or (
            type(result) is int and not INT32_MIN <= result <= INT32_MAX
        ):
            e.append(
                FunctionEvaluationError(f"{name} returned {result!r}, not a {function.returns}")
            )
            return zero
        return result

    return call


def like_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for a LIKE pattern: ``%`` any run, ``_`` one character, ``\\`` escapes.

    The common shapes (``abc``, ``abc%``, ``%abc``, ``%abc%``) become plain
    string operations; the rest a compiled regular expression.
    """
    literal, kind = _simple_pattern(pattern)
    if kind == "exact":
        return literal.__eq__
    if kind == "prefix":
        return operator.methodcaller("startswith", literal)
    if kind == "suffix":
        return operator.methodcaller("endswith", literal)
    if kind == "contains":
        return literal.__contains__
    regex = _like_regex(pattern)
    return lambda value: regex(value) is not None


def _simple_pattern(pattern: str) -> tuple[str, str]:
    """(literal, shape) when the pattern is a literal with at most a leading/trailing %."""
    if "\\" in pattern or "_" in pattern:
        return "", "regex"
    leading, trailing = pattern.startswith("%"), pattern.endswith("%") and len(pattern) > 1
    core = pattern[1 if leading else 0 : len(pattern) - 1 if trailing else len(pattern)]
    if "%" in core:
        return "", "regex"
    if leading and trailing:
        return core, "contains"
    return core, "prefix" if trailing else "suffix" if leading else "exact"


def _like_regex(pattern: str) -> Callable[[str], Any]:
    parts: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            parts.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL).fullmatch
