"""The admin API's HTTP helpers: JSON answers, errors, bounded bodies, the token.

How this works: every handler answers JSON (:func:`json_response`), errors
included, as ``{"error": ..., "problems": [...]}`` (:func:`error`) with the
status that fits. Bodies are read with :func:`read_json` (or
:func:`headwater.http_guard.read_body`), which counts the bytes read against
the endpoint's limit however the body is framed; the :func:`errors`
middleware answers what those raise (413 over the limit, 400 a peer gone
mid-body) and :class:`NotFound` (404), so handlers need not. The
:func:`require_token` middleware asks every ``/api/`` route but the OpenAPI
document and the health (:data:`PUBLIC_PATHS`) for the bearer token, when
one is configured, compared in constant time. Handlers find the runtime
under :data:`RUNTIME_KEY` and, on a node of a mesh, the mesh under
:data:`MESH_KEY` (None on a single node).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from headwater.http_guard import (
    BEARER_CHALLENGE,
    BodyTooLarge,
    PeerAborted,
    bearer_matches,
    read_body,
)
from headwater.runtime import Runtime

if TYPE_CHECKING:
    from headwater.cluster.mesh import Mesh

__all__ = [
    "MESH_KEY",
    "RUNTIME_KEY",
    "Handler",
    "NotFound",
    "error",
    "errors",
    "json_response",
    "read_json",
    "require_token",
    "unauthorized",
]

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
MESH_KEY: web.AppKey[Mesh | None] = web.AppKey("mesh")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/api/v1/openapi.json", "/api/v1/health"})
"""API paths served without the token: what the API is, and the health that probes
(Kubernetes') read; neither says anything of what it holds."""


class NotFound(LookupError):
    """What a request names does not exist: answered 404 with the message."""


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


def unauthorized(message: str) -> web.Response:
    response = error(401, message)
    response.headers["WWW-Authenticate"] = BEARER_CHALLENGE
    return response


async def read_json(request: web.Request, limit: int) -> Any:
    """The body parsed as JSON (ValueError if it is not), read up to ``limit`` bytes.

    Over the limit, BodyTooLarge; a peer gone mid-body, PeerAborted: both
    answered by the :func:`errors` middleware (413, 400).
    """
    return orjson.loads(await read_body(request, limit))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFound as exc:
        return error(404, str(exc.args[0] if exc.args else exc))
    except BodyTooLarge as exc:
        return error(413, f"request body over {exc.limit} bytes")
    except PeerAborted as exc:
        return error(400, str(exc))  # to no one, most likely: the peer has gone


def require_token(token: str | None) -> Middleware:
    """A middleware asking ``/api/`` requests for ``token`` (none asked when None)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if (
            token
            and path.startswith("/api/")
            and path not in PUBLIC_PATHS
            and not bearer_matches(request, token)
        ):
            return unauthorized("missing or wrong bearer token")
        return await handler(request)

    return check
