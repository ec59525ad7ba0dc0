"""The nodes of the mesh, a resource's status over all of them, and this node's health.

How this works: ``GET /api/v1/health`` (open without the token, for probes)
answers 200 while the node serves, and 503 with the reasons while it cannot
take events: in a mesh, while its connection to NATS is down (it refuses
what it cannot store, so a load balancer should send devices elsewhere).
``GET /api/v1/nodes`` lists the live nodes of the mesh from
its registry (each node's heartbeat: addresses, version, uptime, connected
devices, load); a single node (no ``--nats``) lists itself. In a mesh,
:func:`mesh_status` turns a resource's status on this node into its status
over the mesh: every live node's status (``status.nodes``), their counters
summed at the top level (:func:`~headwater.cluster.status.merge_statuses`),
and the nodes that did not answer in time (``status.unansweredNodes``).
"""

from __future__ import annotations

import socket
import time
from typing import Any

from aiohttp import web

from headwater import __version__
from headwater.api.http import MESH_KEY, RUNTIME_KEY, error, json_response
from headwater.cluster.mesh import Mesh
from headwater.cluster.nodes import MESH_PROTOCOL
from headwater.cluster.status import merge_statuses
from headwater.runtime import Runtime
from headwater.runtime.reconciler import Key
from headwater.state import StateError


def _single_node(runtime: Runtime) -> dict[str, Any]:
    """What a node without a mesh says about itself, in a registry entry's shape."""
    now = time.time()
    return {
        "name": socket.gethostname().split(".")[0],
        "version": __version__,
        "protocol": MESH_PROTOCOL,
        "started": runtime.started,
        "heartbeat": now,
        "addresses": dict(runtime.listeners),
        "devices": runtime.registry.connected_devices(),
        "uptimeSeconds": round(now - runtime.started, 3),
        "heartbeatAgeSeconds": 0.0,
    }


async def list_nodes(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    mesh = request.app[MESH_KEY]
    if mesh is None:
        return json_response({"mesh": False, "self": None, "items": [_single_node(runtime)]})
    try:
        nodes = await mesh.nodes()
    except StateError as exc:
        return error(503, f"the node registry cannot be read: {exc}")
    now = time.time()
    return json_response(
        {"mesh": True, "self": mesh.node, "items": [n.as_json(now) for n in nodes]}
    )


async def mesh_status(mesh: Mesh, key: Key, local: dict[str, Any]) -> dict[str, Any]:
    """``local`` (this node's status of ``key``) as the mesh's: see the module docstring."""
    statuses, missing = await mesh.statuses(key)
    statuses[mesh.node] = local
    merged = merge_statuses(statuses)
    merged["conditions"] = local.get("conditions", [])
    for field in ("origin", "address"):
        if field in local:
            merged[field] = local[field]
    merged["nodes"] = {
        name: {k: v for k, v in status.items() if k not in ("conditions", "dispatchers")}
        for name, status in sorted(statuses.items())
    }
    if missing:
        merged["unansweredNodes"] = missing
    return merged


async def health(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    problems: list[str] = []
    mesh = request.app[MESH_KEY]
    if mesh is not None:
        if mesh.nc is None or not mesh.nc.is_connected:
            problems.append("not connected to NATS (the mesh's state)")
        log_ = mesh.log
        if log_ is not None and not log_.connected:
            problems.append("not connected to NATS (the event log)")
    body = {"status": "unavailable" if problems else "ok", "problems": problems}
    if runtime.node is not None:
        body["node"] = runtime.node
    return json_response(body, 503 if problems else 200)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/nodes", list_nodes)
    app.router.add_get("/api/v1/health", health)
