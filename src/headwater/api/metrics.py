"""Prometheus metrics of Headwater itself at ``/metrics``.

How this works: the running components publish their own families at scrape
time (:mod:`headwater.runtime.metrics`: the data plane's counters, each
stream's size, a PrometheusSink's series, the embedded MQTT broker's refusals);
this module adds the HTTP listener's own (:func:`headwater.http_guard.metric_families`)
and, on a node of a mesh, ``headwater_node_info`` (each node's counters are its
own: a component that runs on one node at a time under a lease is counted on
the node that runs it; ``describe`` sums the nodes), and renders the text
exposition format with prometheus_client. Nothing on the event path touches
Prometheus objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from headwater import http_guard
from headwater.api.http import MESH_KEY, RUNTIME_KEY
from headwater.runtime import Runtime
from headwater.runtime.metrics import collect

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


async def render(runtime: Runtime, extra: Iterable[Metric] = ()) -> bytes:
    """The exposition of ``runtime``'s components, streams, and ``extra``."""
    families = [*await collect(runtime.components()), *extra]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))
    return generate_latest(registry)


async def metrics(request: web.Request) -> web.Response:
    # The HTTP listener's own: peers' errors, connections open and closed.
    http = list(http_guard.metric_families(request.app.get(http_guard.GUARDS_KEY)))
    mesh = request.app[MESH_KEY]
    if mesh is not None:
        node = GaugeMetricFamily(
            "headwater_node_info",
            "This node of the mesh (its counters are its own; describe sums them).",
            labels=["node"],
        )
        node.add_metric([mesh.node], 1)
        http.append(node)
    body = await render(request.app[RUNTIME_KEY], http)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics", metrics)
