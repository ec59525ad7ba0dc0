"""The OpenAPI 3.1 document of the admin API, served at ``/api/v1/openapi.json``.

How this works: written by hand next to the handlers it describes (the
schemas and parameters it shares are in :mod:`headwater.api.openapi_parts`),
and checked against them by a schemathesis run in the test suite (every
response must match its schema, and no request may produce a 5xx).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from headwater import __version__
from headwater.api.devices_openapi import OPENAPI_PATHS as DEVICE_PATHS
from headwater.api.devices_openapi import SCHEMAS as DEVICE_SCHEMAS
from headwater.api.http import json_response
from headwater.api.openapi_parts import (
    APPLIED,
    DEAD_LETTER,
    DEVICE,
    ERROR,
    ID_PARAM,
    JOB,
    KEY,
    KEYS,
    KIND_PARAM,
    MAX_FAILURES,
    NAME_PARAM,
    NS_PARAM,
    OUTCOME,
    RESOURCE,
    RESOURCES_BODY,
    STREAM,
    TOPOLOGY,
    UNAUTHORIZED,
    UNAVAILABLE,
    error_body,
    job_paths,
    json_body,
)


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Headwater admin API",
            "version": __version__,
            "description": (
                "Resources in Knative's shapes, status, streams, tail and replay, "
                "topology, dead letters, telemetry, the device registry (devices, "
                "credentials, presence, twins, commands) and the mesh's nodes."
            ),
        },
        "components": {
            "schemas": {
                "Error": ERROR,
                "Resource": RESOURCE,
                "Key": KEY,
                "Job": JOB,
                "Stream": STREAM,
                "Topology": TOPOLOGY,
                "DeadLetter": DEAD_LETTER,
                "Device": DEVICE,
                **DEVICE_SCHEMAS,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1/status": {
                "get": {
                    "summary": "Version, uptime and listeners",
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["version", "uptimeSeconds", "listeners"],
                                "properties": {
                                    "version": {"type": "string"},
                                    "uptimeSeconds": {"type": "number"},
                                    "listeners": {"type": "object"},
                                    "tracing": {
                                        "type": "object",
                                        "required": ["enabled", "traceUrl"],
                                        "properties": {
                                            "enabled": {"type": "boolean"},
                                            "endpoint": {"type": ["string", "null"]},
                                            "sampling": {"type": "number"},
                                            "spans": {"type": "integer"},
                                            "traceUrl": {"type": ["string", "null"]},
                                        },
                                    },
                                },
                            },
                            "Status",
                        ),
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/health": {
                "get": {
                    "summary": "Whether this node can take events (for probes; no token)",
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["status", "problems"],
                                "properties": {
                                    "status": {"type": "string"},
                                    "problems": {"type": "array", "items": {"type": "string"}},
                                    "node": {"type": "string"},
                                },
                            },
                            "Serving",
                        ),
                        "503": error_body("It cannot store events now (NATS unreachable)."),
                    },
                }
            },
            "/api/v1/nodes": {
                "get": {
                    "summary": "The nodes of the mesh (this node alone without --nats)",
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["mesh", "items"],
                                "properties": {
                                    "mesh": {"type": "boolean"},
                                    "self": {"type": ["string", "null"]},
                                    "items": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["name", "version", "uptimeSeconds"],
                                            "properties": {
                                                "name": {"type": "string"},
                                                "version": {"type": "string"},
                                                "addresses": {"type": "object"},
                                                "uptimeSeconds": {"type": "number"},
                                                "devices": {"type": "integer"},
                                                "cpu": {"type": "number"},
                                                "rss": {"type": "integer"},
                                            },
                                        },
                                    },
                                },
                            },
                            "Nodes",
                        ),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/api/v1/resources": {
                "get": {
                    "summary": "List every resource",
                    "parameters": [
                        {"name": "namespace", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Resource"},
                                    }
                                },
                            },
                            "The resources",
                        ),
                        "401": UNAUTHORIZED,
                    },
                },
                "post": {
                    "summary": "Create or update resources (multi-document YAML, or JSON)",
                    "description": (
                        "Kept in the state store: they run again after a restart. "
                        "`metadata.resourceVersion` is ignored here (last write wins)."
                    ),
                    "requestBody": RESOURCES_BODY,
                    "responses": {
                        "200": json_body(APPLIED, "Applied"),
                        "400": error_body("The body is not UTF-8."),
                        "401": UNAUTHORIZED,
                        "409": error_body("A file of `headwater up` defines one of them."),
                        "413": error_body("The body is too large."),
                        "415": error_body("Not YAML or JSON."),
                        "422": error_body("Invalid resources; `problems` locates each."),
                        "503": error_body("The state store cannot keep them; nothing changed."),
                    },
                },
            },
            "/api/v1/resources/{kind}": {
                "get": {
                    "summary": "List resources of a kind",
                    "parameters": [
                        KIND_PARAM,
                        {"name": "namespace", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Resource"},
                                    }
                                },
                            },
                            "The resources",
                        ),
                        "401": UNAUTHORIZED,
                        "404": error_body("Unknown kind."),
                    },
                }
            },
            "/api/v1/resources/{kind}/{namespace}/{name}": {
                "get": {
                    "summary": "One resource with its status",
                    "parameters": [KIND_PARAM, NS_PARAM, NAME_PARAM],
                    "responses": {
                        "200": json_body({"$ref": "#/components/schemas/Resource"}, "The resource"),
                        "401": UNAUTHORIZED,
                        "404": error_body("Unknown kind or resource."),
                    },
                },
                "put": {
                    "summary": "Replace one resource the API applied",
                    "description": (
                        "With `metadata.resourceVersion`, only if it is still the current one "
                        "(else 409)."
                    ),
                    "parameters": [KIND_PARAM, NS_PARAM, NAME_PARAM],
                    "requestBody": RESOURCES_BODY,
                    "responses": {
                        "200": json_body(APPLIED, "Replaced"),
                        "400": error_body("The body is not UTF-8."),
                        "401": UNAUTHORIZED,
                        "404": error_body("Unknown kind or resource."),
                        "409": error_body(
                            "Changed meanwhile (a stale resourceVersion), or a file defines it."
                        ),
                        "413": error_body("The body is too large."),
                        "415": error_body("Not YAML or JSON."),
                        "422": error_body("Invalid, or not this one resource."),
                        "503": error_body("The state store cannot keep it; nothing changed."),
                    },
                },
                "delete": {
                    "summary": "Delete a resource the API applied",
                    "parameters": [KIND_PARAM, NS_PARAM, NAME_PARAM],
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["deleted"],
                                "properties": {"deleted": KEYS},
                            },
                            "Deleted",
                        ),
                        "401": UNAUTHORIZED,
                        "404": error_body("Unknown kind or resource."),
                        "409": error_body("Other resources refer to it, or a file defines it."),
                        "503": error_body("The state store cannot forget it; nothing changed."),
                    },
                },
            },
            "/api/v1/brokers/{namespace}/{name}/stream": {
                "get": {
                    "summary": "The Broker's stream in the log: offsets, size, consumers, lag",
                    "parameters": [NS_PARAM, NAME_PARAM],
                    "responses": {
                        "200": json_body({"$ref": "#/components/schemas/Stream"}, "Stream info"),
                        "401": UNAUTHORIZED,
                        "404": error_body("No running Broker."),
                    },
                }
            },
            "/api/v1/brokers/{namespace}/{name}/events": {
                "get": {
                    "summary": "Live events of a Broker as server-sent events",
                    "description": "Each event's `data` is one structured-mode CloudEvent. "
                    "An event named `warning` (once at most) says that the filter reads an "
                    "attribute none of the first events has, so it cannot match them.",
                    "parameters": [
                        NS_PARAM,
                        NAME_PARAM,
                        {"name": "filter", "in": "query", "schema": {"type": "string"}},
                        {"name": "start", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "An endless event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": error_body("Invalid filter or start."),
                        "401": UNAUTHORIZED,
                        "404": error_body("No running Broker."),
                    },
                }
            },
            "/api/v1/replays": {
                **job_paths("replay")[""],
                "post": {
                    "summary": "Replay a Broker's events from a position to a destination",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["broker", "destination"],
                                    "properties": {
                                        "broker": {"type": "string"},
                                        "namespace": {"type": "string"},
                                        "start": {"type": "string"},
                                        "destination": {"type": "object"},
                                        "maxFailures": MAX_FAILURES,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": json_body({"$ref": "#/components/schemas/Job"}, "Started"),
                        "400": error_body("Invalid request."),
                        "401": UNAUTHORIZED,
                        "404": error_body("No running Broker."),
                        "413": error_body("The body is too large."),
                    },
                },
            },
            "/api/v1/filters/check": {
                "post": {
                    "summary": "Check a CESQL filter; the parse error (line, column) if invalid",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["filter"],
                                    "properties": {"filter": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["valid", "error", "line", "column"],
                                "properties": {
                                    "valid": {"type": "boolean"},
                                    "error": {"type": ["string", "null"]},
                                    "line": {"type": ["integer", "null"]},
                                    "column": {"type": ["integer", "null"]},
                                },
                            },
                            "The verdict",
                        ),
                        "400": error_body("Not a JSON object with a string `filter`."),
                        "401": UNAUTHORIZED,
                        "413": error_body("The body is too large."),
                    },
                }
            },
            "/api/v1/topology": {
                "get": {
                    "summary": "Sources, Brokers/Channels, Triggers/Subscriptions and sinks",
                    "description": "Counters are totals; two snapshots give rates.",
                    "responses": {
                        "200": json_body({"$ref": "#/components/schemas/Topology"}, "The graph"),
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/deadletters": {
                "get": {
                    "summary": "Events Triggers and Subscriptions gave up on, newest first",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "description": "Only records with a smaller id.",
                            "schema": {"type": "integer", "minimum": 1},
                        },
                        {
                            "name": "origin",
                            "in": "query",
                            "description": "Only this Trigger's or Subscription's "
                            "(Kind/namespace/name).",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["items", "firstOffset", "lastOffset"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/DeadLetter"},
                                    },
                                    "firstOffset": {"type": "integer"},
                                    "lastOffset": {"type": "integer"},
                                },
                            },
                            "Dead letters",
                        ),
                        "400": error_body("Invalid limit, before or origin."),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/api/v1/deadletters/{id}": {
                "get": {
                    "summary": "One dead letter",
                    "parameters": [ID_PARAM],
                    "responses": {
                        "200": json_body({"$ref": "#/components/schemas/DeadLetter"}, "It"),
                        "400": error_body("Not an id."),
                        "401": UNAUTHORIZED,
                        "404": error_body("No such dead letter (or no longer retained)."),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/api/v1/deadletters/{id}/redrive": {
                "post": {
                    "summary": "Deliver a dead letter again to its origin's current subscriber",
                    "description": (
                        "Through the origin's delivery pipeline (retries, dead letter sink); "
                        "failing again records a new dead letter."
                    ),
                    "parameters": [ID_PARAM],
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["id", "outcome", "destination", "deadLetter"],
                                "properties": {
                                    "id": {"type": "integer"},
                                    "outcome": OUTCOME,
                                    "destination": {"type": "string"},
                                    "lastError": {"type": ["string", "null"]},
                                    "deadLetter": {"$ref": "#/components/schemas/DeadLetter"},
                                },
                            },
                            "Re-driven; `outcome` says how it ended",
                        ),
                        "400": error_body("Not an id."),
                        "401": UNAUTHORIZED,
                        "404": error_body("No such dead letter."),
                        "409": error_body(
                            "Cannot re-drive now: delivered already, under way, or the origin "
                            "is not running."
                        ),
                        "503": UNAVAILABLE,
                    },
                }
            },
            **DEVICE_PATHS,
            "/api/v1/telemetry": {
                "get": {
                    "summary": "Devices seen in the last hour with their latest numeric values",
                    "responses": {
                        "200": json_body(
                            {
                                "type": "object",
                                "required": ["devices", "untracked", "windowSeconds"],
                                "properties": {
                                    "devices": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Device"},
                                    },
                                    "untracked": {"type": "integer"},
                                    "windowSeconds": {"type": "number"},
                                    "bucketSeconds": {"type": "number"},
                                    "version": {"type": "integer"},
                                },
                            },
                            "Devices",
                        ),
                        "401": UNAUTHORIZED,
                    },
                }
            },
            "/api/v1/telemetry/series": {
                "get": {
                    "summary": "A device's points per field (one per bucket) over the last hour",
                    "parameters": [
                        {
                            "name": "device",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "since",
                            "in": "query",
                            "description": "Seconds since the epoch (default: an hour ago).",
                            "schema": {"type": "number"},
                        },
                    ],
                    "responses": {
                        "200": json_body(
                            {
                                "allOf": [
                                    {"$ref": "#/components/schemas/Device"},
                                    {
                                        "type": "object",
                                        "required": ["series"],
                                        "properties": {"series": {"type": "object"}},
                                    },
                                ]
                            },
                            "Series: per field, times `t` and values `v`",
                        ),
                        "400": error_body("No device named, or a bad `since`."),
                        "401": UNAUTHORIZED,
                        "404": error_body("No such device in the last hour."),
                    },
                }
            },
            "/api/v1/telemetry/events": {
                "get": {
                    "summary": "Changed devices, pushed once a second as server-sent events",
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "description": "The `version` of a device listing: changes after it.",
                            "schema": {"type": "integer", "minimum": 0},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "An endless event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": error_body("A bad `since`."),
                        "401": UNAUTHORIZED,
                    },
                }
            },
            **{
                f"/api/v1/replays{path}": item
                for path, item in job_paths("replay").items()
                if path  # "" is merged with the POST above
            },
            "/api/v1/redrives": {
                **job_paths("redrive")[""],
                "post": {
                    "summary": "Re-drive many dead letters, oldest first, as a job",
                    "description": (
                        "Every one (`all`), one origin's, or given ids, among the newest "
                        "records; those delivered by a re-drive already are left out."
                    ),
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "all": {"type": "boolean"},
                                        "origin": {
                                            "type": "string",
                                            "description": "Kind/namespace/name",
                                        },
                                        "ids": {
                                            "type": "array",
                                            "items": {"type": "integer", "minimum": 1},
                                        },
                                        "maxFailures": MAX_FAILURES,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": json_body({"$ref": "#/components/schemas/Job"}, "Started"),
                        "400": error_body("Not one of all, origin or ids; or a bad value."),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                    },
                },
            },
            **{
                f"/api/v1/redrives{path}": item
                for path, item in job_paths("redrive").items()
                if path
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi)
