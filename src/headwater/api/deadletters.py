"""Dead letters in the admin API: list, look at one, re-drive.

How this works: the runtime records every event a Trigger or Subscription
gave up on in a durable stream of the log (see
:class:`headwater.runtime.runtime.DeadLetters`); a record's ``id`` is its
offset there. These handlers read that stream and answer JSON; a re-drive
sends the original event (the record's own extensions removed) once more
through the origin's current delivery pipeline and answers with the outcome.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from aiohttp import web

from headwater.api.app import RUNTIME_KEY, error, json_response
from headwater.cloudevents.json import to_json_value
from headwater.eventing import Outcome
from headwater.log import LogError
from headwater.runtime.runtime import (
    DATA_OMITTED_EXTENSION,
    ERROR_EXTENSION,
    FAILED_AT_EXTENSION,
    DeadLetter,
    RedriveRefused,
)

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
"""Records per listing at most: a page the dashboard can render at once."""

MAX_ID: Final = 2**63 - 1
"""Offsets are SQLite integers; larger ids cannot exist."""


def _error_text(data: str | None) -> str | None:
    """``knativeerrordata`` (base64) as text, when it decodes to UTF-8."""
    if not data:
        return None
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


def dead_letter_json(letter: DeadLetter) -> dict[str, Any]:
    event = letter.event
    origin = letter.origin
    code = event.get("knativeerrorcode")
    data = event.get("knativeerrordata")
    return {
        "id": letter.id,
        "origin": (
            {"kind": origin[0], "namespace": origin[1], "name": origin[2]} if origin else None
        ),
        "destination": event.get("knativeerrordest"),
        "code": int(code) if isinstance(code, str) and code.isdigit() else None,
        "errorData": data,
        "errorText": _error_text(data) if isinstance(data, str) else None,
        "error": event.get(ERROR_EXTENSION),
        "failedAt": event.get(FAILED_AT_EXTENSION),
        "dataOmitted": event.get(DATA_OMITTED_EXTENSION) == "true",
        "redriven": letter.redriven,
        "event": to_json_value(letter.original()),
    }


def _int_param(text: str | None, name: str, low: int, high: int) -> int | None:
    """An integer query or path value in ``low..high``; ValueError says what is wrong."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"`{name}` must be an integer from {low} to {high}, not {text!r}")
    return int(text)


async def list_dead_letters(request: web.Request) -> web.Response:
    try:
        limit = _int_param(request.query.get("limit"), "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
        before = _int_param(request.query.get("before"), "before", 1, MAX_ID)
    except ValueError as exc:
        return error(400, str(exc))
    store = request.app[RUNTIME_KEY].dead_letters
    try:
        first, last = await store.info()
        letters = await store.list(limit, before)
    except LogError as exc:
        return error(503, f"the event log is unavailable: {exc}")
    return json_response(
        {
            "items": [dead_letter_json(letter) for letter in letters],
            "firstOffset": first,
            "lastOffset": last,
        }
    )


def _id(request: web.Request) -> int:
    value = _int_param(request.match_info["id"], "id", 1, MAX_ID)
    assert value is not None
    return value


async def get_dead_letter(request: web.Request) -> web.Response:
    try:
        id = _id(request)
    except ValueError as exc:
        return error(400, str(exc))
    try:
        letter = await request.app[RUNTIME_KEY].dead_letters.get(id)
    except LogError as exc:
        return error(503, f"the event log is unavailable: {exc}")
    if letter is None:
        return error(404, f"no dead letter {id}")
    return json_response(dead_letter_json(letter))


async def redrive(request: web.Request) -> web.Response:
    try:
        id = _id(request)
    except ValueError as exc:
        return error(400, str(exc))
    try:
        letter, outcome, dispatcher = await request.app[RUNTIME_KEY].dead_letters.redrive(id)
    except LookupError as exc:
        return error(404, str(exc))
    except RedriveRefused as exc:
        return error(409, str(exc))
    except LogError as exc:
        return error(503, f"the event log is unavailable: {exc}")
    return json_response(
        {
            "id": id,
            "outcome": outcome.value,
            "destination": dispatcher.deliverer.destination,
            "lastError": dispatcher.stats.last_error if outcome is not Outcome.DELIVERED else None,
            "deadLetter": dead_letter_json(letter),
        }
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/deadletters", list_dead_letters)
    app.router.add_get("/api/v1/deadletters/{id}", get_dead_letter)
    app.router.add_post("/api/v1/deadletters/{id}/redrive", redrive)
