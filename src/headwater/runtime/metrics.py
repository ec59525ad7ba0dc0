"""Prometheus metric families of the running components, for ``/metrics``.

How this works: nothing on the event path touches Prometheus objects. The
data plane keeps plain counters (per Broker, Channel, Trigger, Subscription,
source); at scrape time each component that is
:class:`~headwater.runtime.capabilities.HasMetrics` turns its own counters
into families (with the helpers below, so that every Broker's
``headwater_events_accepted`` has the same help and labels), and
:func:`collect` merges the families of one name from all components into
one, adds each stream's size from the log, and returns them for rendering.
A scrape costs one pass over the running components, never a lock on the
hot path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import accumulate
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from headwater.eventing import Broker as BrokerFanout
from headwater.eventing import Channel as ChannelFanout
from headwater.eventing import DeliveryStats
from headwater.log import LogError, StreamInfo
from headwater.logs import Throttle
from headwater.runtime.capabilities import HasFanout, HasMetrics
from headwater.runtime.reconciler import Key

__all__ = ["collect", "fanout_families", "member_families", "merge", "source_families"]

log = logging.getLogger(__name__)

_conflicts = Throttle(log)
"""One line per metric name whose families disagree on their type, per interval."""

FANOUT_LABELS = ["kind", "namespace", "name"]
MEMBER_LABELS = ["kind", "namespace", "name", "parent"]

MEMBER_COUNTERS = (
    ("delivered", "Events the subscriber accepted."),
    ("failed_attempts", "Delivery attempts that failed (each failed retry counts)."),
    ("retried", "Retries made."),
    ("dead_lettered", "Events given up on and kept as dead letters (the store and/or the DLS)."),
    ("sent_to_dead_letter_sink", "Dead letters the dead letter sink accepted."),
    ("dropped", "Events given up on that nothing kept."),
    ("filtered", "Events the filter did not match."),
    ("replies", "Reply events forwarded."),
    ("expired", "Events not delivered because their expiresat had passed."),
)


def fanout_families(kind: str, fanout: BrokerFanout | ChannelFanout) -> list[Metric]:
    """A Broker's or Channel's counters (its members have their own)."""
    labels = [kind, fanout.namespace, fanout.name]
    accepted = CounterMetricFamily(
        "headwater_events_accepted",
        "Events durably appended to a Broker or Channel.",
        labels=FANOUT_LABELS,
    )
    accepted.add_metric(labels, fanout.stats.accepted)
    saturated = CounterMetricFamily(
        "headwater_saturated",
        "Appends refused because the log was not keeping up (answered 503).",
        labels=FANOUT_LABELS,
    )
    saturated.add_metric(labels, fanout.stats.saturated)
    if not isinstance(fanout, BrokerFanout):
        return [accepted, saturated]
    ttl = CounterMetricFamily(
        "headwater_ttl_dropped",
        "Events dropped by the knativebrokerttl loop guard.",
        labels=["namespace", "name"],
    )
    ttl.add_metric(labels[1:], fanout.stats.ttl_dropped)
    return [accepted, saturated, ttl]


def member_families(key: Key, parent: str, stats: DeliveryStats) -> list[Metric]:
    """A Trigger's or Subscription's delivery counters, lag and latency."""
    labels = [*key, parent]
    families: list[Metric] = []
    for name, doc in MEMBER_COUNTERS:
        counter = CounterMetricFamily(f"headwater_delivery_{name}", doc, labels=MEMBER_LABELS)
        counter.add_metric(labels, getattr(stats, name))  # a counter the table names
        families.append(counter)
    lag = GaugeMetricFamily(
        "headwater_delivery_lag_events",
        "Events in the log not yet acknowledged by this Trigger/Subscription.",
        labels=MEMBER_LABELS,
    )
    lag.add_metric(labels, stats.lag)
    inflight = GaugeMetricFamily(
        "headwater_delivery_in_flight", "Deliveries in progress.", labels=MEMBER_LABELS
    )
    inflight.add_metric(labels, stats.in_flight)
    latency = HistogramMetricFamily(
        "headwater_delivery_latency_seconds",
        "From the first attempt to the subscriber's acceptance.",
        labels=MEMBER_LABELS,
    )
    hist = stats.latency
    cumulative = list(accumulate(hist.counts))
    bounds = [*(str(b) for b in hist.buckets), "+Inf"]
    latency.add_metric(labels, list(zip(bounds, cumulative, strict=True)), hist.sum)
    return [*families, lag, inflight, latency]


def source_families(key: Key, sent: int, failed: int) -> list[Metric]:
    """A source's events handed to its sink, and those it could not hand over."""
    labels = list(key)
    sent_family = CounterMetricFamily(
        "headwater_source_events_sent",
        "Events a source handed to its sink.",
        labels=FANOUT_LABELS,
    )
    sent_family.add_metric(labels, sent)
    failed_family = CounterMetricFamily(
        "headwater_source_events_failed",
        "Events a source could not hand to its sink.",
        labels=FANOUT_LABELS,
    )
    failed_family.add_metric(labels, failed)
    return [sent_family, failed_family]


def stream_families(streams: dict[str, StreamInfo]) -> list[Metric]:
    events = GaugeMetricFamily(
        "headwater_log_events", "Events retained in a stream.", labels=["stream"]
    )
    size = GaugeMetricFamily(
        "headwater_log_bytes", "Bytes of events retained in a stream.", labels=["stream"]
    )
    last = GaugeMetricFamily(
        "headwater_log_last_offset", "The newest offset of a stream.", labels=["stream"]
    )
    dropped = CounterMetricFamily(
        "headwater_log_retention_dropped", "Events removed by retention.", labels=["stream"]
    )
    for name, info in sorted(streams.items()):
        events.add_metric([name], info.events)
        size.add_metric([name], info.bytes)
        last.add_metric([name], info.last_offset)
        dropped.add_metric([name], info.dropped)
    return [events, size, last, dropped]


def merge(families: Iterable[Metric]) -> list[Metric]:
    """One family per name, in the order names first appear, with every sample.

    The exposition format allows one family per name; a family whose type
    disagrees with the first of its name (a PrometheusSink metric named as one
    of Headwater's) is left out, with a warning, rather than failing the scrape.
    """
    merged: dict[str, Metric] = {}
    for family in families:
        first = merged.get(family.name)
        if first is None:
            merged[family.name] = family
        elif first.type != family.type:
            _conflicts.warning(
                family.name,
                "metric %s is published as a %s and as a %s: the %s is left out of /metrics",
                family.name,
                first.type,
                family.type,
                family.type,
            )
        else:
            first.samples.extend(family.samples)
    return list(merged.values())


async def collect(components: Iterable[Any]) -> list[Metric]:
    """The families of ``components`` (the running ones) and of their streams."""
    families: list[Metric] = []
    streams: dict[str, StreamInfo] = {}
    for component in components:
        if isinstance(component, HasMetrics):
            families.extend(component.metric_families())
        if isinstance(component, HasFanout):
            fanout = component.fanout
            try:
                streams[fanout.stream] = await fanout.log.info(fanout.stream)
            except LogError:
                continue  # an unavailable log shows up as missing series, not a failed scrape
    return merge([*families, *stream_families(streams)])
