"""What the sink kinds become when they run: InfluxDBSink, PrometheusSink, HttpSink.

How this works: like :mod:`headwater.runtime.components`, each component has
``start``/``stop``/``update``/``status`` and an addressable ``sink`` that a
Destination's ``ref`` resolves to. A changed spec recreates the component
(``update`` returns ``False``): an InfluxDBSink writes its buffer on ``stop``
first, a PrometheusSink starts from empty series. Secrets named by the spec
(``tokenEnv``, ``passwordEnv``) are read from the environment when the
component is built and appear in no status. A PrometheusSink without a
``port`` publishes its metrics on Headwater's ``/metrics`` through
``metric_families()``; with one, it serves ``/metrics`` there itself.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headwater.durations import parse_duration
from headwater.eventing import AiohttpTransport, Sink, new_session
from headwater.eventing import HttpSink as HttpDestination
from headwater.resources import Resource
from headwater.resources.sinks import (
    HttpSink,
    InfluxDBSink,
    PrometheusSink,
    TlsOptions,
    secret_from_env,
)
from headwater.runtime.context import Context, Kind, Stage
from headwater.sinks import influxdb, prometheus

__all__ = [
    "KINDS",
    "HttpSinkComponent",
    "InfluxDBSinkComponent",
    "PrometheusSinkComponent",
    "ssl_context",
]

EXPOSITION_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class InfluxDBSinkComponent:
    def __init__(self, context: Context, resource: InfluxDBSink) -> None:
        spec = resource.spec
        self.key = resource.key
        self.writer = influxdb.InfluxDBSink(
            spec.target(),
            spec.mapping.compile(),
            session=context.http.session,
            batch_size=spec.batch_size,
            flush_interval=parse_duration(spec.flush_interval),
            max_buffered=spec.max_buffered_points,
            max_concurrent_writes=spec.max_concurrent_writes,
            write_timeout=parse_duration(spec.write_timeout),
        )
        self.sink: Sink = self.writer

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return self.writer.status()

    def metric_families(self) -> list[Metric]:
        labels = ["namespace", "name"]
        values = [self.key[1], self.key[2]]
        written = CounterMetricFamily(
            "headwater_influxdb_points_written", "Points InfluxDB accepted.", labels=labels
        )
        written.add_metric(values, self.writer.points_written)
        failed = CounterMetricFamily(
            "headwater_influxdb_points_failed",
            "Points not written (their deliveries failed; retried or dead-lettered).",
            labels=labels,
        )
        failed.add_metric(values, self.writer.points_failed)
        writes = CounterMetricFamily(
            "headwater_influxdb_writes", "Write requests sent to InfluxDB.", labels=labels
        )
        writes.add_metric(values, self.writer.writes)
        buffered = GaugeMetricFamily(
            "headwater_influxdb_buffered_points", "Points waiting for a write.", labels=labels
        )
        buffered.add_metric(values, self.writer.buffered)
        return [written, failed, writes, buffered]


class PrometheusSinkComponent:
    def __init__(self, context: Context, resource: PrometheusSink) -> None:
        spec = resource.spec
        self.metrics = prometheus.PrometheusSink(
            [metric.to_spec() for metric in spec.metrics],
            staleness=parse_duration(spec.staleness),
            max_series=spec.max_series,
        )
        self.sink: Sink = self.metrics
        self.port = spec.port
        self.host = spec.host
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.port is None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}/metrics"

    async def _serve(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": EXPOSITION_CONTENT_TYPE}
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {
            "received": self.metrics.received,
            "unused": self.metrics.unused,
            "series": self.metrics.series_count(),
            "metricsUrl": self.url,
        }

    def metric_families(self) -> list[Metric]:
        # Served on its own port: not repeated on Headwater's /metrics.
        return [] if self.port is not None else self.metrics.metric_families()


def ssl_context(tls: TlsOptions) -> ssl.SSLContext:
    """A client context: the given CAs (or the system's), a client certificate, or no checks."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpSinkComponent:
    def __init__(self, context: Context, resource: HttpSink) -> None:
        spec = resource.spec
        headers = dict(spec.headers)
        if spec.token_env is not None:
            headers["Authorization"] = f"Bearer {secret_from_env(spec.token_env)}"
        if spec.tls is None:
            transport = AiohttpTransport(context.http.session)
        else:
            # TLS settings belong to the connection pool: this sink gets its own.
            transport = AiohttpTransport(new_session(ssl_context=ssl_context(spec.tls)), owned=True)
        self._transport = transport
        self.uri = spec.uri
        self.destination = HttpDestination(
            spec.uri, transport=transport, format=spec.format, headers=headers
        )
        self.sink: Sink = self.destination

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._transport.close()  # its own pool (TLS) only

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        # Headers are not shown: a user may have put something private there.
        return {"uri": self.uri}


KINDS: dict[str, Kind] = {
    "InfluxDBSink": Kind(InfluxDBSinkComponent, Stage.SINK),
    "PrometheusSink": Kind(PrometheusSinkComponent, Stage.SINK),
    "HttpSink": Kind(HttpSinkComponent, Stage.SINK),
}
"""What each sink kind becomes (``build(context, resource) -> Component``) and when it starts."""
