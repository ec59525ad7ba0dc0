"""The reusable parts of the admin API's OpenAPI document: schemas, parameters, answers.

How this works: :mod:`headwater.api.openapi` writes the paths; the schemas of
what the API returns (a resource, a job, a stream, the topology, a dead
letter, a device), the path parameters, the error answers and the
operations every kind of job has (:func:`job_paths`) are here, written once
and referred to from the paths (``#/components/schemas/...`` or by value).
"""

from __future__ import annotations

from typing import Any

from headwater.resources import KINDS

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "problems": {"type": "array"},
    },
}


def json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error_body(description: str) -> dict[str, Any]:
    return json_body({"$ref": "#/components/schemas/Error"}, description)


UNAUTHORIZED = error_body("Missing or wrong bearer token (when one is configured).")
UNAVAILABLE = error_body("The event log is unavailable; try again.")

KIND_PARAM = {
    "name": "kind",
    "in": "path",
    "required": True,
    "description": "A kind, case-insensitive, singular or plural (broker, Brokers, ...).",
    "schema": {"type": "string"},
}
NS_PARAM = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}}
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}

RESOURCE = {
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
KEY = {
    "type": "object",
    "required": ["kind", "namespace", "name"],
    "properties": {
        "kind": {"type": "string"},
        "namespace": {"type": "string"},
        "name": {"type": "string"},
    },
}
KEYS = {"type": "array", "items": {"$ref": "#/components/schemas/Key"}}
APPLIED = {
    "type": "object",
    "required": ["created", "updated", "unchanged", "warnings"],
    "properties": {
        "created": KEYS,
        "updated": KEYS,
        "unchanged": KEYS,
        "warnings": {
            "type": "array",
            "description": "Fields that are accepted but ignored, and why.",
            "items": {"type": "object"},
        },
    },
}
RESOURCES_BODY = {
    "required": True,
    "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {}},
    },
}
JOB = {
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
MAX_FAILURES = {
    "type": "integer",
    "minimum": 1,
    "description": "Stop (state `failed`) once this many events failed.",
}


def job_paths(kind: str) -> dict[str, Any]:
    """The list, status and cancel operations of a kind of job."""
    ref = {"$ref": "#/components/schemas/Job"}
    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "": {
            "get": {
                "summary": f"Every {kind} job kept (running, and the newest finished)",
                "responses": {
                    "200": json_body(
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
                    "200": json_body(ref, "Progress"),
                    "401": UNAUTHORIZED,
                    "404": error_body("No such job."),
                },
            }
        },
        "/{id}/cancel": {
            "post": {
                "summary": f"Cancel a {kind}; answers how it ended",
                "parameters": [id_param],
                "responses": {
                    "200": json_body(ref, "Its state (cancelled, or how it had ended)"),
                    "401": UNAUTHORIZED,
                    "404": error_body("No such job."),
                },
            }
        },
    }


STREAM = {
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

NODE = {
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
TOPOLOGY = {
    "type": "object",
    "required": ["time", "nodes", "edges"],
    "properties": {
        "time": {"type": "number"},
        "nodes": {"type": "array", "items": NODE},
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
OUTCOME = {"type": "string", "enum": ["delivered", "dead-lettered", "dropped"]}
DEAD_LETTER = {
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
        "traceId": {
            "type": ["string", "null"],
            "description": "The W3C trace id of the event (its traceparent), if it has one",
        },
        "redriven": {"oneOf": [OUTCOME, {"type": "null"}]},
        "event": {"type": "object", "description": "The original event, structured mode"},
    },
}
DEVICE = {
    "type": "object",
    "required": ["device", "updated", "values"],
    "properties": {
        "device": {"type": "string"},
        "updated": {"type": "number"},
        "values": {"type": "object", "additionalProperties": {"type": "number"}},
        "fields": {"type": "array", "items": {"type": "string"}},
    },
}
ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The dead letter's offset in the dead-letter stream.",
    "schema": {"type": "string"},
}
