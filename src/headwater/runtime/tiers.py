"""What the tier kinds become when they run: Uplink, Downlink (edge) and Edge (cloud).

How this works: as in :mod:`headwater.runtime.components`, each kind is a
component with ``start``/``stop``/``update``/``status``; a changed spec
recreates it (an Uplink's and an Edge's cursors are named after the resource,
so they are kept). An Uplink and a Downlink run supervised: a loop that fails
(a bug, never a link) is logged and restarted with backoff. Each owns its
HTTP client, since TLS settings and client certificates belong to the
connection pool. An Uplink's refused events become dead letters with the
Uplink as their origin, and go to its ``deadLetterSink`` too when it has one.
An Edge is addressable: a Trigger's ``ref`` to it delivers into its durable
queue, and its edge pulls that queue through :mod:`headwater.api.edges`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headwater.cloudevents import CloudEvent
from headwater.durations import parse_duration
from headwater.eventing import DeliveryError, Sink, compile_trigger_filter
from headwater.eventing._http1 import Http1Client
from headwater.eventing.delivery import dead_letter_event
from headwater.eventing.filters import MATCH_ALL
from headwater.log import EventTooLarge, StreamConfig
from headwater.resources import Resource
from headwater.resources.sinks import secret_from_env
from headwater.resources.tiers import Downlink, Edge, Uplink
from headwater.runtime.context import Context, Kind, Stage
from headwater.runtime.replay import start_position
from headwater.runtime.sinks import ssl_context
from headwater.tiers._policy import DEAD_PEER_TIMEOUT
from headwater.tiers._remote import Remote
from headwater.tiers.downlink import Downlink as DownlinkRunner
from headwater.tiers.edgequeue import EdgeQueue
from headwater.tiers.uplink import DEFAULT_BINARY_LANES
from headwater.tiers.uplink import Uplink as UplinkRunner

__all__ = ["KINDS", "DownlinkComponent", "EdgeComponent", "UplinkComponent"]

log = logging.getLogger(__name__)

STOP_GRACE: Final = 2.0
"""Seconds an Uplink's requests under way get to be answered when it stops
(an answered batch is not sent again after the restart)."""

READY_TIMEOUT: Final = 5.0
"""How long starting an Uplink waits for its cursor to open."""

RESTART_DELAY: Final = (0.1, 5.0)
"""Backoff bounds (seconds) for restarting a loop that failed."""

REFRESH_INTERVAL: Final = 1.0
"""Seconds between refreshes of an Edge queue's backlog."""


async def _supervise(
    name: str, run: Callable[[], Awaitable[None]], on_error: Callable[[str], None]
) -> None:
    delay = RESTART_DELAY[0]
    while True:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            on_error(f"failed: {exc}")
            log.exception("%s failed; restarting in %.1fs", name, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY[1])


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _headers(given: dict[str, str], token_env: str | None) -> dict[str, str]:
    headers = dict(given)
    token = secret_from_env(token_env)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _labelled(key: tuple[str, str, str], rows: list[tuple[str, str, str, float]]) -> list[Metric]:
    """Metric families of one component: (kind, name, help, value) rows, labelled with it."""
    labels = ["namespace", "name"]
    values = [key[1], key[2]]
    families: list[Metric] = []
    for kind, name, doc, value in rows:
        family: Metric
        if kind == "counter":
            family = CounterMetricFamily(name, doc, labels=labels)
        else:
            family = GaugeMetricFamily(name, doc, labels=labels)
        family.add_metric(values, value)
        families.append(family)
    return families


class UplinkComponent:
    def __init__(self, context: Context, resource: Uplink) -> None:
        spec = resource.spec
        self.context = context
        self.resource = resource
        self.key = resource.key
        delivery = spec.delivery
        assert spec.sink.uri is not None  # the model requires a uri
        self.client = Http1Client(
            limit=(spec.lanes or DEFAULT_BINARY_LANES) + 1,
            ssl_context=ssl_context(spec.tls) if spec.tls is not None else None,
            dead_peer_timeout=DEAD_PEER_TIMEOUT,
        )
        self.remote = Remote(
            spec.sink.uri,
            self.client,
            format=spec.format,
            compression=spec.compression,
            headers=_headers(spec.headers, spec.token_env),
            timeout=parse_duration(delivery.timeout),
        )
        self.filter = (
            compile_trigger_filter(None, [{"cesql": spec.filter}]) if spec.filter else MATCH_ALL
        )
        self.dead_letter: tuple[Sink, str] | None = None
        if delivery.dead_letter_sink is not None:
            self.dead_letter = context.destinations.resolve(
                delivery.dead_letter_sink, resource.namespace
            )
        self.uplink: UplinkRunner | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        spec = self.resource.spec
        broker = self.context.destinations.broker(self.resource.namespace, spec.broker)
        self.uplink = UplinkRunner(
            log=self.context.log,
            stream=broker.stream,
            consumer=f"uplink/{self.resource.namespace}/{self.resource.name}",
            remote=self.remote,
            on_refused=self._refused,
            event_filter=self.filter,
            start=start_position(spec.start),
            ordering=spec.ordering,
            lanes=spec.lanes,
            max_batch_events=spec.max_batch_events,
            max_batch_bytes=spec.max_batch_bytes,
            linger=parse_duration(spec.linger),
            max_bytes_per_second=spec.max_bytes_per_second,
            backoff=(
                parse_duration(spec.delivery.backoff_delay),
                parse_duration(spec.delivery.backoff_max),
            ),
            name=f"Uplink {self.resource.namespace}/{self.resource.name}",
        )
        uplink = self.uplink
        # Owned and cancelled in stop(): the uplink lives as long as the resource.
        self._task = asyncio.create_task(
            _supervise(uplink.name, uplink.run, self._loop_failed), name=uplink.name
        )
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await uplink.wait_ready()
        except TimeoutError:
            log.warning(
                "%s: cursor not open after %gs; starting anyway", uplink.name, READY_TIMEOUT
            )

    def _loop_failed(self, error: str) -> None:
        if self.uplink is not None:
            self.uplink.stats.last_error = error

    async def _refused(self, event: CloudEvent, error: DeliveryError) -> None:
        """Keep an event the receiver refused for good: a dead letter, and the DLS if any."""
        await self.context.dead_letters.record(self.key, self.remote.url, event, error)
        if self.dead_letter is None:
            return
        sink, uri = self.dead_letter
        try:
            await sink.deliver(dead_letter_event(event, self.remote.url, error))
        except DeliveryError as exc:
            # Kept in the dead letters already; the sink is a copy.
            log.warning(
                "Uplink %s/%s: dead letter sink %s did not take id=%s: %s",
                self.key[1],
                self.key[2],
                uri,
                event.id,
                exc,
            )

    async def stop(self) -> None:
        if self.uplink is not None and self._task is not None:
            await self.uplink.drain(STOP_GRACE)
        await _cancel(self._task)
        self._task = None
        await self.client.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return self.uplink.status() if self.uplink is not None else {}

    def metric_families(self) -> list[Metric]:
        if self.uplink is None:
            return []
        s = self.uplink.stats
        age = s.oldest_unsent_age
        return _labelled(
            self.key,
            [
                ("counter", "headwater_uplink_sent_events", "Events the remote accepted.", s.sent),
                (
                    "counter",
                    "headwater_uplink_requests",
                    "Requests made (every attempt).",
                    s.requests,
                ),
                (
                    "counter",
                    "headwater_uplink_failed_attempts",
                    "Requests that failed.",
                    s.failed_attempts,
                ),
                (
                    "counter",
                    "headwater_uplink_dead_lettered",
                    "Events the remote refused for good.",
                    s.dead_lettered,
                ),
                (
                    "counter",
                    "headwater_uplink_dropped_unsent",
                    "Events retention removed before they were sent.",
                    s.dropped_unsent,
                ),
                (
                    "counter",
                    "headwater_uplink_wire_bytes",
                    "Request body bytes sent (after gzip).",
                    s.wire_bytes,
                ),
                (
                    "counter",
                    "headwater_uplink_raw_bytes",
                    "Request body bytes before gzip.",
                    s.raw_bytes,
                ),
                (
                    "gauge",
                    "headwater_uplink_backlog_events",
                    "Events not yet accepted by the remote.",
                    s.backlog_events,
                ),
                (
                    "gauge",
                    "headwater_uplink_backlog_bytes",
                    "Estimated bytes of the backlog.",
                    s.backlog_bytes,
                ),
                (
                    "gauge",
                    "headwater_uplink_oldest_unsent_age_seconds",
                    "Age of the oldest event not yet accepted (0: none).",
                    age or 0.0,
                ),
                (
                    "gauge",
                    "headwater_uplink_send_rate",
                    "Events accepted per second (10 s average).",
                    s.send_rate,
                ),
                (
                    "gauge",
                    "headwater_uplink_link_up",
                    "1 while the remote answers, 0 while it cannot be reached.",
                    1.0 if s.link == "up" else 0.0,
                ),
            ],
        )


class EdgeComponent:
    def __init__(self, context: Context, resource: Edge) -> None:
        spec = resource.spec
        self.context = context
        self.key = resource.key
        token = secret_from_env(spec.token_env)
        assert token is not None  # tokenEnv is required
        self.token = token
        self.queue = EdgeQueue(
            context.log,
            f"edge/{resource.namespace}/{resource.name}",
            StreamConfig(**spec.retention.limits()),
        )
        self.sink: Sink = self.queue
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.queue.start()
        # Owned and cancelled in stop(): refreshes the backlog shown in status.
        self._task = asyncio.create_task(self._refresh(), name=f"edge:{self.key[1]}/{self.key[2]}")

    async def _refresh(self) -> None:
        while True:
            await self.queue.refresh()
            await asyncio.sleep(REFRESH_INTERVAL)

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None
        await self.queue.stop()

    async def update(self, resource: Resource) -> bool:
        return False

    def address(self) -> str | None:
        base = self.context.registry.listeners.get("http")
        return f"{base}/edges/{self.key[1]}/{self.key[2]}" if base else None

    def status(self) -> dict[str, Any]:
        return {"address": self.address(), **self.queue.status()}

    def metric_families(self) -> list[Metric]:
        s = self.queue.stats
        status = self.queue.status()
        return _labelled(
            self.key,
            [
                ("counter", "headwater_edge_queued", "Commands queued for the edge.", s.queued),
                (
                    "counter",
                    "headwater_edge_delivered",
                    "Commands the edge acknowledged.",
                    s.delivered,
                ),
                (
                    "counter",
                    "headwater_edge_expired",
                    "Commands dropped because they expired.",
                    s.expired,
                ),
                (
                    "gauge",
                    "headwater_edge_backlog",
                    "Commands the edge has not acknowledged.",
                    status["backlog"] or 0,
                ),
                (
                    "gauge",
                    "headwater_edge_connected",
                    "1 while the edge is pulling.",
                    1.0 if status["connected"] else 0.0,
                ),
            ],
        )


class DownlinkComponent:
    def __init__(self, context: Context, resource: Downlink) -> None:
        spec = resource.spec
        self.context = context
        self.resource = resource
        self.key = resource.key
        self.client = Http1Client(
            limit=2,
            ssl_context=ssl_context(spec.tls) if spec.tls is not None else None,
            dead_peer_timeout=DEAD_PEER_TIMEOUT,
        )
        self.downlink = DownlinkRunner(
            spec.url,
            self.client,
            self._store,
            headers=_headers({}, spec.token_env),
            max_events=spec.max_events,
            wait=parse_duration(spec.wait),
            backoff=(parse_duration(spec.backoff_delay), parse_duration(spec.backoff_max)),
            name=f"Downlink {resource.namespace}/{resource.name}",
        )
        self._task: asyncio.Task[None] | None = None

    async def _store(self, events: list[CloudEvent]) -> None:
        """Append the commands to the sink durably (a Broker in one append)."""
        sink = self.resource.spec.sink
        ref = sink.ref
        if ref is not None and ref.kind == "Broker":
            broker = self.context.destinations.broker(
                ref.namespace or self.resource.namespace, ref.name
            )
            try:
                await broker.accept(events)
            except EventTooLarge as exc:
                # Never storable here: keep it as a dead letter, store the others.
                bad = events[exc.index]
                await self.context.dead_letters.record(
                    self.key,
                    f"broker://{broker.namespace}/{broker.name}",
                    bad,
                    DeliveryError(413, False, reason=str(exc)),
                )
                rest = events[: exc.index] + events[exc.index + 1 :]
                if rest:
                    await self._store(rest)
            return
        target, _ = self.context.destinations.resolve(sink, self.resource.namespace)
        for event in events:
            await target.deliver(event)

    async def start(self) -> None:
        name = self.downlink.name
        # Owned and cancelled in stop(): the downlink lives as long as the resource.
        self._task = asyncio.create_task(
            _supervise(name, self.downlink.run, self._loop_failed), name=name
        )

    def _loop_failed(self, error: str) -> None:
        self.downlink.stats.last_error = error

    async def stop(self) -> None:
        await _cancel(self._task)
        self._task = None
        await self.client.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return self.downlink.status()

    def metric_families(self) -> list[Metric]:
        s = self.downlink.stats
        return _labelled(
            self.key,
            [
                ("counter", "headwater_downlink_stored", "Commands stored locally.", s.stored),
                (
                    "counter",
                    "headwater_downlink_expired",
                    "Commands dropped because they expired.",
                    s.expired,
                ),
                (
                    "counter",
                    "headwater_downlink_failed_attempts",
                    "Pulls or stores that failed.",
                    s.failed_attempts,
                ),
                (
                    "gauge",
                    "headwater_downlink_connected",
                    "1 while the cloud answers.",
                    1.0 if s.connected else 0.0,
                ),
            ],
        )


KINDS: dict[str, Kind] = {
    # An Edge receives (a Trigger's ref delivers into its queue); an Uplink
    # and a Downlink send, into the other tier or into a local sink.
    "Edge": Kind(EdgeComponent, Stage.SINK),
    "Uplink": Kind(UplinkComponent, Stage.SOURCE),
    "Downlink": Kind(DownlinkComponent, Stage.SOURCE),
}
"""What each tier kind becomes (``build(context, resource) -> Component``) and when it starts."""
