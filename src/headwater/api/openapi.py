"""The OpenAPI 3.1 document of the admin API, served at ``/api/v1/openapi.json``.

Written by hand next to the handlers it describes, and checked against them by
a schemathesis run in the test suite (every response must match its schema,
and no request may produce a 5xx).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from headwater import __version__
from headwater.api.http import json_response
from headwater.resources import KINDS

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "problems": {"type": "array"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


UNAUTHORIZED = _error("Missing or wrong bearer token (when one is configured).")
UNAVAILABLE = _error("The event log is unavailable; try again.")

_KIND_PARAM = {
    "name": "kind",
    "in": "path",
    "required": True,
    "description": "A kind, case-insensitive, singular or plural (broker, Brokers, ...).",
    "schema": {"type": "string"},
}
_NS_PARAM = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

_RESOURCE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "status"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string", "enum": sorted(KINDS)},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
        },
        "spec": {"type": "object"},
        "status": {
            "type": "object",
            "required": ["conditions"],
            "properties": {
                "conditions": {"type": "array", "items": {"type": "object"}},
                "origin": {
                    "type": "object",
                    "description": "Where it came from: a file of `headwater up`, or the API.",
                    "required": ["source", "file", "line"],
                    "properties": {
                        "source": {"type": "string", "enum": ["file", "api"]},
                        "file": {"type": "string"},
                        "line": {"type": "integer"},
                        "resourceVersion": {"type": "string"},
                        "applied": {"type": ["string", "null"]},
                    },
                },
            },
        },
    },
}
_KEY = {
    "type": "object",
    "required": ["kind", "namespace", "name"],
    "properties": {
        "kind": {"type": "string"},
        "namespace": {"type": "string"},
        "name": {"type": "string"},
    },
}
_KEYS = {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}
_APPLIED = {
    "type": "object",
    "required": ["created", "updated", "unchanged", "warnings"],
    "properties": {
        "created": _KEYS,
        "updated": _KEYS,
        "unchanged": _KEYS,
        "warnings": {
            "type": "array",
            "description": "Fields that are accepted but ignored, and why.",
            "items": {"type": "object"},
        },
    },
}
_RESOURCES_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {}},
    },
}
_JOB = {
    "type": "object",
    "required": [
        "id", "kind", "state", "done", "delivered", "failed", "skipped", "total", "remaining",
    ],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["replay", "redrive"]},
        "state": {"type": "string", "enum": ["running", "done", "failed", "cancelled"]},
        "done": {"type": "boolean"},
        "delivered": {"type": "integer"},
        "failed": {"type": "integer", "description": "Events not delivered after retries."},
        "skipped": {"type": "integer", "description": "Re-drives refused (origin not running)."},
        "total": {"type": ["integer", "null"], "description": "Events it handles, once known."},
        "remaining": {"type": ["integer", "null"]},
        "maxFailures": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
        "started": {"type": "string"},
        "finished": {"type": ["string", "null"]},
        "stream": {"type": "string"},
        "start": {"type": "string"},
        "destination": {"type": "string"},
        "untilOffset": {"type": "integer"},
        "position": {"type": "integer"},
        "selector": {"type": "string"},
        "origin": {"type": ["string", "null"]},
        "lastSkipped": {"type": ["string", "null"]},
    },
}  # fmt: skip
_MAX_FAILURES = {
    "type": "integer",
    "minimum": 1,
    "description": "Stop (state `failed`) once this many events failed.",
}


def _jobs(kind: str) -> dict[str, Any]:
    """The list, status and cancel operations of a kind of job."""
    ref = {"$ref": "#/components/schemas/Job"}
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "": {
            "get": {
                "summary": f"Every {kind} job kept (running, and the newest finished)",
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "required": ["items"],
                            "properties": {"items": {"type": "array", "items": ref}},
                        },
                        "Jobs",
                    ),
                    "401": UNAUTHORIZED,
                },
            }
        },
        "/{id}": {
            "get": {
                "summary": f"Progress of a {kind}",
                "parameters": [id_param],
                "responses": {
                    "200": _json(ref, "Progress"),
                    "401": UNAUTHORIZED,
                    "404": _error("No such job."),
                },
            }
        },
        "/{id}/cancel": {
            "post": {
                "summary": f"Cancel a {kind}; answers how it ended",
                "parameters": [id_param],
                "responses": {
                    "200": _json(ref, "Its state (cancelled, or how it had ended)"),
                    "401": UNAUTHORIZED,
                    "404": _error("No such job."),
                },
            }
        },
    }


_STREAM = {
    "type": "object",
    "required": ["stream", "firstOffset", "lastOffset", "events", "bytes", "dropped", "consumers"],
    "properties": {
        "stream": {"type": "string"},
        "firstOffset": {"type": "integer"},
        "lastOffset": {"type": "integer"},
        "events": {"type": "integer"},
        "bytes": {"type": "integer"},
        "dropped": {"type": "integer"},
        "consumers": {"type": "array", "items": {"type": "object"}},
    },
}

_NODE = {
    "type": "object",
    "required": ["id", "kind", "name", "role", "ready", "health", "counters"],
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string"},
        "namespace": {"type": ["string", "null"]},
        "name": {"type": "string"},
        "role": {"type": "string", "enum": ["source", "channel", "route", "sink"]},
        "ready": {"type": "string"},
        "reason": {"type": ["string", "null"]},
        "health": {"type": "string", "enum": ["ok", "failing", "lagging", "not-ready"]},
        "counters": {"type": "object", "additionalProperties": {"type": "number"}},
        "lastError": {"type": ["string", "null"]},
        "lastErrorTime": {"type": ["string", "null"]},
        "lastErrorAttempt": {"type": ["integer", "null"]},
    },
}
_TOPOLOGY = {
    "type": "object",
    "required": ["time", "nodes", "edges"],
    "properties": {
        "time": {"type": "number"},
        "nodes": {"type": "array", "items": _NODE},
        "edges": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["from", "to", "via"],
                "properties": {
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                    "via": {"type": "string"},
                },
            },
        },
    },
}
_OUTCOME = {"type": "string", "enum": ["delivered", "dead-lettered", "dropped"]}
_DEAD_LETTER = {
    "type": "object",
    "required": ["id", "origin", "destination", "code", "event", "redriven"],
    "properties": {
        "id": {"type": "integer", "minimum": 1},
        "origin": {
            "oneOf": [{"$ref": "#/components/schemas/Key"}, {"type": "null"}],
            "description": "The Trigger or Subscription that gave the event up.",
        },
        "destination": {"type": ["string", "null"], "description": "knativeerrordest"},
        "code": {"type": ["integer", "null"], "description": "knativeerrorcode"},
        "errorData": {"type": ["string", "null"], "description": "knativeerrordata (base64)"},
        "errorText": {"type": ["string", "null"], "description": "errorData as UTF-8 text"},
        "error": {"type": ["string", "null"], "description": "The last error, as text"},
        "failedAt": {"type": ["string", "null"]},
        "dataOmitted": {"type": "boolean"},
        "redriven": {"oneOf": [_OUTCOME, {"type": "null"}]},
        "event": {"type": "object", "description": "The original event, structured mode"},
    },
}
_DEVICE = {
    "type": "object",
    "required": ["device", "updated", "values"],
    "properties": {
        "device": {"type": "string"},
        "updated": {"type": "number"},
        "values": {"type": "object", "additionalProperties": {"type": "number"}},
        "fields": {"type": "array", "items": {"type": "string"}},
    },
}
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The dead letter's offset in the dead-letter stream.",
    "schema": {"type": "string"},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Headwater admin API",
            "version": __version__,
            "description": (
                "Resources in Knative's shapes, status, streams, tail and replay, "
                "topology, dead letters and devices."
            ),
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Resource": _RESOURCE,
                "Key": _KEY,
                "Job": _JOB,
                "Stream": _STREAM,
                "Topology": _TOPOLOGY,
                "DeadLetter": _DEAD_LETTER,
                "Device": _DEVICE,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1/status": {
                "get": {
                    "summary": "Version, uptime and listeners",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["version", "uptimeSeconds", "listeners"],
                                "properties": {
                                    "version": {"type": "string"},
                                    "uptimeSeconds": {"type": "number"},
                                    "listeners": {"type": "object"},
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
                        "200": _json(
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
                        "503": _error("It cannot store events now (NATS unreachable)."),
                    },
                }
            },
            "/api/v1/nodes": {
                "get": {
                    "summary": "The nodes of the mesh (this node alone without --nats)",
                    "responses": {
                        "200": _json(
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
                        "200": _json(
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
                    "requestBody": _RESOURCES_BODY,
                    "responses": {
                        "200": _json(_APPLIED, "Applied"),
                        "400": _error("The body is not UTF-8."),
                        "401": UNAUTHORIZED,
                        "409": _error("A file of `headwater up` defines one of them."),
                        "413": _error("The body is too large."),
                        "415": _error("Not YAML or JSON."),
                        "422": _error("Invalid resources; `problems` locates each."),
                        "503": _error("The state store cannot keep them; nothing changed."),
                    },
                },
            },
            "/api/v1/resources/{kind}": {
                "get": {
                    "summary": "List resources of a kind",
                    "parameters": [
                        _KIND_PARAM,
                        {"name": "namespace", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _json(
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
                        "404": _error("Unknown kind."),
                    },
                }
            },
            "/api/v1/resources/{kind}/{namespace}/{name}": {
                "get": {
                    "summary": "One resource with its status",
                    "parameters": [_KIND_PARAM, _NS_PARAM, _NAME_PARAM],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Resource"}, "The resource"),
                        "401": UNAUTHORIZED,
                        "404": _error("Unknown kind or resource."),
                    },
                },
                "put": {
                    "summary": "Replace one resource the API applied",
                    "description": (
                        "With `metadata.resourceVersion`, only if it is still the current one "
                        "(else 409)."
                    ),
                    "parameters": [_KIND_PARAM, _NS_PARAM, _NAME_PARAM],
                    "requestBody": _RESOURCES_BODY,
                    "responses": {
                        "200": _json(_APPLIED, "Replaced"),
                        "400": _error("The body is not UTF-8."),
                        "401": UNAUTHORIZED,
                        "404": _error("Unknown kind or resource."),
                        "409": _error(
                            "Changed meanwhile (a stale resourceVersion), or a file defines it."
                        ),
                        "413": _error("The body is too large."),
                        "415": _error("Not YAML or JSON."),
                        "422": _error("Invalid, or not this one resource."),
                        "503": _error("The state store cannot keep it; nothing changed."),
                    },
                },
                "delete": {
                    "summary": "Delete a resource the API applied",
                    "parameters": [_KIND_PARAM, _NS_PARAM, _NAME_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["deleted"],
                                "properties": {"deleted": _KEYS},
                            },
                            "Deleted",
                        ),
                        "401": UNAUTHORIZED,
                        "404": _error("Unknown kind or resource."),
                        "409": _error("Other resources refer to it, or a file defines it."),
                        "503": _error("The state store cannot forget it; nothing changed."),
                    },
                },
            },
            "/api/v1/brokers/{namespace}/{name}/stream": {
                "get": {
                    "summary": "The Broker's stream in the log: offsets, size, consumers, lag",
                    "parameters": [_NS_PARAM, _NAME_PARAM],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Stream"}, "Stream info"),
                        "401": UNAUTHORIZED,
                        "404": _error("No running Broker."),
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
                        _NS_PARAM,
                        _NAME_PARAM,
                        {"name": "filter", "in": "query", "schema": {"type": "string"}},
                        {"name": "start", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "An endless event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "400": _error("Invalid filter or start."),
                        "401": UNAUTHORIZED,
                        "404": _error("No running Broker."),
                    },
                }
            },
            "/api/v1/replays": {
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
                                        "maxFailures": _MAX_FAILURES,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json({"$ref": "#/components/schemas/Job"}, "Started"),
                        "400": _error("Invalid request."),
                        "401": UNAUTHORIZED,
                        "404": _error("No running Broker."),
                        "413": _error("The body is too large."),
                    },
                }
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
                        "200": _json(
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
                        "400": _error("Not a JSON object with a string `filter`."),
                        "401": UNAUTHORIZED,
                        "413": _error("The body is too large."),
                    },
                }
            },
            "/api/v1/topology": {
                "get": {
                    "summary": "Sources, Brokers/Channels, Triggers/Subscriptions and sinks",
                    "description": "Counters are totals; two snapshots give rates.",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Topology"}, "The graph"),
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
                        "200": _json(
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
                        "400": _error("Invalid limit, before or origin."),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/api/v1/deadletters/{id}": {
                "get": {
                    "summary": "One dead letter",
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/DeadLetter"}, "It"),
                        "400": _error("Not an id."),
                        "401": UNAUTHORIZED,
                        "404": _error("No such dead letter (or no longer retained)."),
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
                    "parameters": [_ID_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["id", "outcome", "destination", "deadLetter"],
                                "properties": {
                                    "id": {"type": "integer"},
                                    "outcome": _OUTCOME,
                                    "destination": {"type": "string"},
                                    "lastError": {"type": ["string", "null"]},
                                    "deadLetter": {"$ref": "#/components/schemas/DeadLetter"},
                                },
                            },
                            "Re-driven; `outcome` says how it ended",
                        ),
                        "400": _error("Not an id."),
                        "401": UNAUTHORIZED,
                        "404": _error("No such dead letter."),
                        "409": _error(
                            "Cannot re-drive now: delivered already, under way, or the origin "
                            "is not running."
                        ),
                        "503": UNAVAILABLE,
                    },
                }
            },
            "/api/v1/devices": {
                "get": {
                    "summary": "Devices seen in the last hour with their latest numeric values",
                    "responses": {
                        "200": _json(
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
            "/api/v1/devices/series": {
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
                        "200": _json(
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
                        "400": _error("No device named, or a bad `since`."),
                        "401": UNAUTHORIZED,
                        "404": _error("No such device in the last hour."),
                    },
                }
            },
            "/api/v1/devices/events": {
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
                        "400": _error("A bad `since`."),
                        "401": UNAUTHORIZED,
                    },
                }
            },
            **{f"/api/v1/replays{path}": item for path, item in _jobs("replay").items()},
            "/api/v1/redrives": {
                **_jobs("redrive")[""],
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
                                        "maxFailures": _MAX_FAILURES,
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _json({"$ref": "#/components/schemas/Job"}, "Started"),
                        "400": _error("Not one of all, origin or ids; or a bad value."),
                        "401": UNAUTHORIZED,
                        "503": UNAVAILABLE,
                    },
                },
            },
            **{f"/api/v1/redrives{path}": item for path, item in _jobs("redrive").items() if path},
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return json_response(document())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/openapi.json", openapi)
