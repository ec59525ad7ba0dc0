"""PrometheusSink: telemetry events become gauges and counters for Prometheus to scrape.

How this works: each configured :class:`MetricSpec` names a metric, its type,
the labels (each from a CloudEvent attribute or extension) and the value (a
JMESPath over the JSON data; a counter without one counts events). A
delivery updates one series per metric in plain dicts (no Prometheus objects
on the event path) and remembers when. At scrape time
:meth:`PrometheusSink.metric_families` turns the state into prometheus_client
metric families, first forgetting every series not updated for ``staleness``
seconds: a device that stopped reporting disappears from the exposition, and
Prometheus marks its series stale, instead of repeating its last reading
forever. The families are served on Headwater's ``/metrics`` (the runtime
component exposes them) or on a port of the sink's own.

Each metric holds at most ``max_series`` series (cardinality guard); an event
that would add one more, after stale ones are forgotten, is refused with a
non-retryable :class:`DeliveryError` (dead-lettered, never silently dropped).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headwater.cloudevents import CloudEvent
from headwater.cloudevents._types import canonical_string
from headwater.eventing.sink import DeliveryError
from headwater.sinks._values import NOT_JSON, compile_path, json_data
from headwater.sinks.metricspec import (
    DEFAULT_MAX_SERIES,
    DEFAULT_STALENESS,
    MetricSpec,
    clashing_names,
)

__all__ = ["PrometheusSink"]

Clock = Callable[[], float]


class _Series:
    __slots__ = ("seen", "value")

    def __init__(self, value: float, seen: float) -> None:
        self.value = value
        self.seen = seen


class _Metric:
    """A compiled :class:`MetricSpec` and its series (label values -> value)."""

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        self.label_names = tuple(spec.labels)
        self.attributes = tuple(spec.labels.values())
        self.value = compile_path(spec.value) if spec.value is not None else None
        self.counter = spec.type == "counter"
        self.series: dict[tuple[str, ...], _Series] = {}

    def forget_stale(self, oldest: float) -> None:
        stale = [key for key, series in self.series.items() if series.seen < oldest]
        for key in stale:
            del self.series[key]

    def family(self) -> Metric:
        spec = self.spec
        family: GaugeMetricFamily | CounterMetricFamily
        if self.counter:
            family = CounterMetricFamily(spec.name, spec.help, labels=self.label_names)
        else:
            family = GaugeMetricFamily(spec.name, spec.help, labels=self.label_names)
        for key, series in self.series.items():
            family.add_metric(list(key), series.value)
        return family


def _number(value: Any) -> float | None:
    kind = type(value)
    if kind is float or kind is int:
        return float(value) if math.isfinite(value) else None
    if kind is bool:
        return 1.0 if value else 0.0
    if kind is str:
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


class PrometheusSink:
    """Keeps the latest value (gauges) or running total (counters) per series."""

    def __init__(
        self,
        metrics: Sequence[MetricSpec],
        *,
        staleness: float = DEFAULT_STALENESS,
        max_series: int = DEFAULT_MAX_SERIES,
        clock: Clock = time.monotonic,
    ) -> None:
        if not metrics:
            raise ValueError("a PrometheusSink needs at least one metric")
        clashing = clashing_names([m.name for m in metrics])
        if clashing:
            raise ValueError(
                f"metric names must be unique, a counter's _total suffix set aside: {clashing}"
            )
        if staleness <= 0 or max_series < 1:
            raise ValueError("staleness must be > 0 and max_series >= 1")
        self._metrics = [_Metric(spec) for spec in metrics]
        self.staleness = staleness
        self.max_series = max_series
        self._clock = clock
        self.received = 0
        self.unused = 0

    def __repr__(self) -> str:
        return f"PrometheusSink({[m.spec.name for m in self._metrics]})"

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        self.received += 1
        now = self._clock()
        data = json_data(event)
        attributes = event.attributes
        # Every metric's change is checked before any is made: an event refused for one
        # metric (a counter going down, a series over the cap) changes none, so its
        # dead letter, re-driven, counts once.
        changes: list[tuple[_Metric, tuple[str, ...], float]] = []
        for metric in self._metrics:
            spec = metric.spec
            if spec.event_type is not None and event.type != spec.event_type:
                continue
            if metric.value is None:
                amount = 1.0
            else:
                if data is NOT_JSON:
                    continue
                found = _number(metric.value(data))
                if found is None:
                    continue  # this event does not carry this metric's value
                amount = found
                if metric.counter and amount < 0:
                    raise DeliveryError(
                        None, False, reason=f"counter {spec.name} cannot go down by {-amount}"
                    )
            key = tuple(_label_value(attributes.get(name)) for name in metric.attributes)
            if key not in metric.series:
                if len(metric.series) >= self.max_series:
                    metric.forget_stale(now - self.staleness)
                if len(metric.series) >= self.max_series:
                    raise DeliveryError(
                        None,
                        False,
                        reason=f"metric {spec.name} already has {self.max_series} series; "
                        f"refusing labels {dict(zip(metric.label_names, key, strict=True))}",
                    )
            changes.append((metric, key, amount))
        for metric, key, amount in changes:
            series = metric.series.get(key)
            if series is None:
                series = metric.series[key] = _Series(0.0 if metric.counter else amount, now)
            if metric.counter:
                series.value += amount
            else:
                series.value = amount
            series.seen = now
        if not changes:
            self.unused += 1
        return None

    def metric_families(self) -> list[Metric]:
        """The metrics as they are now, stale series forgotten first."""
        oldest = self._clock() - self.staleness
        families = []
        for metric in self._metrics:
            metric.forget_stale(oldest)
            families.append(metric.family())
        return families

    def series_count(self) -> int:
        return sum(len(m.series) for m in self._metrics)

    def render(self) -> bytes:
        """The text exposition format of :meth:`metric_families` (for a port of its own)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry)


class _Families(Collector):
    def __init__(self, sink: PrometheusSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        yield from self.sink.metric_families()


def _label_value(value: object) -> str:
    return "" if value is None else canonical_string(value)  # type: ignore[arg-type]
