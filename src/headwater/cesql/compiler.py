"""Compile a CESQL tree into nested closures, once; evaluation only calls them.

How this works: every node becomes ``fn(attributes, errors) -> value`` with a
static result type (Boolean, Integer, String, or None when it depends on the
event: a bare attribute). This is the *complete evaluation mode* of spec.md
4.1: an error is appended to the list and the operator goes on with the value
the spec gives it (3.3), so the flow never depends on errors. A missing
attribute reads as the MISSING marker plus a :class:`MissingAttributeError`,
and the operator or function that receives MISSING returns the zero value of
its own result type (3.2).

Filters need less: ``matches`` is true only for Boolean TRUE without errors
(1.2), so the compiler also builds *tests*, ``test(attributes)`` returning
True, False, or None for "an error occurred" (the fail-fast mode 1.2
recommends). A test takes the common case inline (an attribute of the
expected type compared with a literal: one dict lookup, one comparison, no
error list) and hands anything unusual to the complete closure, so both modes
agree by construction. Nothing is ever evaluated with ``eval``.
"""

from __future__ import annotations

import base64
import operator
from collections.abc import Callable, Iterator, Mapping
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
    PYTHON_TYPE,
    STRING,
    ZERO,
    Function,
    FunctionFailed,
    FunctionRegistry,
    IntegerOverflow,
    cast_function,
    int32,
)
from headwater.cesql.like import like_matcher, scan_passes
from headwater.cesql.parser import Node

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
_REQUIRED = frozenset({"id", "source", "specversion", "type"})
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# `x OP bound` as a method of the bound: `x > 30` is `(30).__lt__(x)`.
_MIRRORED = {"<": "__gt__", "<=": "__ge__", ">": "__lt__", ">=": "__le__"}


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


def _is_int32(value: Any) -> bool:
    return INT32_MIN <= value <= INT32_MAX  # type: ignore[no-any-return]


def _fast_int(value: str) -> int | None:
    """The value of plain ASCII digits that surely fit 32 bits, else None (use the cast)."""
    if len(value) < 10 and value.isdigit() and value.isascii():
        return int(value)
    return None


# -- compiling ----------------------------------------------------------------------


class Compiler:
    def __init__(self, functions: FunctionRegistry, root: Node | None = None) -> None:
        self.functions = functions
        self.warnings: list[CesqlError] = []
        """Errors certain to occur whenever their part of the expression is
        evaluated, found while compiling (3.3: "Whenever possible, some error
        checks SHOULD be done at compile time")."""
        self._root = root
        self.root_arguments: list[Fn] | None = None
        """When ``root`` is a function call (not a cast): its arguments, cast
        to the parameter types. A function's answer in error (``ABS`` of the
        most negative integer is 2147483647) is the expression's value when its
        arguments had none (see Expression.evaluate)."""

    def warn(self, error: CesqlError) -> None:
        if error not in self.warnings:
            self.warnings.append(error)

    def compile(self, node: Node) -> tuple[Fn, str | None]:
        return getattr(self, "_" + node[0])(node)  # type: ignore[no-any-return]

    def typed(self, node: Node, target: str) -> Fn:
        """``node`` cast to ``target`` (3.7 implicit casts); MISSING passes through."""
        kind = node[0]
        if kind == "call" and self._is_cast(node, target):
            node = node[2][0]  # INT(x) where an Integer is wanted anyway: just the cast
            kind = node[0]
        if kind == "lit":
            errors: Errors = []
            value = CASTS[target](node[1], errors)
            if errors:
                error = errors[0]
                self.warn(error)

                def failed_literal(a: Attributes, e: Errors) -> Any:
                    e.append(error)
                    return value

                return failed_literal
            return lambda a, e: value
        if kind == "id":
            return _typed_attribute(node[1], target)
        fn, result = self.compile(node)
        if result == target:
            return fn
        cast = CASTS[target]

        def casted(a: Attributes, e: Errors) -> Any:
            value = fn(a, e)
            return value if value is MISSING else cast(value, e)

        return casted

    def _is_cast(self, node: Node, target: str) -> bool:
        """Whether ``node`` is a call of the built-in cast to ``target``."""
        if len(node[2]) != 1:
            return False
        function = self.functions.resolve(node[1], 1)
        return (
            function is not None
            and function.implementation is cast_function
            and function.returns == target
        )

    # -- leaves ------------------------------------------------------------------------

    def _lit(self, node: Node) -> tuple[Fn, str | None]:
        value = node[1]
        return (lambda a, e: value), type_of(value)

    def _id(self, node: Node) -> tuple[Fn, str | None]:
        name = node[1]

        def attribute(a: Attributes, e: Errors) -> Any:
            value: Any = a.get(name)
            kind = type(value)
            if kind is str or kind is bool or (kind is int and INT32_MIN <= value <= INT32_MAX):
                return value
            return read(a, name, e)

        return attribute, None

    def _exists(self, node: Node) -> tuple[Fn, str | None]:
        name = node[1]
        if name in _REQUIRED:
            return (lambda a, e: True), BOOLEAN
        return (lambda a, e: a.get(name) is not None), BOOLEAN

    # -- unary -------------------------------------------------------------------------

    def _not(self, node: Node) -> tuple[Fn, str | None]:
        fn = self.typed(node[1], BOOLEAN)

        def negate(a: Attributes, e: Errors) -> Any:
            value = fn(a, e)
            return False if value is MISSING else not value

        return negate, BOOLEAN

    def _neg(self, node: Node) -> tuple[Fn, str | None]:
        fn = self.typed(node[1], INTEGER)

        def minus(a: Attributes, e: Errors) -> Any:
            value = fn(a, e)
            if value is MISSING:
                return 0
            if value == INT32_MIN:
                e.append(_overflow(f"-({value})"))
                return 0
            return -value

        return minus, INTEGER

    # -- binary ------------------------------------------------------------------------

    def _bin(self, node: Node) -> tuple[Fn, str | None]:
        op, left, right = node[1], node[2], node[3]
        if op in ("AND", "OR", "XOR"):
            return self._logic(op, left, right), BOOLEAN
        if op in ("+", "-", "*", "/", "%"):
            return self._arithmetic(op, left, right), INTEGER
        if op in _COMPARE:
            return self._order(op, left, right), BOOLEAN
        return self._equality(op == "=", left, right), BOOLEAN

    def _logic(self, op: str, left: Node, right: Node) -> Fn:
        lf, rf = self.typed(left, BOOLEAN), self.typed(right, BOOLEAN)
        if op == "AND":
            # 3.6: "When the left operand of the AND operation evaluates to
            # false, the right operand MUST NOT be evaluated."
            def and_(a: Attributes, e: Errors) -> Any:
                if lf(a, e) is not True:
                    return False  # False, or MISSING: the zero value (3.2)
                return rf(a, e) is True

            return and_
        if op == "OR":

            def or_(a: Attributes, e: Errors) -> Any:
                x = lf(a, e)
                if x is True:
                    return True
                if x is MISSING:
                    return False
                return rf(a, e) is True

            return or_

        def xor(a: Attributes, e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            return x is not y

        return xor

    def _arithmetic(self, op: str, left: Node, right: Node) -> Fn:
        lf, rf = self.typed(left, INTEGER), self.typed(right, INTEGER)
        compute = _ARITHMETIC[op]
        if op in ("/", "%") and right[0] == "lit" and right[1] in (0, False, "0"):
            self.warn(MathError(f"{op} 0: division by zero"))

        def arithmetic(a: Attributes, e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return 0  # 3.2: "1 / missingAttribute" is 0, without a MathError
            return compute(x, y, e)

        return arithmetic

    def _order(self, op: str, left: Node, right: Node) -> Fn:
        # Integer x Integer only: not ambiguous, both operands cast (3.7 rule 2.1).
        lf, rf = self.typed(left, INTEGER), self.typed(right, INTEGER)
        compare = _COMPARE[op]

        def order(a: Attributes, e: Errors) -> Any:
            x, y = lf(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            return compare(x, y)

        return order

    def _equality(self, equal: bool, left: Node, right: Node) -> Fn:
        # 3.7 rule 2.2: `=` is ambiguous (Boolean, Integer, String); the type of
        # the right operand picks the definition and the left one is cast to it.
        # A failed cast gives the cast's own value (3.7 table) and a CastError,
        # and the comparison goes on with it (3.3: errors do not change the flow).
        rf, rtype = self.compile(right)
        compare = operator.eq if equal else operator.ne
        if rtype is not None:
            lf = self.typed(left, rtype)
            if right[0] == "lit":
                return _equals_literal(lf, right[1], equal)

            def equals_static(a: Attributes, e: Errors) -> Any:
                x, y = lf(a, e), rf(a, e)
                if x is MISSING or y is MISSING:
                    return False
                return compare(x, y)

            return equals_static
        lf_any, _ = self.compile(left)

        def equals_dynamic(a: Attributes, e: Errors) -> Any:
            x, y = lf_any(a, e), rf(a, e)
            if x is MISSING or y is MISSING:
                return False
            return compare(CASTS[type_of(y)](x, e), y)

        return equals_dynamic

    # -- LIKE, IN ----------------------------------------------------------------------

    def _like(self, node: Node) -> tuple[Fn, str | None]:
        # 3.4.3: "In cases where the left operand is not a String, it MUST be
        # cast to a String before the comparison is made."
        fn = self.typed(node[1], STRING)
        matcher = like_matcher(node[2])
        negated = node[3]

        def like(a: Attributes, e: Errors) -> Any:
            value = fn(a, e)
            if value is MISSING:
                return False
            return matcher(value) is not negated

        return like, BOOLEAN

    def _in(self, node: Node) -> tuple[Fn, str | None]:
        lf, _ = self.compile(node[1])
        negated = node[3]
        if all(item[0] == "lit" for item in node[2]):
            return _in_literals(lf, [item[1] for item in node[2]], negated), BOOLEAN
        items = tuple(self.compile(item)[0] for item in node[2])

        def in_(a: Attributes, e: Errors) -> Any:
            x = lf(a, e)
            if x is MISSING:
                return False
            # 3.4.5: the matching uses "the same semantics of the equal =
            # operator, but using x type as the target type". The set is
            # unordered (3.1), so every element is evaluated and every failed
            # cast reported, whatever the position of a match.
            cast = CASTS[type_of(x)]
            found = missing = False
            for fn in items:
                y = fn(a, e)
                if y is MISSING:
                    missing = True
                elif cast(y, e) == x:
                    found = True
            if missing:
                return False  # 3.2: the IN operation references a missing attribute
            return found is not negated

        return in_, BOOLEAN

    # -- functions ---------------------------------------------------------------------

    def _call(self, node: Node) -> tuple[Fn, str | None]:
        name, args = node[1], node[2]
        function = self.functions.resolve(name, len(args))
        if function is None:
            message = f"no function {name} taking {len(args)} argument(s)"
            self.warn(MissingFunctionError(message))

            def missing_function(a: Attributes, e: Errors) -> Any:
                # 3.5: "When a function invocation cannot be dispatched, the
                # return value is false, and a MissingFunctionError is also returned."
                e.append(MissingFunctionError(message))
                return False

            return missing_function, BOOLEAN
        if function.implementation is cast_function:
            # INT(x), BOOL(x), STRING(x): the cast of x is the whole call.
            return self.typed(args[0], function.returns), function.returns
        fns = [self.typed(arg, function.parameter(i)) for i, arg in enumerate(args)]
        if node is self._root:
            self.root_arguments = fns
        if function.native:
            constant = self._constant(args[1], function.parameter(1)) if len(args) == 2 else None
            if constant is not None:  # LEFT(subject, 4): the 4 needs no call
                return _native_call_constant(function, fns[0], constant[0]), function.returns
            return _native_call(function, fns), function.returns
        return _user_call(function, fns), function.returns

    def _constant(self, node: Node, target: str) -> tuple[Any] | None:
        """``(value,)`` when ``node`` is a literal that casts to ``target`` without error."""
        if node[0] != "lit":
            return None
        errors: Errors = []
        value = CASTS[target](node[1], errors)
        return None if errors else (value,)

    # -- tests (fail-fast, for matches) -----------------------------------------------

    def test(self, node: Node) -> Test:
        """``node`` as a Boolean: True, False, or None when an error occurred."""
        kind = node[0]
        if kind == "bin" and node[1] in ("AND", "OR", "XOR"):
            return _logic_test(node[1], self.test(node[2]), self.test(node[3]))
        if kind == "not":
            inner = self.test(node[1])

            def not_(a: Attributes) -> bool | None:
                value = inner(a)
                return None if value is None else not value

            return not_
        if kind == "exists":
            name = node[1]
            if name in _REQUIRED:
                return lambda a: True
            return lambda a: a.get(name) is not None
        slow = _via(self.typed(node, BOOLEAN))
        if kind == "bin" and node[1] in ("=", "!=", "<>"):
            left, right = node[2], node[3]
            if left[0] == "id" and right[0] == "lit":
                return _equals_test(left[1], right[1], node[1] == "=", slow)
        if kind == "bin" and node[1] in _COMPARE:
            left, right = node[2], node[3]
            if left[0] == "call" and self._is_cast(left, INTEGER):
                left = left[2][0]
            if left[0] == "id" and right[0] == "lit" and type(right[1]) is int:
                return _order_test(left[1], node[1], right[1], slow)
        if kind == "like" and node[1][0] == "id":
            return _like_test(node[1][1], like_matcher(node[2]), node[2], node[3], slow)
        if kind == "in" and node[1][0] == "id" and all(item[0] == "lit" for item in node[2]):
            return _in_test(node[1][1], [item[1] for item in node[2]], node[3], slow)
        return slow

    def conjuncts(self, node: Node) -> list[Node]:
        """The operands of a chain of ANDs (left to right), or ``[node]``."""
        if node[0] == "bin" and node[1] == "AND":
            return [*self.conjuncts(node[2]), *self.conjuncts(node[3])]
        return [node]


# -- what an evaluation may cost -----------------------------------------------------

# The built-ins that build a new String (a copy, up to MAX_STRING_LENGTH). The
# others answer in constant time: LENGTH, ABS, and the casts (a String cast to
# Integer or Boolean reads a few characters at most, see to_integer/to_boolean).
_COPYING = frozenset(
    {"CONCAT", "CONCAT_WS", "LOWER", "UPPER", "TRIM", "LEFT", "RIGHT", "SUBSTRING"}
)


def nodes(tree: Node) -> Iterator[Node]:
    """Every node of ``tree`` (iteratively: a deep tree costs no recursion)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        kind = node[0]
        if kind == "call":
            stack.extend(node[2])
        elif kind in ("not", "neg", "like"):
            stack.append(node[1])
        elif kind == "bin":
            stack += (node[2], node[3])
        elif kind == "in":
            stack.append(node[1])
            stack.extend(node[2])


def read_attributes(tree: Node) -> frozenset[str]:
    """The attributes an evaluation of ``tree`` reads (an absent one is an error).

    EXISTS only asks: an absent attribute is its answer, not an error.
    """
    return frozenset(node[1] for node in nodes(tree) if node[0] == "id")


def string_passes(tree: Node, functions: FunctionRegistry) -> int:
    """At most how many times one evaluation of ``tree`` reads or copies a whole String.

    Every other step costs a dictionary lookup or a comparison (equality of
    Strings stops at the first difference, and at once when the lengths
    differ), so this, times the largest value an event may carry, bounds the
    work of an evaluation: a built-in that builds a String is one pass, a user
    function one, a LIKE whatever its pattern needs (like.scan_passes).
    """
    passes = 0
    for node in nodes(tree):
        kind = node[0]
        if kind == "call":
            function = functions.resolve(node[1], len(node[2]))
            if function is not None and (not function.native or function.name in _COPYING):
                passes += 1
        elif kind == "like":
            passes += scan_passes(node[2])
    return passes


# -- arithmetic (spec.md 3.4.2) -------------------------------------------------------


def _overflow(what: str) -> CesqlError:
    return MathError(f"{what} overflows a 32-bit integer")


def _checked(result: int, what: str, e: Errors) -> int:
    if INT32_MIN <= result <= INT32_MAX:
        return result
    e.append(_overflow(what))
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


_ARITHMETIC: dict[str, Callable[[int, int, Errors], int]] = {
    "+": _add,
    "-": _subtract,
    "*": _multiply,
    "/": _divide,
    "%": _remainder,
}


# -- closures for common shapes ---------------------------------------------------------


def _typed_attribute(name: str, target: str) -> Fn:
    """An attribute cast to ``target``: the value itself when it has that type."""
    cast = CASTS[target]
    if target == INTEGER:

        def integer_attribute(a: Attributes, e: Errors) -> Any:
            value = a.get(name)
            if type(value) is int and INT32_MIN <= value <= INT32_MAX:
                return value
            if type(value) is str:
                number = _fast_int(value)
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


def _in_literals(lf: Fn, literals: list[Any], negated: bool) -> Fn:
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


def _native_call(function: Function, fns: list[Fn]) -> Fn:
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


def _native_call_constant(function: Function, first: Fn, second: Any) -> Fn:
    implementation = function.implementation
    zero = ZERO[function.returns]

    def call_constant(a: Attributes, e: Errors) -> Any:
        x = first(a, e)
        return zero if x is MISSING else implementation(e, x, second)

    return call_constant


def _equals_literal(lf: Fn, literal: Any, equal: bool) -> Fn:
    if equal:

        def equals(a: Attributes, e: Errors) -> Any:
            x = lf(a, e)
            return False if x is MISSING else x == literal

        return equals

    def differs(a: Attributes, e: Errors) -> Any:
        x = lf(a, e)
        return False if x is MISSING else x != literal

    return differs


def _user_call(function: Function, fns: list[Fn]) -> Fn:
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
        if type(result) is not returns or (returns is int and not _is_int32(result)):
            e.append(
                FunctionEvaluationError(f"{name} returned {result!r}, not a {function.returns}")
            )
            return zero
        return result

    return call


# -- tests ---------------------------------------------------------------------------


def _via(fn: Fn) -> Test:
    """The general closure as a test: its Boolean value, or None if it reported errors."""

    def test(a: Attributes) -> bool | None:
        errors: Errors = []
        value = fn(a, errors)
        return None if errors else value

    return test


def _logic_test(op: str, left: Test, right: Test) -> Test:
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


def _equals_test(name: str, literal: Any, equal: bool, slow: Test) -> Test:
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


def _order_test(name: str, op: str, bound: int, slow: Test) -> Test:
    compare = getattr(bound, _MIRRORED[op])

    def order(a: Attributes) -> bool | None:
        value = a.get(name)
        if type(value) is str:
            if len(value) < 10 and value.isdigit() and value.isascii():
                return compare(int(value))  # type: ignore[no-any-return]
        elif type(value) is int and INT32_MIN <= value <= INT32_MAX:
            return compare(value)  # type: ignore[no-any-return]
        return slow(a)

    return order


def _like_test(
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


def _in_test(name: str, literals: list[Any], negated: bool, slow: Test) -> Test:
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
