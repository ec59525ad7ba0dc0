"""Every route of the admin API is in its OpenAPI document, and every documented one exists."""

from __future__ import annotations

from headwater.api import create_app
from headwater.api.openapi import document
from headwater.runtime import Runtime

METHODS = ("get", "post", "put", "patch", "delete")


def served() -> set[tuple[str, str]]:
    app = create_app(Runtime())
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        method = route.method.lower()
        if path.startswith("/api/v1/") and method in METHODS:
            routes.add((method, path))
    return routes


def documented() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in document()["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_device_registry_routes_are_documented_and_served() -> None:
    registry = {(m, p) for m, p in served() if p.startswith("/api/v1/devices")}
    assert len(registry) >= 14
    assert registry == {(m, p) for m, p in documented() if p.startswith("/api/v1/devices")}


def test_every_documented_route_is_served() -> None:
    assert documented() - served() == set()


def test_every_served_route_is_documented() -> None:
    # The document itself is the one route it does not describe.
    assert served() - documented() == {("get", "/api/v1/openapi.json")}
