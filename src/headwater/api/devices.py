"""The device registry in the admin API: devices, credentials, twins, commands.

How this works: thin handlers over the runtime's
:class:`~headwater.devices.Devices` (nothing here decides anything). A
device is named by its id in the path and its namespace in ``?namespace=``
(default ``default``); a listing without ``namespace`` covers them all.
Bodies are JSON. The registry's errors map to statuses in one place
(the :func:`errors` middleware): 400 bad input (with the reason), 404 unknown device or
command, 409 a conflict (an id or certificate taken, a stale ``revision`` or
twin ``version``, a device a ``Device`` resource defines), 413 a twin over
its limit, 415 a body that is not JSON, 429 too many commands waiting for
one device, 503 the state store cannot be written (nothing changed).

Generated secrets are in the answer that created them, once, and never
again. A command is queued by ``POST .../commands`` and answered at once;
``GET .../commands/{cid}?wait=S`` waits up to ``S`` seconds
(:data:`MAX_WAIT`) for it to finish, which is how ``headwater device command
--wait`` follows it. Bodies are read up to a bound (:data:`MAX_BODY`,
:data:`MAX_IMPORT_BYTES` for an import): over it, 413.

The routes' part of the OpenAPI document is :mod:`headwater.api.devices_openapi`.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from aiohttp import web

from headwater.api.http import RUNTIME_KEY, Handler, error, json_response
from headwater.devices import (
    DEFAULT_NAMESPACE,
    Device,
    DeviceConflict,
    DeviceExists,
    DeviceNotFound,
    Devices,
    InvalidDevice,
    OwnedByResource,
    Selector,
    TooManyCommands,
    TwinTooLarge,
)
from headwater.devices.command_model import expiry_seconds, parse_data, parse_seconds
from headwater.devices.imports import parse_rows
from headwater.devices.model import check_device_id, check_namespace
from headwater.http_guard import read_body
from headwater.state import StateError

__all__ = ["MAX_LIMIT", "MAX_WAIT", "add_routes", "errors"]

MAX_WAIT: Final = 60.0
"""Seconds one request waits for a command at most (a client asks again to wait longer)."""

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 10_000
"""Devices per listing at most: a fleet of a gateway in one page; more with ``continue``."""

MAX_BODY: Final = 1024 * 1024
"""Bytes of a JSON body at most: a command's data is 256 KiB at most, a twin's state less."""

MAX_IMPORT_BYTES: Final = 32 * 1024 * 1024
"""Bytes of an import at most: 100,000 rows (the import's limit) of a device id,
labels and a credential each."""


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The registry's errors as HTTP answers (see the module docstring)."""
    if not request.path.startswith("/api/v1/devices"):
        return await handler(request)
    try:
        return await handler(request)
    except TwinTooLarge as exc:
        return error(413, str(exc))
    except InvalidDevice as exc:
        return error(400, str(exc))
    except DeviceNotFound as exc:
        return error(404, str(exc))
    except OwnedByResource as exc:
        where = _owner_origin(request, exc.owner)
        return error(
            409,
            f"device {exc.device!r} is defined by {exc.owner}"
            + (f" ({where})" if where else "")
            + f": {exc.action} it there",
        )
    except DeviceConflict as exc:
        return error(409, str(exc), revision=exc.actual)
    except DeviceExists as exc:
        return error(409, str(exc))
    except TooManyCommands as exc:
        return error(429, str(exc))
    except StateError as exc:
        return error(503, f"the state store cannot keep it, nothing was changed: {exc}")


def _devices(request: web.Request) -> Devices:
    return request.app[RUNTIME_KEY].devices


def _owner_origin(request: web.Request, owner: str) -> str | None:
    """Where the Device resource that owns a device is defined (a file, or the API)."""
    kind, _, rest = owner.partition("/")
    namespace, _, name = rest.partition("/")
    origin = request.app[RUNTIME_KEY].origin((kind, namespace, name))
    return origin.describe() if origin is not None else None


def _view(request: web.Request, device: Device) -> dict[str, Any]:
    """A device as the API shows it, with where its owning resource is defined."""
    out = _devices(request).view(device)
    if device.owner is not None:
        out["owner"]["origin"] = _owner_origin(request, device.owner)
    return out


def _namespace(request: web.Request) -> str:
    return check_namespace(request.query.get("namespace", DEFAULT_NAMESPACE))


def _target(request: web.Request) -> tuple[str, str]:
    return _namespace(request), check_device_id(request.match_info["id"])


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            text=orjson.dumps({"error": "send application/json"}).decode(),
            content_type="application/json",
        )
    try:
        body = orjson.loads(await read_body(request, MAX_BODY))
    except orjson.JSONDecodeError as exc:
        raise InvalidDevice(f"the body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidDevice("the body must be a JSON object")
    return body


def _only(body: dict[str, Any], *allowed: str) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise InvalidDevice(
            f"unknown field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}"
        )


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidDevice(f"`{name}` is true or false")
    return value


def _revision(value: Any, name: str = "revision") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidDevice(f"`{name}` is a non-negative integer")
    return value


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise InvalidDevice(f"`{name}` must be an integer from {low} to {high}, not {text[:20]!r}")
    return int(text)


# -- devices ------------------------------------------------------------------------------


async def list_devices(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    query = request.query
    namespace = check_namespace(query["namespace"]) if "namespace" in query else None
    online: bool | None = None
    if "online" in query:
        if query["online"] not in ("true", "false"):
            raise InvalidDevice("`online` is true or false")
        online = query["online"] == "true"
    selector = Selector.parse(query["selector"]) if query.get("selector") else None
    limit = _int_query(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    after = query.get("continue")
    found = devices.find(namespace, online=online, selector=selector)
    if after:
        found = [d for d in found if f"{d.namespace}/{d.id}" > after]
    page = found[:limit]
    body: dict[str, Any] = {
        "items": [_view(request, d) for d in page],
        "total": len(found),
    }
    if len(found) > limit:
        body["continue"] = f"{page[-1].namespace}/{page[-1].id}"
    return json_response(body)


async def create_device(request: web.Request) -> web.Response:
    body = await _body(request)
    _only(body, "id", "namespace", "labels", "enabled", "credentials")
    devices = _devices(request)
    await devices.start()
    credentials = body.get("credentials")
    if credentials is not None and not isinstance(credentials, list):
        raise InvalidDevice("`credentials` is a list")
    device, secrets = await devices.registry.create(
        body.get("namespace", request.query.get("namespace", DEFAULT_NAMESPACE)),
        body.get("id"),  # type: ignore[arg-type]  # checked there
        labels=body.get("labels"),
        enabled=_bool(body.get("enabled", True), "enabled"),
        credentials=credentials,
    )
    return json_response(
        {"device": _view(request, device), "secrets": [s.to_json() for s in secrets]}, 201
    )


async def import_devices(request: web.Request) -> web.Response:
    namespace = _namespace(request)
    media = request.content_type
    if media not in ("text/csv", "application/json"):
        return error(415, "send the devices as text/csv or application/json")
    try:
        text = (await read_body(request, MAX_IMPORT_BYTES)).decode("utf-8")
    except UnicodeDecodeError:
        return error(400, "the body is not UTF-8")
    rows = parse_rows(text, "csv" if media == "text/csv" else "json")
    devices = _devices(request)
    await devices.start()
    result = await devices.registry.import_devices(namespace, rows)
    return json_response(
        {
            "created": len(result.created),
            "existing": result.existing,
            "failed": [{"device": d, "error": why} for d, why in result.failed],
            "secrets": [s.to_json() for s in result.secrets],
        }
    )


async def get_device(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    return json_response(_view(request, devices.registry.require(namespace, device_id)))


async def update_device(request: web.Request) -> web.Response:
    body = await _body(request)
    _only(
        body,
        "labels",
        "enabled",
        "revision",
        "addCredentials",
        "removeCredentials",
        "replaceSecrets",
    )
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    add = body.get("addCredentials", [])
    remove = body.get("removeCredentials", [])
    if not isinstance(add, list):
        raise InvalidDevice("`addCredentials` is a list of credentials")
    if not isinstance(remove, list) or not all(isinstance(r, str) for r in remove):
        raise InvalidDevice("`removeCredentials` is a list of credential ids")
    device, secrets = await devices.registry.update(
        namespace,
        device_id,
        labels=body.get("labels"),
        enabled=_bool(body["enabled"], "enabled") if "enabled" in body else None,
        add=add,
        remove=remove,
        replace_secrets=_bool(body.get("replaceSecrets", False), "replaceSecrets"),
        revision=_revision(body.get("revision")),
    )
    return json_response(
        {"device": _view(request, device), "secrets": [s.to_json() for s in secrets]}
    )


async def delete_device(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    text = request.query.get("revision")
    revision = None
    if text is not None:
        if not (text.isascii() and text.isdigit()):
            raise InvalidDevice(f"`revision` is a non-negative integer, not {text[:20]!r}")
        revision = int(text)
    device = await devices.registry.delete(namespace, device_id, revision=revision)
    return json_response({"deleted": {"id": device.id, "namespace": device.namespace}})


async def add_credential(request: web.Request) -> web.Response:
    body = await _body(request)
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    device, secrets = await devices.registry.update(namespace, device_id, add=[body])
    return json_response(
        {"device": _view(request, device), "secrets": [s.to_json() for s in secrets]}, 201
    )


async def remove_credential(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    credential = request.match_info["credential"]
    device, _ = await devices.registry.update(namespace, device_id, remove=[credential])
    return json_response({"device": _view(request, device)})


# -- twins ----------------------------------------------------------------------------------


async def get_twin(request: web.Request) -> web.Response:
    namespace, device_id = _target(request)
    twin = await _devices(request).twin(namespace, device_id)
    return json_response(twin.to_json())


async def _set_desired(request: web.Request, *, merge: bool) -> web.Response:
    body = await _body(request)
    _only(body, "state", "version")
    if "state" not in body:
        raise InvalidDevice("the body needs `state`: a JSON object (a merge patch for PATCH)")
    namespace, device_id = _target(request)
    change = await _devices(request).set_desired(
        namespace,
        device_id,
        body["state"],
        merge=merge,
        version=_revision(body.get("version"), "version"),
    )
    return json_response(change.after.to_json())


async def patch_desired(request: web.Request) -> web.Response:
    return await _set_desired(request, merge=True)


async def put_desired(request: web.Request) -> web.Response:
    return await _set_desired(request, merge=False)


# -- commands -------------------------------------------------------------------------------


async def send_command(request: web.Request) -> web.Response:
    body = await _body(request)
    _only(body, "data", "dataBase64", "contentType", "expiry")
    namespace, device_id = _target(request)
    data, content_type = parse_data(body)
    command = await _devices(request).command(
        namespace, device_id, data, content_type, expiry=expiry_seconds(body.get("expiry"))
    )
    return json_response(command.to_json(), 201)


async def list_commands(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    devices.registry.require(namespace, device_id)
    limit = _int_query(request, "limit", 20, 1, 100)
    commands = await devices.commands.recent(namespace, device_id, limit)
    return json_response({"items": [c.to_json() for c in commands]})


async def get_command(request: web.Request) -> web.Response:
    devices = _devices(request)
    await devices.start()
    namespace, device_id = _target(request)
    devices.registry.require(namespace, device_id)
    command_id = request.match_info["command"]
    wait = 0.0
    if "wait" in request.query:
        wait = parse_seconds(request.query["wait"])
        if not 0 <= wait <= MAX_WAIT:
            raise InvalidDevice(f"`wait` is 0 to {MAX_WAIT:g} seconds")
    command = await devices.commands.wait(namespace, device_id, command_id, wait)
    if command is None:
        raise DeviceNotFound(f"device {device_id!r} has no command {command_id!r}")
    return json_response(command.to_json())


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/v1/devices", list_devices)
    router.add_post("/api/v1/devices", create_device)
    router.add_post("/api/v1/devices/import", import_devices)
    router.add_get("/api/v1/devices/{id}", get_device)
    router.add_patch("/api/v1/devices/{id}", update_device)
    router.add_delete("/api/v1/devices/{id}", delete_device)
    router.add_post("/api/v1/devices/{id}/credentials", add_credential)
    router.add_delete("/api/v1/devices/{id}/credentials/{credential}", remove_credential)
    router.add_get("/api/v1/devices/{id}/twin", get_twin)
    router.add_patch("/api/v1/devices/{id}/twin/desired", patch_desired)
    router.add_put("/api/v1/devices/{id}/twin/desired", put_desired)
    router.add_post("/api/v1/devices/{id}/commands", send_command)
    router.add_get("/api/v1/devices/{id}/commands", list_commands)
    router.add_get("/api/v1/devices/{id}/commands/{command}", get_command)
