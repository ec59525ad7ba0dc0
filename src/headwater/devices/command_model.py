"""A device command as stored and shown, its ids, and the API's reading of one.

The pure part of :mod:`headwater.devices.commands` (the durable queue there):
what a command holds and how it is written in the ``device-commands`` and
``device-command-results`` buckets, command ids (made from the time, or from
an event's time and origin so that a redelivered event is the same command),
and the checks of what the API is given (``data``/``dataBase64``, ``expiry``).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson

from headwater.devices.model import DeviceError, InvalidDevice
from headwater.durations import parse_duration

__all__ = [
    "DEFAULT_EXPIRY",
    "MAX_COMMAND_BYTES",
    "MAX_EXPIRY",
    "MAX_RESPONSE_BYTES",
    "MIN_EXPIRY",
    "Command",
    "Status",
    "TooManyCommands",
    "command_id_for",
    "command_time",
    "cut_response",
    "expiry_seconds",
    "new_command_id",
    "parse_data",
    "parse_seconds",
]

DEFAULT_EXPIRY: Final = 60.0
"""Seconds a command waits for its device and its answer unless told otherwise:
an actuator command an hour late is usually worse than none."""

MIN_EXPIRY: Final = 1.0
MAX_EXPIRY: Final = 7 * 86400.0
"""A week: the longest a command may wait for its device."""

MAX_COMMAND_BYTES: Final = 256 * 1024
"""A command's payload at most: commands are instructions, not firmware images."""

MAX_RESPONSE_BYTES: Final = 256 * 1024
"""An answer kept at most (a longer one is cut, and says so)."""


class Status(enum.StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    ANSWERED = "answered"
    EXPIRED = "expired"
    FAILED = "failed"


FINISHED: Final = frozenset({Status.ANSWERED, Status.EXPIRED, Status.FAILED})


class TooManyCommands(DeviceError):
    """The device has :data:`MAX_PENDING_PER_DEVICE` commands waiting already."""


def new_command_id(now: float) -> str:
    """Milliseconds since the epoch (12 hex digits) and 40 random bits: sorts by age."""
    return f"{int(now * 1000):012x}{secrets.token_hex(5)}"


def command_id_for(when: float, origin: str) -> str:
    """The id of the command an event makes: its time and a hash of its source and id,
    the same every time the same event is delivered."""
    digest = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{int(when * 1000):012x}{digest[:10]}"


def command_time(command_id: str) -> float | None:
    try:
        return int(command_id[:12], 16) / 1000
    except ValueError:
        return None


def _payload_json(data: bytes | None, content_type: str | None) -> dict[str, Any]:
    """A payload for the API: JSON as JSON, text as a string, anything else as base64."""
    if data is None:
        return {}
    media = (content_type or "").partition(";")[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        try:
            return {"data": orjson.loads(data)}
        except orjson.JSONDecodeError:
            pass
    if not media or media.startswith("text/"):
        try:
            return {"data": data.decode("utf-8")}
        except UnicodeDecodeError:
            pass
    return {"dataBase64": base64.b64encode(data).decode("ascii")}


@dataclass(frozen=True, slots=True)
class Command:
    namespace: str
    device: str
    id: str
    data: bytes
    content_type: str | None
    created: float
    expires: float
    status: Status = Status.QUEUED
    attempts: int = 0
    sent_at: float | None = None
    #: The connection it was last sent on (at most once per connection).
    connection: str | None = None
    finished_at: float | None = None
    response: bytes | None = None
    response_type: str | None = None
    #: The device's status code (HTTP-like): 200 unless it said otherwise.
    code: int | None = None
    reason: str | None = None
    #: What made it (an event's ``source``/``id``), to make the same event one command.
    origin: str | None = None
    #: The ``correlationid`` of the event that made it, for its answer's event.
    correlation: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.device}/{self.id}"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def remaining(self, now: float) -> float:
        return self.expires - now

    def stored(self) -> bytes:
        doc: dict[str, Any] = {
            "data": base64.b64encode(self.data).decode("ascii"),
            "contentType": self.content_type,
            "created": self.created,
            "expires": self.expires,
            "status": self.status.value,
            "attempts": self.attempts,
            "sentAt": self.sent_at,
            "connection": self.connection,
            "finishedAt": self.finished_at,
            "responseType": self.response_type,
            "code": self.code,
            "reason": self.reason,
            "origin": self.origin,
            "correlation": self.correlation,
        }
        if self.response is not None:
            doc["response"] = base64.b64encode(self.response).decode("ascii")
        return orjson.dumps(doc)

    @classmethod
    def load(cls, key: str, value: bytes) -> Command:
        namespace, device, command_id = key.split("/")
        doc = orjson.loads(value)
        response = doc.get("response")
        return cls(
            namespace,
            device,
            command_id,
            base64.b64decode(doc.get("data") or ""),
            doc.get("contentType"),
            float(doc["created"]),
            float(doc["expires"]),
            Status(doc.get("status", "queued")),
            int(doc.get("attempts") or 0),
            doc.get("sentAt"),
            doc.get("connection"),
            doc.get("finishedAt"),
            base64.b64decode(response) if response is not None else None,
            doc.get("responseType"),
            doc.get("code"),
            doc.get("reason"),
            doc.get("origin"),
            doc.get("correlation"),
        )

    def to_json(self) -> dict[str, Any]:
        """What the API shows."""
        out: dict[str, Any] = {
            "id": self.id,
            "device": self.device,
            "namespace": self.namespace,
            "status": self.status.value,
            "created": self.created,
            "expires": self.expires,
            "attempts": self.attempts,
            "sentAt": self.sent_at,
            "finishedAt": self.finished_at,
            "contentType": self.content_type,
            **_payload_json(self.data, self.content_type),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.origin is not None:
            out["origin"] = self.origin
        if self.correlation is not None:
            out["correlationId"] = self.correlation
        if self.response is not None or self.code is not None:
            out["response"] = {
                "code": self.code,
                "contentType": self.response_type,
                **_payload_json(self.response, self.response_type),
            }
        return out


def cut_response(payload: bytes) -> bytes:
    return payload[:MAX_RESPONSE_BYTES]


def parse_data(body: Mapping[str, Any]) -> tuple[bytes, str | None]:
    """A command's payload from an API body: ``data`` (JSON or text) or ``dataBase64``."""
    content_type = body.get("contentType")
    if content_type is not None and not isinstance(content_type, str):
        raise InvalidDevice("`contentType` must be a string")
    if "dataBase64" in body:
        if "data" in body:
            raise InvalidDevice("give `data` or `dataBase64`, not both")
        text = body["dataBase64"]
        try:
            raw = base64.b64decode(text, validate=True) if isinstance(text, str) else None
        except ValueError:
            raw = None
        if raw is None:
            raise InvalidDevice("`dataBase64` is not base64")
        return raw, content_type or "application/octet-stream"
    if "data" not in body:
        return b"", content_type
    data = body["data"]
    media = (content_type or "").partition(";")[0].strip().lower()
    if (
        isinstance(data, str)
        and media
        and not (media == "application/json" or media.endswith("+json"))
    ):
        return data.encode("utf-8"), content_type
    return orjson.dumps(data), content_type or "application/json"


def expiry_seconds(value: Any) -> float:
    """``expiry`` from an API body: seconds, or an ISO 8601 / Go-style duration string."""
    if value is None:
        return DEFAULT_EXPIRY
    if isinstance(value, bool):
        raise InvalidDevice("`expiry` is a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = parse_seconds(value)
    else:
        raise InvalidDevice("`expiry` is a number of seconds")
    if not (math.isfinite(seconds) and MIN_EXPIRY <= seconds <= MAX_EXPIRY):
        raise InvalidDevice(f"`expiry` must be {MIN_EXPIRY:g} to {MAX_EXPIRY:g} seconds")
    return seconds


_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_seconds(text: str) -> float:
    """``10``, ``10s``, ``1.5m``, ``2h``, ``500ms`` or ISO 8601 (``PT10S``) -> seconds."""
    value = text.strip()
    if value.upper().startswith("P"):
        try:
            return float(parse_duration(value.upper()))
        except ValueError as exc:
            raise InvalidDevice(f"{text!r} is not a duration: {exc}") from exc
    for unit in ("ms", "s", "m", "h", "d"):
        if value.endswith(unit):
            number = value[: -len(unit)]
            break
    else:
        unit, number = "s", value
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise InvalidDevice(
            f"{text!r} is not a duration (seconds, or like 10s, 1.5m, 2h, PT10S)"
        ) from None
