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

import operator
from collections.abc import Iterator
from typing import Any

from headwater.cesql._fast import (
    equals_literal,
    equals_test,
    in_literals,
    in_test,
    like_test,
    logic_test,
    native_call,
    native_call_constant,
    order_test,
    typed_attribute,
    user_call,
    via,
)
from headwater.cesql._values import (
    ARITHMETIC,
    CASTS,
    COMPARE,
    MISSING,
    REQUIRED,
    Attributes,
    Errors,
    Fn,
    Test,
    overflow,
    read,
    type_of,
)
from headwater.cesql.errors import (
    CesqlError,
    MathError,
    MissingFunctionError,
)
from headwater.cesql.functions import (
    BOOLEAN,
    INT32_MAX,
    INT32_MIN,
    INTEGER,
    STRING,
    FunctionRegistry,
    cast_function,
)
from headwater.cesql.like import like_matcher, scan_passes
from headwater.cesql.parser import Node

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
            return typed_attribute(node[1], target)
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
        if name in REQUIRED:
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
                e.append(overflow(f"-({value})"))
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
        if op in COMPARE:
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
        compute = ARITHMETIC[op]
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
        compare = COMPARE[op]

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
                return equals_literal(lf, right[1], equal)

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
            return in_literals(lf, [item[1] for item in node[2]], negated), BOOLEAN
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
                return native_call_constant(function, fns[0], constant[0]), function.returns
            return native_call(function, fns), function.returns
        return user_call(function, fns), function.returns

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
            return logic_test(node[1], self.test(node[2]), self.test(node[3]))
        if kind == "not":
            inner = self.test(node[1])

            def not_(a: Attributes) -> bool | None:
                value = inner(a)
                return None if value is None else not value

            return not_
        if kind == "exists":
            name = node[1]
            if name in REQUIRED:
                return lambda a: True
            return lambda a: a.get(name) is not None
        slow = via(self.typed(node, BOOLEAN))
        if kind == "bin" and node[1] in ("=", "!=", "<>"):
            left, right = node[2], node[3]
            if left[0] == "id" and right[0] == "lit":
                return equals_test(left[1], right[1], node[1] == "=", slow)
        if kind == "bin" and node[1] in COMPARE:
            left, right = node[2], node[3]
            if left[0] == "call" and self._is_cast(left, INTEGER):
                left = left[2][0]
            if left[0] == "id" and right[0] == "lit" and type(right[1]) is int:
                return order_test(left[1], node[1], right[1], slow)
        if kind == "like" and node[1][0] == "id":
            return like_test(node[1][1], like_matcher(node[2]), node[2], node[3], slow)
        if kind == "in" and node[1][0] == "id" and all(item[0] == "lit" for item in node[2]):
            return in_test(node[1][1], [item[1] for item in node[2]], node[3], slow)
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
