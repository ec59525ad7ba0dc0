"""The device registry's routes in the OpenAPI document: schemas and paths.

How this works: plain data, merged into :func:`headwater.api.openapi.document`
(``SCHEMAS`` under ``components.schemas``, ``OPENAPI_PATHS`` under
``paths``); the routes themselves are :mod:`headwater.api.devices`. Keep the
two in step: a test checks that every device route is in the document.
"""

from __future__ import annotations

from typing import Any

from headwater.api.devices import MAX_LIMIT, MAX_WAIT

__all__ = ["OPENAPI_PATHS", "SCHEMAS"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = _ref("Error")
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_NAMESPACE = {
    "name": "namespace",
    "in": "query",
    "description": "The device's namespace (default `default`).",
    "schema": {"type": "string"},
}

SCHEMAS: dict[str, Any] = {
    "RegistryDevice": {
        "type": "object",
        "required": ["id", "namespace", "labels", "enabled", "credentials", "revision", "presence"],
        "properties": {
            "id": {"type": "string"},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "enabled": {"type": "boolean"},
            "credentials": {
                "type": "array",
                "description": "Never with their hashes.",
                "items": {
                    "type": "object",
                    "required": ["id", "type"],
                    "properties": {
                        "id": {"type": "string"},
                        "type": {"type": "string", "enum": ["secret", "password", "x509"]},
                        "created": {"type": "number"},
                        "fingerprint": {"type": "string"},
                        "subject": {"type": "string"},
                    },
                },
            },
            "created": {"type": "number"},
            "updated": {"type": "number"},
            "revision": {"type": "integer", "description": "Give it back to change it safely."},
            "owner": {"type": "object", "description": "The Device resource that defines it."},
            "presence": {
                "type": "object",
                "required": ["online"],
                "properties": {
                    "online": {"type": "boolean"},
                    "lastSeen": {"type": ["number", "null"]},
                    "connectedAt": {"type": ["number", "null"]},
                    "disconnectedAt": {"type": ["number", "null"]},
                    "address": {"type": ["string", "null"]},
                    "protocol": {"type": ["string", "null"]},
                    "clientId": {"type": ["string", "null"]},
                    "node": {
                        "type": ["string", "null"],
                        "description": "The mesh node it is (was last) connected to.",
                    },
                },
            },
        },
    },
    "Secret": {
        "type": "object",
        "description": "A generated secret: shown once, in the answer that made it.",
        "required": ["device", "credential", "secret"],
        "properties": {
            "device": {"type": "string"},
            "credential": {"type": "string"},
            "secret": {"type": "string"},
        },
    },
    "Twin": {
        "type": "object",
        "required": ["device", "namespace", "desired", "reported", "delta"],
        "properties": {
            "device": {"type": "string"},
            "namespace": {"type": "string"},
            "desired": {"type": "object"},
            "reported": {"type": "object"},
            "delta": {"type": "object"},
        },
    },
    "Command": {
        "type": "object",
        "required": ["id", "device", "status", "created", "expires", "attempts"],
        "properties": {
            "id": {"type": "string"},
            "device": {"type": "string"},
            "namespace": {"type": "string"},
            "status": {
                "type": "string",
                "enum": ["queued", "sent", "answered", "expired", "failed"],
            },
            "created": {"type": "number"},
            "expires": {"type": "number"},
            "attempts": {"type": "integer"},
            "sentAt": {"type": ["number", "null"]},
            "finishedAt": {"type": ["number", "null"]},
            "data": {},
            "dataBase64": {"type": "string"},
            "reason": {"type": "string"},
            "response": {"type": "object"},
        },
    },
}

_WITH_SECRETS = {
    "type": "object",
    "required": ["device", "secrets"],
    "properties": {
        "device": _ref("RegistryDevice"),
        "secrets": {"type": "array", "items": _ref("Secret")},
    },
}
_CREDENTIAL = {
    "type": "object",
    "required": ["type"],
    "description": "secret (generated), password (`password` or a `$scrypt$` `hash`), "
    "x509 (`fingerprint`, `subject` or a PEM `certificate`)",
    "properties": {"type": {"type": "string", "enum": ["secret", "password", "x509"]}},
}
_STATE_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["state"],
                "properties": {
                    "state": {"type": "object"},
                    "version": {"type": "integer", "minimum": 0},
                },
            }
        }
    },
}


def _common(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Bad input (the reason says what).",
        401: "Missing or wrong bearer token (when one is configured).",
        404: "No such device (or command).",
        409: "A conflict: taken, changed meanwhile, or defined by a Device resource.",
        413: "Over a twin's limits.",
        415: "Not JSON.",
        429: "Too many commands waiting for this device.",
        503: "The state store cannot keep it; nothing was changed.",
    }
    return {str(code): _json_body(_ERROR, texts[code]) for code in codes}


OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/devices": {
        "get": {
            "summary": "Registered devices with their presence",
            "parameters": [
                {**_NAMESPACE, "description": "Only this namespace (default: all)."},
                {
                    "name": "online",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["true", "false"]},
                },
                {
                    "name": "selector",
                    "in": "query",
                    "description": "site=a,tier!=test,key,!key",
                    "schema": {"type": "string"},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                },
                {"name": "continue", "in": "query", "schema": {"type": "string"}},
            ],
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["items", "total"],
                        "properties": {
                            "items": {"type": "array", "items": _ref("RegistryDevice")},
                            "total": {"type": "integer"},
                            "continue": {"type": "string"},
                        },
                    },
                    "Devices",
                ),
                **_common(400, 401, 503),
            },
        },
        "post": {
            "summary": "Register a device (without credentials: a generated secret, shown once)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["id"],
                            "properties": {
                                "id": {"type": "string"},
                                "namespace": {"type": "string"},
                                "labels": {"type": "object"},
                                "enabled": {"type": "boolean"},
                                "credentials": {"type": "array", "items": _CREDENTIAL},
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json_body(_WITH_SECRETS, "Registered"),
                **_common(400, 401, 409, 415, 503),
            },
        },
    },
    "/api/v1/devices/import": {
        "post": {
            "summary": "Register many devices from CSV or JSON (checked whole first)",
            "parameters": [_NAMESPACE],
            "requestBody": {
                "required": True,
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {}},
                },
            },
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["created", "existing", "failed", "secrets"],
                        "properties": {
                            "created": {"type": "integer"},
                            "existing": {"type": "array", "items": {"type": "string"}},
                            "failed": {"type": "array", "items": {"type": "object"}},
                            "secrets": {"type": "array", "items": _ref("Secret")},
                        },
                    },
                    "What was registered, and the secrets generated (once)",
                ),
                **_common(400, 401, 415, 503),
            },
        }
    },
    "/api/v1/devices/{id}": {
        "get": {
            "summary": "A device and its presence",
            "parameters": [_ID, _NAMESPACE],
            "responses": {
                "200": _json_body(_ref("RegistryDevice"), "The device"),
                **_common(400, 401, 404),
            },
        },
        "patch": {
            "summary": "Change labels, enabled, credentials (a removed one in use is cut off)",
            "parameters": [_ID, _NAMESPACE],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "labels": {"type": "object"},
                                "enabled": {"type": "boolean"},
                                "revision": {"type": "integer", "minimum": 0},
                                "addCredentials": {"type": "array", "items": _CREDENTIAL},
                                "removeCredentials": {"type": "array", "items": {"type": "string"}},
                                "replaceSecrets": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json_body(_WITH_SECRETS, "Changed"),
                **_common(400, 401, 404, 409, 415, 503),
            },
        },
        "delete": {
            "summary": "Remove a device (cut off; its unfinished commands fail)",
            "parameters": [
                _ID,
                _NAMESPACE,
                {"name": "revision", "in": "query", "schema": {"type": "integer", "minimum": 0}},
            ],
            "responses": {
                "200": _json_body({"type": "object", "required": ["deleted"]}, "Deleted"),
                **_common(400, 401, 404, 409, 503),
            },
        },
    },
    "/api/v1/devices/{id}/credentials": {
        "post": {
            "summary": "Add a credential (a generated secret is in the answer, once)",
            "parameters": [_ID, _NAMESPACE],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _CREDENTIAL}},
            },
            "responses": {
                "201": _json_body(_WITH_SECRETS, "Added"),
                **_common(400, 401, 404, 409, 415, 503),
            },
        }
    },
    "/api/v1/devices/{id}/credentials/{credential}": {
        "delete": {
            "summary": "Remove a credential (a connection that used it is cut off)",
            "parameters": [
                _ID,
                _NAMESPACE,
                {
                    "name": "credential",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _json_body({"type": "object", "required": ["device"]}, "Removed"),
                **_common(400, 401, 404, 409, 503),
            },
        }
    },
    "/api/v1/devices/{id}/twin": {
        "get": {
            "summary": "The twin: desired and reported state, versions, delta",
            "parameters": [_ID, _NAMESPACE],
            "responses": {"200": _json_body(_ref("Twin"), "The twin"), **_common(400, 401, 404)},
        }
    },
    "/api/v1/devices/{id}/twin/desired": {
        method: {
            "summary": summary,
            "parameters": [_ID, _NAMESPACE],
            "requestBody": _STATE_BODY,
            "responses": {
                "200": _json_body(_ref("Twin"), "The twin after the change"),
                **_common(400, 401, 404, 409, 413, 415, 503),
            },
        }
        for method, summary in (
            ("patch", "Merge into the desired state (RFC 7386); `version`: only if still at it"),
            ("put", "Replace the desired state; `version`: only if still at it"),
        )
    },
    "/api/v1/devices/{id}/commands": {
        "post": {
            "summary": "Queue a command (durably); sent when the device is reachable",
            "parameters": [_ID, _NAMESPACE],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "data": {},
                                "dataBase64": {"type": "string"},
                                "contentType": {"type": "string"},
                                "expiry": {
                                    "description": "Seconds (or 30s, 5m, PT1M); default 60",
                                    "type": ["number", "string"],
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "201": _json_body(_ref("Command"), "Queued (or sent already)"),
                **_common(400, 401, 404, 415, 429, 503),
            },
        },
        "get": {
            "summary": "The device's newest commands, unfinished ones included",
            "parameters": [
                _ID,
                _NAMESPACE,
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                },
            ],
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["items"],
                        "properties": {"items": {"type": "array", "items": _ref("Command")}},
                    },
                    "Commands, newest first",
                ),
                **_common(400, 401, 404, 503),
            },
        },
    },
    "/api/v1/devices/{id}/commands/{command}": {
        "get": {
            "summary": "A command; with `wait`, once it finished or after that long",
            "parameters": [
                _ID,
                _NAMESPACE,
                {"name": "command", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "wait",
                    "in": "query",
                    "description": f"Seconds (or 10s), at most {MAX_WAIT:g}",
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": _json_body(_ref("Command"), "The command"),
                **_common(400, 401, 404, 503),
            },
        }
    },
}
