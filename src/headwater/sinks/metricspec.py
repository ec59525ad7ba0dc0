"""What a PrometheusSink's metric is: a name, a type, labels and a value, checked once.

How this works: :class:`MetricSpec` is a frozen value that refuses what the
Prometheus data model refuses (metric and label names, reserved ``__``
labels) and a value expression that does not compile, when it is built. A
pure module (no prometheus_client): the resource schema validates a
PrometheusSink's spec through it at apply time, and the sink
(:mod:`headwater.sinks.prometheus`) runs the same value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from headwater.sinks._values import compile_path

__all__ = ["DEFAULT_MAX_SERIES", "DEFAULT_STALENESS", "MetricSpec", "clashing_names"]

DEFAULT_STALENESS: Final = 300.0
"""Seconds without an update after which a series is dropped (Prometheus's own
lookback is 5 minutes, so a dropped series and a silent one look alike to queries)."""

DEFAULT_MAX_SERIES: Final = 10_000
"""Series per metric: far above a gateway's devices, low enough that a label fed
by something unbounded (an event id) cannot grow the process without limit."""

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: ``labels`` maps a label name to the attribute that gives its value."""

    name: str
    type: Literal["gauge", "counter"] = "gauge"
    help: str = ""
    value: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    event_type: str | None = None

    def __post_init__(self) -> None:
        # Prometheus data model: metric names [a-zA-Z_:][a-zA-Z0-9_:]*, label
        # names [a-zA-Z_][a-zA-Z0-9_]*, "names beginning with __ are reserved".
        if not _METRIC_NAME.match(self.name):
            raise ValueError(f"metric name {self.name!r} is not [a-zA-Z_:][a-zA-Z0-9_:]*")
        for label in self.labels:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"label name {label!r} of {self.name} is not a valid label")
        if self.type not in ("gauge", "counter"):
            raise ValueError(f"metric type must be gauge or counter, not {self.type!r}")
        if self.type == "gauge" and self.value is None:
            raise ValueError(f"gauge {self.name} needs a `value` expression")
        if self.value is not None:
            compile_path(self.value)  # InvalidPath (a ValueError) says where


def clashing_names(names: list[str]) -> list[str]:
    """The metric names that would be exposed twice: a counter ``x`` is exposed as
    ``x_total``, so ``x`` and ``x_total`` clash whatever their types (one ``# TYPE``
    per name in the text format), as two of one name do."""
    keys = [name.removesuffix("_total") for name in names]
    return sorted({name for name, key in zip(names, keys, strict=True) if keys.count(key) > 1})
