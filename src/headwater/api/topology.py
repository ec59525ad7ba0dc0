"""The mesh as a graph for the dashboard: ``GET /api/v1/topology``.

How this works: every resource is a node with its role (a *source* sends to a
sink, a *channel* is a Broker or Channel, a *route* is a Trigger or
Subscription, a *sink* receives), its Ready condition, its numeric status
counters, its last error (with when and which attempt: a subscriber that
fails shows it at its first failed attempt) and a health verdict (a route is
*failing* for a minute after an attempt failed or it gave an event up,
*lagging* when far behind its stream); plain ``uri``
destinations are nodes of their own. Edges come from the specs: a Trigger's
or an Uplink's ``broker``, a Subscription's ``channel``, and every Destination under
``sink``, ``subscriber``, ``reply`` or ``deadLetterSink``. Counters are
totals; the dashboard turns two snapshots into rates (``time`` is the moment
of this one), so the server keeps no per-client state.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Final

from aiohttp import web

from headwater.api.http import RUNTIME_KEY, json_response
from headwater.resources import Resource
from headwater.runtime import Runtime

LAGGING: Final = 1000
"""Unacknowledged events from which a Trigger/Subscription counts as lagging:
a healthy dispatcher keeps at most its in-flight window (100) behind."""

FAILING_FOR: Final = 60.0
"""Seconds a Trigger/Subscription counts as failing after an attempt last failed
or it last gave an event up: long enough to be seen on a dashboard that
refreshes every few seconds, short enough to clear once the subscriber works."""

FANOUT_KINDS: Final = frozenset({"Broker", "Channel", "InMemoryChannel"})
ROUTE_KINDS: Final = frozenset({"Trigger", "Subscription"})
DESTINATION_FIELDS: Final = ("sink", "subscriber", "reply", "deadLetterSink")
NOT_COUNTERS: Final = frozenset({"lastErrorAttempt"})
"""Numbers in a status that are not counters (rates of them would mean nothing)."""


def node_id(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def _destinations(spec: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """``(field, destination)`` for each Destination anywhere in a spec's JSON form."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if (
                key in DESTINATION_FIELDS
                and isinstance(value, dict)
                and ("ref" in value or "uri" in value)
            ):
                yield key, value
            else:
                yield from _destinations(value, key)
    elif isinstance(spec, list):
        for item in spec:
            yield from _destinations(item, path)


def _target(destination: dict[str, Any], namespace: str) -> tuple[str, dict[str, Any] | None]:
    """The node a Destination points at, and a node to add for a bare ``uri``."""
    ref = destination.get("ref")
    if isinstance(ref, dict):
        ns = ref.get("namespace") or namespace
        return node_id(str(ref.get("kind")), str(ns), str(ref.get("name"))), None
    uri = str(destination.get("uri"))
    return f"uri:{uri}", {
        "id": f"uri:{uri}",
        "kind": "URI",
        "namespace": None,
        "name": uri,
        "role": "sink",
        "ready": "Unknown",
        "health": "ok",
        "counters": {},
        "lastError": None,
        "lastErrorTime": None,
        "lastErrorAttempt": None,
    }


def _counters(status: dict[str, Any]) -> dict[str, float]:
    return {
        key: value
        for key, value in status.items()
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and key not in NOT_COUNTERS
    }


def _seconds(text: Any) -> float | None:
    """An RFC 3339 time of a status as seconds since the epoch (None if not one)."""
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


def _health(
    kind: str, ready: dict[str, Any], status: dict[str, Any], given_up: float | None, now: float
) -> str:
    if ready.get("status") != "True":
        return "not-ready"
    if kind not in ROUTE_KINDS:
        return "ok"
    failed = max(given_up or 0.0, _seconds(status.get("lastErrorTime")) or 0.0)
    if failed and now - failed < FAILING_FOR:
        return "failing"
    if int(status.get("lag") or 0) >= LAGGING:
        return "lagging"
    return "ok"


def _role(resource: Resource, spec: dict[str, Any]) -> str:
    if resource.kind in FANOUT_KINDS:
        return "channel"
    if resource.kind in ROUTE_KINDS:
        return "route"
    return "source" if any(f == "sink" for f, _ in _destinations(spec)) else "sink"


def topology(runtime: Runtime) -> dict[str, Any]:
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []
    now = time.time()
    given_up = runtime.dead_letters.given_up
    for resource in runtime.resources():
        ns, kind = resource.namespace, resource.kind
        spec = resource.model_dump(by_alias=True, exclude_none=True, mode="json").get("spec", {})
        status = runtime.status(resource.key)
        ready = (status.get("conditions") or [{}])[0]
        me = node_id(kind, ns, resource.name)
        nodes[me] = {
            "id": me,
            "kind": kind,
            "namespace": ns,
            "name": resource.name,
            "role": _role(resource, spec),
            "ready": ready.get("status", "Unknown"),
            "reason": ready.get("message") or ready.get("reason") or None,
            "health": _health(kind, ready, status, given_up.get(resource.key), now),
            "counters": _counters(status),
            "lastError": status.get("lastError"),
            "lastErrorTime": status.get("lastErrorTime"),
            "lastErrorAttempt": status.get("lastErrorAttempt"),
        }
        if kind in ("Trigger", "Uplink"):
            edges.append({"from": node_id("Broker", ns, spec["broker"]), "to": me, "via": "broker"})
        elif kind == "Subscription":
            channel = spec["channel"]
            edges.append(
                {"from": node_id(channel["kind"], ns, channel["name"]), "to": me, "via": "channel"}
            )
        for field, destination in _destinations(spec):
            target, extra = _target(destination, ns)
            if extra is not None:
                nodes.setdefault(target, extra)
            edges.append({"from": me, "to": target, "via": field})
    return {"time": time.time(), "nodes": list(nodes.values()), "edges": edges}


async def get_topology(request: web.Request) -> web.Response:
    return json_response(topology(request.app[RUNTIME_KEY]))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/topology", get_topology)
