"""The admin REST API under ``/api/v1/`` (aiohttp).

How this works: handlers are thin: they parse the request, call the runtime,
and answer JSON. Errors are JSON too, ``{"error": ..., "problems": [...]}``,
with the status that fits (400 bad request, 401 no or wrong token, 404
unknown resource, 409 a conflict: a resource that a file of ``headwater up``
owns, a stale ``resourceVersion``, or one that others refer to, 413 body over
its limit, 415 unsupported body, 422 invalid resources, 503 the state store
cannot be written). Bodies are read with :func:`read_json` or
:func:`headwater.http_guard.read_body`, which count the bytes they read
against the endpoint's limit, however the body is framed. A bearer token,
when configured, is required on every ``/api/`` route and compared in
constant time.

What the API applies is kept in the state store and runs again after a
restart (:mod:`headwater.runtime.applied`); each resource's ``status.origin``
says where it came from (a file, or the API), and those the API applied carry
their ``metadata.resourceVersion`` (the store's revision), which a PUT may
give back to replace the resource only if nobody changed it meanwhile.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from headwater import __version__
from headwater.eventing.ingress import is_ingress_request
from headwater.http_guard import BodyTooLarge, PeerAborted, read_body
from headwater.resources import KINDS, ConfigError, Problem, Resource
from headwater.resources.models import INGRESS_TOKEN_ANNOTATION
from headwater.runtime.applied import OwnedByFile
from headwater.runtime.reconciler import ApplyResult
from headwater.runtime.runtime import Runtime
from headwater.state import RevisionMismatch, StateError

RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
TOKEN_KEY: web.AppKey[str | None] = web.AppKey("token", str)

UNGUARDED = frozenset({"/api/v1/openapi.json", "/api/v1/health"})
"""API paths open without the token: the API's description, and the health that
probes (Kubernetes') read; neither says anything a client may not know."""

# The largest apply body accepted; resource files are small.
MAX_APPLY_BYTES = 4 * 1024 * 1024

_KIND_NAMES = {
    **{kind.lower(): kind for kind in KINDS},
    **{kind.lower() + "s": kind for kind in KINDS},
    **{kind.lower() + "es": kind for kind in KINDS},
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status)


def _bearer_ok(request: web.Request, token: str) -> bool:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def _unauthorized(message: str) -> web.Response:
    response = error(401, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="headwater"'
    return response


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith("/api/"):
        token = request.app[TOKEN_KEY]
        if token and path not in UNGUARDED and not _bearer_ok(request, token):
            return _unauthorized("missing or wrong bearer token")
    elif is_ingress_request(request):
        # The data-plane ingress `/{namespace}/{broker}`: a Broker may require
        # its own token (annotation headwater.dev/ingress-token).
        _, namespace, name = path.split("/")
        broker = request.app[RUNTIME_KEY].get(("Broker", namespace, name))
        token = broker.metadata.annotations.get(INGRESS_TOKEN_ANNOTATION) if broker else None
        if token and not _bearer_ok(request, token):
            return _unauthorized(f"broker {namespace}/{name} needs its bearer token")
    return await handler(request)


class UnknownKind(LookupError):
    pass


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except UnknownKind as exc:
        return error(404, str(exc))
    except BodyTooLarge as exc:
        return error(413, f"request body over {exc.limit} bytes")
    except PeerAborted as exc:
        return error(400, str(exc))  # to no one, most likely: the peer has gone


async def read_json(request: web.Request, limit: int) -> Any:
    """The body parsed as JSON (ValueError if it is not), read up to ``limit`` bytes.

    Over the limit, BodyTooLarge; a peer gone mid-body, PeerAborted: both
    answered by the ``_errors`` middleware (413, 400).
    """
    return orjson.loads(await read_body(request, limit))


def kind_of(name: str) -> str:
    kind = _KIND_NAMES.get(name.lower())
    if kind is None:
        raise UnknownKind(f"unknown kind {name!r}; known: {', '.join(sorted(KINDS))}")
    return kind


def resource_json(runtime: Runtime, resource: Resource) -> dict[str, Any]:
    body = resource.model_dump(by_alias=True, exclude_none=True, mode="json")
    body["status"] = runtime.status(resource.key)
    origin = runtime.origin(resource.key)
    if origin is not None:
        body["status"]["origin"] = origin.as_json()
        if origin.source == "api":
            body["metadata"]["resourceVersion"] = str(origin.revision)
    return body


async def status(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    return json_response({"version": __version__, **runtime.info()})


async def list_resources(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    kind = kind_of(request.match_info["kind"]) if "kind" in request.match_info else None
    namespace = request.query.get("namespace")
    items = [
        resource_json(runtime, r)
        for r in runtime.resources(kind)
        if namespace is None or r.namespace == namespace
    ]
    return json_response({"items": items})


async def get_resource(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    key = _key(request)
    resource = runtime.get(key)
    if resource is None:
        return error(404, f"no {key[0]} {key[2]!r} in namespace {key[1]!r}")
    body = resource_json(runtime, resource)
    if runtime.mesh is not None:
        from headwater.api.nodes import mesh_status

        body["status"] = await mesh_status(runtime, key, body["status"])
    return json_response(body)


def _problem_json(p: Problem) -> dict[str, Any]:
    return {
        "file": p.file,
        "line": p.line,
        "kind": p.kind,
        "name": p.name,
        "field": p.field,
        "message": p.message,
        "text": str(p),
    }


async def _body_text(request: web.Request) -> str | web.Response:
    """The resources in a request body, or the error answer."""
    media = request.content_type
    if media not in ("application/yaml", "application/x-yaml", "text/yaml", "application/json"):
        return error(415, "send resources as application/yaml or application/json")
    raw = await read_body(request, MAX_APPLY_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return error(400, "the body is not valid UTF-8")


async def _applying(change: Awaitable[ApplyResult]) -> web.Response:
    """Answer for an apply or a replace: the keys by outcome, or why nothing changed."""
    try:
        result = await change
    except ConfigError as exc:
        return error(422, "invalid resources", problems=[_problem_json(p) for p in exc.problems])
    except OwnedByFile as exc:
        return error(409, str(exc))
    except RevisionMismatch as exc:
        return error(
            409,
            f"{exc.key} was changed meanwhile (it is at resourceVersion {exc.actual}, not "
            f"{exc.expected}): read it again and apply your change to the latest version",
        )
    except StateError as exc:
        return error(503, f"the state store cannot keep it, nothing was changed: {exc}")
    return json_response(
        {
            "created": [_key_json(k) for k in result.created],
            "updated": [_key_json(k) for k in result.updated],
            "unchanged": [_key_json(k) for k in result.unchanged],
            "warnings": [_problem_json(p) for p in result.warnings],
        }
    )


async def apply_resources(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    text = await _body_text(request)
    if isinstance(text, web.Response):
        return text
    return await _applying(
        runtime.apply_text(text, request.headers.get("X-Headwater-File", "request"))
    )


async def replace_resource(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    key = _key(request)
    text = await _body_text(request)
    if isinstance(text, web.Response):
        return text
    file = request.headers.get("X-Headwater-File", "request")
    try:
        return await _applying(runtime.update_text(text, file, key))
    except KeyError:
        return error(
            404,
            f"no {key[0]} {key[2]!r} in namespace {key[1]!r}; create it with POST "
            "/api/v1/resources (headwater apply)",
        )


async def delete_resource(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    key = _key(request)
    try:
        await runtime.delete_applied([key])
    except KeyError:
        return error(404, f"no {key[0]} {key[2]!r} in namespace {key[1]!r}")
    except OwnedByFile as exc:
        return error(409, str(exc))
    except ConfigError as exc:
        return error(409, "other resources refer to it", problems=[str(p) for p in exc.problems])
    except StateError as exc:
        return error(503, f"the state store cannot forget it, nothing was changed: {exc}")
    return json_response({"deleted": [_key_json(key)]})


def _key(request: web.Request) -> tuple[str, str, str]:
    info = request.match_info
    return (kind_of(info["kind"]), info["namespace"], info["name"])


def _key_json(key: tuple[str, str, str]) -> dict[str, str]:
    return {"kind": key[0], "namespace": key[1], "name": key[2]}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/resources", list_resources)
    app.router.add_post("/api/v1/resources", apply_resources)
    app.router.add_get("/api/v1/resources/{kind}", list_resources)
    app.router.add_get("/api/v1/resources/{kind}/{namespace}/{name}", get_resource)
    app.router.add_put("/api/v1/resources/{kind}/{namespace}/{name}", replace_resource)
    app.router.add_delete("/api/v1/resources/{kind}/{namespace}/{name}", delete_resource)


def create_app(runtime: Runtime, *, token: str | None = None) -> web.Application:
    from headwater.api import (
        dashboard,
        deadletters,
        devices,
        edges,
        events,
        metrics,
        nodes,
        openapi,
        topology,
    )

    app = web.Application(
        middlewares=[_auth, _errors, dashboard.static_headers], client_max_size=MAX_APPLY_BYTES
    )
    app[RUNTIME_KEY] = runtime
    app[TOKEN_KEY] = token
    add_routes(app)
    events.add_routes(app)
    metrics.add_routes(app)
    openapi.add_routes(app)
    topology.add_routes(app)
    deadletters.add_routes(app)
    devices.add_routes(app, runtime)
    edges.add_routes(app)
    nodes.add_routes(app)
    dashboard.add_routes(app)
    return app
