"""Resources in the admin API: list, read, apply, replace and delete them.

How this works: handlers are thin: they parse the request, call the runtime,
and answer JSON (:mod:`headwater.api.http`), with the status that fits: 404
an unknown kind or resource, 409 a conflict (a resource that a file of
``headwater up`` owns, a stale ``resourceVersion``, or one that others refer
to), 413 a body over :data:`MAX_APPLY_BYTES`, 415 an unsupported body, 422
invalid resources with every problem's file, line and field, 503 the state
store cannot be written.

What the API applies is kept in the state store and runs again after a
restart (:mod:`headwater.runtime.applied`); each resource's ``status.origin``
says where it came from (a file, or the API), and those the API applied carry
their ``metadata.resourceVersion`` (the store's revision), which a PUT may
give back to replace the resource only if nobody changed it meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from headwater import __version__, tracing
from headwater.api.http import MESH_KEY, RUNTIME_KEY, NotFound, error, json_response
from headwater.api.nodes import mesh_status
from headwater.http_guard import read_body
from headwater.resources import KINDS, ConfigError, Problem, Resource
from headwater.runtime import Runtime
from headwater.runtime.applied import OwnedByFile
from headwater.runtime.reconciler import ApplyResult
from headwater.state import RevisionMismatch, StateError

# The largest apply body accepted; resource files are small.
MAX_APPLY_BYTES = 4 * 1024 * 1024

_KIND_NAMES = {
    **{kind.lower(): kind for kind in KINDS},
    **{kind.lower() + "s": kind for kind in KINDS},
    **{kind.lower() + "es": kind for kind in KINDS},
}


class UnknownKind(NotFound):
    """A kind name this Headwater does not know (404)."""


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
    return json_response({"version": __version__, **runtime.info(), "tracing": tracing.status()})


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
    mesh = request.app[MESH_KEY]
    if mesh is not None:
        body["status"] = await mesh_status(mesh, key, body["status"])
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
    """The resource routes and ``/api/v1/status``."""
    app.router.add_get("/api/v1/status", status)
    app.router.add_get("/api/v1/resources", list_resources)
    app.router.add_post("/api/v1/resources", apply_resources)
    app.router.add_get("/api/v1/resources/{kind}", list_resources)
    app.router.add_get("/api/v1/resources/{kind}/{namespace}/{name}", get_resource)
    app.router.add_put("/api/v1/resources/{kind}/{namespace}/{name}", replace_resource)
    app.router.add_delete("/api/v1/resources/{kind}/{namespace}/{name}", delete_resource)
