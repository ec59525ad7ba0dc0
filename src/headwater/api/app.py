"""The HTTP surface of ``headwater up``, composed: admin API, dashboard, metrics, ingress helpers.

How this works: :func:`create_app` makes one aiohttp application and adds
each module's routes to it: resources (:mod:`headwater.api.resources`),
events (tail, replays), dead letters (and re-drives), topology, telemetry
(what devices send, for the dashboard), the device registry, ``/metrics``,
the OpenAPI document, the mesh's nodes and this node's health
(:mod:`headwater.api.nodes`) and the dashboard. Its middlewares ask
``/api/`` requests for the bearer token when one is configured
(:func:`headwater.api.http.require_token`) and turn the errors every handler
may raise into JSON answers (:func:`headwater.api.http.errors`; the device
registry's own errors, :func:`headwater.api.devices.errors`). The Broker
and Channel ingresses join the same application with :func:`add_ingress`
(``headwater up`` does); they check a Broker's own token themselves
(:class:`headwater.eventing.Ingress`). The domain work behind the routes
(replays, re-drives, dead letters) is the runtime's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

import headwater.api.dashboard as dashboard
import headwater.api.deadletters as deadletters
import headwater.api.devices as devices
import headwater.api.edges as edges
import headwater.api.events as events
import headwater.api.metrics as metrics
import headwater.api.nodes as nodes
import headwater.api.openapi as openapi
import headwater.api.resources as resources
import headwater.api.telemetry as telemetry
import headwater.api.topology as topology
from headwater.api.http import MESH_KEY, RUNTIME_KEY, errors, require_token
from headwater.eventing import Ingress
from headwater.runtime import Runtime
from headwater.runtime.context import CHANNEL_PREFIX

if TYPE_CHECKING:
    from headwater.cluster.mesh import Mesh

__all__ = ["add_ingress", "create_app"]


def create_app(
    runtime: Runtime, *, token: str | None = None, mesh: Mesh | None = None
) -> web.Application:
    """The admin API and dashboard of ``runtime``; ``token``: the bearer token required;
    ``mesh``: the mesh this node is part of (``headwater up --nats``)."""
    app = web.Application(
        middlewares=[require_token(token), errors, devices.errors, dashboard.static_headers],
        client_max_size=resources.MAX_APPLY_BYTES,
    )
    app[RUNTIME_KEY] = runtime
    app[MESH_KEY] = mesh
    resources.add_routes(app)
    events.add_routes(app, runtime)
    metrics.add_routes(app)
    openapi.add_routes(app)
    topology.add_routes(app)
    deadletters.add_routes(app, runtime)
    telemetry.add_routes(app, runtime)
    devices.add_routes(app)
    edges.add_routes(app)
    nodes.add_routes(app)
    dashboard.add_routes(app)
    return app


def add_ingress(app: web.Application, runtime: Runtime) -> None:
    """The data plane on ``app``: Brokers at ``/{namespace}/{name}`` (each with its
    token, if it has one), Channels at ``/channels/{namespace}/{name}``."""
    Ingress(runtime.ingress_lookup, token=runtime.ingress_token).add_routes(app)
    Ingress(runtime.channel_lookup, what="channel").add_routes(app, CHANNEL_PREFIX)
