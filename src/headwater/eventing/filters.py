"""Trigger filters, compiled once and evaluated per event.

How this works: a filter specification (Knative's ``spec.filter.attributes``
or the CloudEvents Subscriptions API ``filters`` dialects Knative adopted) is
turned into one plain function ``event -> bool`` when the Trigger is created.
Each dialect compiles to a closure and composite dialects (``all``, ``any``,
``not``) compose closures, so evaluating a filter never looks at the
specification again. Anything wrong with the specification (an unknown
dialect, an empty name or value, a CESQL syntax error) raises
:class:`FilterError` at compile time, which rejects the Trigger
(subscriptions-spec.md 3.2.4: "creation or update of the subscription MUST be
rejected with an error"); evaluation itself never raises.

Attribute values are compared in their canonical string form (spec.md "Type
System"), so ``{"exact": {"knativebrokerttl": "255"}}`` matches the integer 255.
"""

from __future__ import annotations

import base64
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Protocol

from headwater.cloudevents import CloudEvent

__all__ = [
    "MATCH_ALL",
    "EventFilter",
    "FilterError",
    "compile_attributes_filter",
    "compile_filters",
    "compile_trigger_filter",
]

EventFilter = Callable[[CloudEvent], bool]


class FilterError(ValueError):
    """A filter specification that cannot be compiled; the Trigger must be rejected."""


def MATCH_ALL(event: CloudEvent) -> bool:
    """The filter of a Trigger without one: every event matches."""
    return True


def _as_string(value: object) -> str | None:
    """The canonical string of an attribute value, or None when the attribute is absent."""
    kind = type(value)
    if kind is str:
        return value  # type: ignore[return-value]
    if value is None:
        return None
    if kind is bool:
        return "true" if value else "false"
    if kind is bytes:
        return base64.b64encode(value).decode("ascii")  # type: ignore[arg-type]
    return str(value)


# -- Knative TriggerFilter -------------------------------------------------------


def compile_attributes_filter(attributes: Mapping[str, str]) -> EventFilter:
    """Knative ``spec.filter.attributes``.

    control-plane.md TriggerFilter: "For each key specified in the filter, an
    attribute with that name MUST be present in the event to match. If the
    value corresponding to the key is non-empty, the value MUST be an exact
    (case-sensitive) match to attribute value in the event; an empty string
    MUST match all attribute values."
    """
    checks: list[tuple[str, str]] = []
    for name, value in attributes.items():
        if not isinstance(name, str) or not name:
            raise FilterError("filter.attributes: attribute names must be non-empty strings")
        if not isinstance(value, str):
            raise FilterError(f"filter.attributes.{name}: the value must be a string")
        checks.append((name, value))
    if not checks:
        return MATCH_ALL
    if len(checks) == 1:
        ((name, want),) = checks
        if want == "":
            return lambda event: name in event
        return lambda event: _as_string(event.get(name)) == want

    def match(event: CloudEvent) -> bool:
        get = event.get
        for name, want in checks:
            have = _as_string(get(name))
            if have is None or (want and have != want):
                return False
        return True

    return match


# -- Subscriptions API dialects (subscriptions-spec.md 3.2.4.1) --------------------


def _string_map(dialect: str, spec: object) -> list[tuple[str, str]]:
    if not isinstance(spec, Mapping) or not spec:
        raise FilterError(f"{dialect}: needs a map of attribute names to values")
    pairs: list[tuple[str, str]] = []
    for name, value in spec.items():
        # 3.2.4.1.1: "The attribute name and value specified in the filter
        # expression MUST NOT be empty strings."
        if not isinstance(name, str) or not name:
            raise FilterError(f"{dialect}: attribute names must be non-empty strings")
        if not isinstance(value, str) or not value:
            raise FilterError(f"{dialect}.{name}: the value must be a non-empty string")
        pairs.append((name, value))
    return pairs


def _compare(dialect: str, spec: object, test: Callable[[str, str], bool]) -> EventFilter:
    pairs = _string_map(dialect, spec)
    if len(pairs) == 1:
        ((name, want),) = pairs

        def one(event: CloudEvent) -> bool:
            have = _as_string(event.get(name))
            return have is not None and test(have, want)

        return one

    def every(event: CloudEvent) -> bool:
        get = event.get
        for name, want in pairs:
            have = _as_string(get(name))
            if have is None or not test(have, want):
                return False
        return True

    return every


def _exact(spec: object) -> EventFilter:
    # "the values of the matching CloudEvents attributes MUST all exactly match"
    pairs = _string_map("exact", spec)
    if len(pairs) == 1:
        ((name, want),) = pairs
        return lambda event: _as_string(event.get(name)) == want
    return _compare("exact", spec, str.__eq__)


def _prefix(spec: object) -> EventFilter:
    # "... MUST all start with the associated value String specified (case sensitive)"
    return _compare("prefix", spec, str.startswith)


def _suffix(spec: object) -> EventFilter:
    # "... MUST all end with the associated value String specified (case sensitive)"
    return _compare("suffix", spec, str.endswith)


def _nested_list(dialect: str, spec: object) -> list[EventFilter]:
    # "Note: there MUST be at least one filter expression in the array."
    if not isinstance(spec, Sequence) or isinstance(spec, str | bytes) or not spec:
        raise FilterError(f"{dialect}: needs a non-empty list of filter expressions")
    return [_compile_one(item, f"{dialect}[{i}]") for i, item in enumerate(spec)]


def _all(spec: object) -> EventFilter:
    filters = tuple(_nested_list("all", spec))
    if len(filters) == 1:
        return filters[0]
    return lambda event: all(f(event) for f in filters)


def _any(spec: object) -> EventFilter:
    filters = tuple(_nested_list("any", spec))
    if len(filters) == 1:
        return filters[0]
    return lambda event: any(f(event) for f in filters)


def _not(spec: object) -> EventFilter:
    # "Use of this MUST include one nested filter expression"
    inner = _compile_one(spec, "not")
    return lambda event: not inner(event)


class _Expression(Protocol):
    """What :func:`headwater.cesql.compile` returns, as far as filtering needs it."""

    def matches(self, event: CloudEvent) -> bool: ...


def _cesql_engine() -> tuple[Callable[[str], _Expression], type[Exception]]:
    """``headwater.cesql``'s ``compile`` and ``ParseError``, looked up when first needed."""
    try:
        module = importlib.import_module("headwater.cesql")
        return module.compile, module.ParseError
    except (ImportError, AttributeError) as exc:
        raise FilterError("cesql: the CESQL engine (headwater.cesql) is not available") from exc


def _cesql(spec: object) -> EventFilter:
    if not isinstance(spec, str) or not spec.strip():
        raise FilterError("cesql: needs a CESQL expression string")
    compile_expression, parse_error = _cesql_engine()
    try:
        expression = compile_expression(spec)
    except parse_error as exc:
        # "Implementations SHOULD reject subscriptions with invalid CloudEvents
        # SQL expressions."
        raise FilterError(f"cesql: invalid expression {spec!r}: {exc}") from exc
    matches = expression.matches

    def match(event: CloudEvent) -> bool:
        # 3.2.4.1.2: the result "MUST be false if an error occurred while
        # evaluating the expression ... or if the result value is not a boolean".
        try:
            return matches(event) is True
        except Exception:  # an evaluation error is a non-match, never a crash
            return False

    return match


_DIALECTS: Final[dict[str, Callable[[object], EventFilter]]] = {
    "exact": _exact,
    "prefix": _prefix,
    "suffix": _suffix,
    "all": _all,
    "any": _any,
    "not": _not,
    "cesql": _cesql,  # Knative's name for the dialect
    "sql": _cesql,  # the Subscriptions API's name for the same dialect
}


def _compile_one(expression: object, where: str) -> EventFilter:
    if not isinstance(expression, Mapping) or len(expression) != 1:
        raise FilterError(
            f"{where}: a filter expression is a map with exactly one dialect "
            f"({', '.join(_DIALECTS)})"
        )
    ((dialect, spec),) = expression.items()
    compile_dialect = _DIALECTS.get(dialect)
    if compile_dialect is None:
        # 3.2.4: an unsupported dialect "MUST be rejected with an error".
        raise FilterError(f"{where}: unsupported filter dialect {dialect!r}")
    try:
        return compile_dialect(spec)
    except FilterError as exc:
        raise FilterError(f"{where}: {exc}") from exc.__cause__


def compile_filters(filters: Sequence[Mapping[str, Any]]) -> EventFilter:
    """The ``filters`` list: every expression must match (3.2.4); empty matches everything."""
    compiled = [_compile_one(item, f"filters[{i}]") for i, item in enumerate(filters)]
    if not compiled:
        return MATCH_ALL
    if len(compiled) == 1:
        return compiled[0]
    chain = tuple(compiled)
    return lambda event: all(f(event) for f in chain)


def compile_trigger_filter(
    attributes: Mapping[str, str] | None = None,
    filters: Sequence[Mapping[str, Any]] | None = None,
) -> EventFilter:
    """A Trigger's filter: ``filters`` when non-empty (it replaces ``filter``), else ``filter``."""
    if filters:
        return compile_filters(filters)
    return compile_attributes_filter(attributes or {})
