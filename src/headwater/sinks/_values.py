"""Values out of an event's JSON data: compiled JMESPath with a fast path for plain keys.

How this works: :func:`compile_path` turns an expression into a function over
a decoded JSON value. A dotted chain of plain identifiers (``temperature``,
``reading.celsius``), which is what almost every telemetry mapping uses, is
looked up key by key without entering the JMESPath interpreter (several
times faster); anything else (``sensors[0].value``, ``max(values)``) is
compiled once by :mod:`jmespath` and searched per event. :func:`json_data`
gives an event's data as a JSON value, decoding bytes at most once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jmespath
import orjson
from jmespath.exceptions import JMESPathError

from headwater.cloudevents import CloudEvent
from headwater.cloudevents.event import is_json_content_type

__all__ = ["NOT_JSON", "InvalidPath", "compile_path", "json_data"]

_PLAIN_CHAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")

NOT_JSON: Any = object()
"""What :func:`json_data` returns for data that is absent or not JSON."""


class InvalidPath(ValueError):
    """A JMESPath expression that does not compile; the message says where."""


def compile_path(expression: str) -> Callable[[Any], Any]:
    """A function from decoded JSON to the value at ``expression`` (``None`` if absent)."""
    if _PLAIN_CHAIN.match(expression):
        keys = tuple(expression.split("."))
        if len(keys) == 1:
            (key,) = keys

            def one(value: Any) -> Any:
                return value.get(key) if type(value) is dict else None

            return one

        def chain(value: Any) -> Any:
            for key in keys:
                if type(value) is not dict:
                    return None
                value = value.get(key)
            return value

        return chain
    try:
        compiled = jmespath.compile(expression)
    except JMESPathError as exc:
        raise InvalidPath(f"invalid JMESPath {expression!r}: {exc}") from exc
    search = compiled.search

    def searched(value: Any) -> Any:
        try:
            return search(value)
        except JMESPathError:
            # A function applied to the wrong type (max() of strings): no value.
            return None

    return searched


def json_data(event: CloudEvent) -> Any:
    """The event's data as a JSON value, or :data:`NOT_JSON`.

    Data that a JSON decoder already parsed is used as is; bytes are parsed
    when ``datacontenttype`` is JSON or absent (an absent one means JSON,
    json-format.md 3.1.1).
    """
    if not event.has_data:
        return NOT_JSON
    data = event.data
    content_type = event.datacontenttype
    if not is_json_content_type(content_type):
        return NOT_JSON
    if type(data) is bytes:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return NOT_JSON
    # Anything else was decoded already; a str is a JSON string value (data_bytes()).
    return data
