"""Prometheus metrics of Headwater itself at ``/metrics``.

How this works: nothing on the event path touches Prometheus objects. The
data plane keeps plain counters (per Broker, Trigger, Subscription, source);
at scrape time this module reads them, plus each stream's size from the log,
and renders the text exposition format with prometheus_client. A scrape costs
one pass over the running components, never a lock on the hot path. A
component with a ``metric_families()`` method (returning prometheus_client
metric families) has them included in the same exposition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import accumulate
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from headwater import http_guard
from headwater.api.app import RUNTIME_KEY
from headwater.cluster.leases import LeasedComponent
from headwater.log import LogError, StreamInfo
from headwater.runtime import Runtime
from headwater.runtime.components import (
    BrokerComponent,
    ChannelComponent,
    PingSourceComponent,
    SubscriptionComponent,
    TriggerComponent,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_MEMBER_COUNTERS = (
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


class _Snapshot(Collector):
    def __init__(
        self, runtime: Runtime, streams: dict[str, StreamInfo], extra: list[Metric]
    ) -> None:
        self.runtime = runtime
        self.streams = streams
        self.extra = extra

    def collect(self) -> Iterator[Metric]:
        accepted = CounterMetricFamily(
            "headwater_events_accepted",
            "Events durably appended to a Broker or Channel.",
            labels=["kind", "namespace", "name"],
        )
        saturated = CounterMetricFamily(
            "headwater_saturated",
            "Appends refused because the log was not keeping up (answered 503).",
            labels=["kind", "namespace", "name"],
        )
        ttl = CounterMetricFamily(
            "headwater_ttl_dropped",
            "Events dropped by the knativebrokerttl loop guard.",
            labels=["namespace", "name"],
        )
        member_labels = ["kind", "namespace", "name", "parent"]
        counters = {
            name: CounterMetricFamily(f"headwater_delivery_{name}", doc, labels=member_labels)
            for name, doc in _MEMBER_COUNTERS
        }
        lag = GaugeMetricFamily(
            "headwater_delivery_lag_events",
            "Events in the log not yet acknowledged by this Trigger/Subscription.",
            labels=member_labels,
        )
        inflight = GaugeMetricFamily(
            "headwater_delivery_in_flight", "Deliveries in progress.", labels=member_labels
        )
        latency = HistogramMetricFamily(
            "headwater_delivery_latency_seconds",
            "From the first attempt to the subscriber's acceptance.",
            labels=member_labels,
        )
        pings = CounterMetricFamily(
            "headwater_source_events_sent",
            "Events a source handed to its sink.",
            labels=["kind", "namespace", "name"],
        )
        ping_failures = CounterMetricFamily(
            "headwater_source_events_failed",
            "Events a source could not hand to its sink.",
            labels=["kind", "namespace", "name"],
        )
        extra: list[Metric] = []
        reconciler = self.runtime.reconciler
        for resource in reconciler.resources():
            component: Any = reconciler.component(resource.key)
            if isinstance(component, LeasedComponent):
                component = component.running  # counted on the node that runs it
            ns, name = resource.namespace, resource.name
            if isinstance(component, BrokerComponent | ChannelComponent):
                is_broker = isinstance(component, BrokerComponent)
                fanout = component.broker if is_broker else component.channel  # type: ignore[union-attr]
                accepted.add_metric([resource.kind, ns, name], fanout.stats.accepted)
                saturated.add_metric([resource.kind, ns, name], fanout.stats.saturated)
                if is_broker:
                    ttl.add_metric([ns, name], fanout.stats.ttl_dropped)
            elif isinstance(component, TriggerComponent | SubscriptionComponent):
                member = component.member
                if member is None:
                    continue
                parent = (
                    resource.spec.broker  # type: ignore[attr-defined]
                    if isinstance(component, TriggerComponent)
                    else resource.spec.channel.name  # type: ignore[attr-defined]
                )
                labels = [resource.kind, ns, name, parent]
                stats = member.stats
                for counter_name, _ in _MEMBER_COUNTERS:
                    counters[counter_name].add_metric(labels, getattr(stats, counter_name))
                lag.add_metric(labels, stats.lag)
                inflight.add_metric(labels, stats.in_flight)
                hist = stats.latency
                cumulative = list(accumulate(hist.counts))
                bounds = [*(str(b) for b in hist.buckets), "+Inf"]
                latency.add_metric(labels, list(zip(bounds, cumulative, strict=True)), hist.sum)
            elif isinstance(component, PingSourceComponent):
                pings.add_metric([resource.kind, ns, name], component.runner.sent)
                ping_failures.add_metric([resource.kind, ns, name], component.runner.failed)
            # Components may publish metric families of their own (a
            # PrometheusSink's device gauges, a source's counters).
            own = getattr(component, "metric_families", None)
            if own is not None:
                extra.extend(own())
        yield from (accepted, saturated, ttl, *counters.values(), lag, inflight, latency)
        yield from (pings, ping_failures)
        yield from self._streams()
        yield from extra
        yield from self.extra
        if self.runtime.node is not None:
            node = GaugeMetricFamily(
                "headwater_node_info",
                "This node of the mesh (its counters are its own; describe sums them).",
                labels=["node"],
            )
            node.add_metric([self.runtime.node], 1)
            yield node

    def _streams(self) -> Iterator[Metric]:
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
        for name, info in sorted(self.streams.items()):
            events.add_metric([name], info.events)
            size.add_metric([name], info.bytes)
            last.add_metric([name], info.last_offset)
            dropped.add_metric([name], info.dropped)
        yield from (events, size, last, dropped)


async def render(runtime: Runtime, extra: Iterable[Metric] = ()) -> bytes:
    streams: dict[str, StreamInfo] = {}
    for resource in runtime.resources():
        component: Any = runtime.reconciler.component(resource.key)
        fanout = getattr(component, "broker", None) or getattr(component, "channel", None)
        if fanout is None:
            continue
        try:
            streams[fanout.stream] = await fanout.log.info(fanout.stream)
        except LogError:
            continue  # an unavailable log shows up as missing series, not a failed scrape
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(runtime, streams, list(extra)))
    return generate_latest(registry)


async def metrics(request: web.Request) -> web.Response:
    # The HTTP listener's own: peers' errors, connections open and closed.
    http = http_guard.metric_families(request.app.get(http_guard.GUARDS_KEY))
    body = await render(request.app[RUNTIME_KEY], http)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
