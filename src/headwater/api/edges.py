"""The edges' end of the downlink: ``POST /edges/{namespace}/{name}``, one long poll per call.

How this works: an edge's :class:`~headwater.tiers.Downlink` calls this over
its own outbound connection (see :mod:`headwater.tiers.edgequeue` for the
protocol). The query says ``ack`` (the offset whose commands the edge has
stored durably, absent after an edge restart), ``max`` (commands wanted) and
``wait`` (seconds the call may wait for one). The answer is ``200`` with a
CloudEvents JSON batch and ``Headwater-Last-Offset``, or ``204`` when nothing
came within the wait. Each Edge has its own bearer token (``tokenEnv``),
compared in constant time; the admin API's token does not open it, so an
edge's credential opens nothing but its own queue. Errors: ``400`` for a bad
query, ``401`` for a missing or wrong token, ``404`` for an unknown edge,
``503`` with ``Retry-After`` while the log is unavailable.

At shutdown every waiting call is answered ``204`` at once, so that a server
stopping never waits out the edges' long polls.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from headwater.api.http import RUNTIME_KEY, error
from headwater.cloudevents import to_http_batch
from headwater.log import LogClosed, LogUnavailable
from headwater.runtime.tiers import EdgeComponent
from headwater.tiers.downlink import LAST_OFFSET_HEADER
from headwater.tiers.limits import DEFAULT_PULL_EVENTS, DEFAULT_WAIT

UNAVAILABLE_RETRY_AFTER = 1
"""Seconds an edge is asked to wait while the log is unavailable."""


def _number(request: web.Request, name: str, default: float | None) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=f"query parameter {name} must be a number, not {raw!r}\n"
        ) from None
    if not value >= 0 or value == float("inf"):
        raise web.HTTPBadRequest(text=f"query parameter {name} must be a non-negative number\n")
    return value


async def pull(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME_KEY]
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    component = runtime.reconciler.component(("Edge", namespace, name))
    if not isinstance(component, EdgeComponent):
        return error(404, f"no running Edge {name!r} in namespace {namespace!r}")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), component.token.encode()
    ):
        response = error(401, f"edge {namespace}/{name} needs its bearer token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="headwater-edge"'
        return response
    ack = _number(request, "ack", None)
    if ack is not None and ack != int(ack):
        return error(400, "query parameter ack must be an integer offset")
    max_events = _number(request, "max", DEFAULT_PULL_EVENTS)
    wait = _number(request, "wait", DEFAULT_WAIT)
    assert max_events is not None and wait is not None
    try:
        answer = await component.queue.pull(
            int(ack) if ack is not None else None, max(1, int(max_events)), wait
        )
    except (LogUnavailable, LogClosed) as exc:
        response = error(503, f"the edge queue is unavailable: {exc}")
        response.headers["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    if answer.last_offset is None:
        return web.Response(status=204)
    headers, body = to_http_batch(answer.events)
    headers[LAST_OFFSET_HEADER] = str(answer.last_offset)
    response = web.Response(status=200, body=body, headers=headers)
    if len(body) > 1024:
        response.enable_compression()
    return response


async def _wake(app: web.Application) -> None:
    """At shutdown, answer every waiting pull (they would hold the server's grace period)."""
    runtime = app[RUNTIME_KEY]
    for resource in runtime.resources("Edge"):
        component = runtime.reconciler.component(resource.key)
        if isinstance(component, EdgeComponent):
            component.queue.wake()


def add_routes(app: web.Application) -> None:
    app.router.add_post("/edges/{namespace}/{name}", pull)
    app.on_shutdown.append(_wake)
