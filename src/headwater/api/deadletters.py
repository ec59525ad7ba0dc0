"""Dead letters in the admin API: list, look at one, re-drive one or many.

How this works: the runtime records every event a Trigger or Subscription
gave up on in a durable stream of the log (see
:class:`headwater.runtime.deadletters.DeadLetters`); a record's ``id`` is its
offset there. These handlers read that stream and answer JSON (a listing may
keep to one origin: ``?origin=Trigger/default/too-hot``); a re-drive sends
the original event (the record's own extensions removed) once more through
the origin's current delivery pipeline and answers with the outcome. A bulk
re-drive (``POST /api/v1/redrives``: every record, one origin's, or given
ids, among the newest :data:`~headwater.runtime.deadletters.DEAD_LETTER_SCAN`
records, those not re-driven and delivered already) is a job of the
runtime's (:func:`~headwater.runtime.deadletters.redrive_all`): oldest
first, one at a time, with progress and cancel (:mod:`headwater.api.jobs`);
a record whose origin is not running is skipped and counted.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Final

from aiohttp import web

from headwater.api.http import RUNTIME_KEY, error, json_response
from headwater.api.jobs import add_job_routes, json_object, max_failures
from headwater.api.resources import UnknownKind, kind_of
from headwater.cloudevents.json import to_json_value
from headwater.eventing import Outcome
from headwater.log import LogError
from headwater.runtime import Runtime
from headwater.runtime.deadletters import (
    DATA_OMITTED_EXTENSION,
    DEAD_LETTER_SCAN,
    ERROR_EXTENSION,
    FAILED_AT_EXTENSION,
    DeadLetter,
    RedriveRefused,
    redrive_all,
)
from headwater.runtime.jobs import Job

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


def _origin(value: Any) -> tuple[str, str, str]:
    """A Trigger or Subscription named as ``Kind/namespace/name`` or a Key object."""
    if isinstance(value, dict):
        parts = [value.get("kind"), value.get("namespace", "default"), value.get("name")]
    elif isinstance(value, str):
        parts = value.split("/", 2)
    else:
        parts = []
    if len(parts) != 3 or not all(isinstance(p, str) and p for p in parts):
        raise ValueError("`origin` is Kind/namespace/name, e.g. Trigger/default/too-hot")
    try:
        kind = kind_of(parts[0])
    except UnknownKind as exc:
        raise ValueError(str(exc)) from exc
    if kind not in ("Trigger", "Subscription"):
        raise ValueError(f"dead letters come from a Trigger or a Subscription, not a {kind}")
    return (kind, parts[1], parts[2])


async def list_dead_letters(request: web.Request) -> web.Response:
    try:
        limit = _int_param(request.query.get("limit"), "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
        before = _int_param(request.query.get("before"), "before", 1, MAX_ID)
        origin = _origin(request.query["origin"]) if "origin" in request.query else None
    except ValueError as exc:
        return error(400, str(exc))
    store = request.app[RUNTIME_KEY].dead_letters
    try:
        first, last = await store.info()
        letters = await store.list(limit, before, origin)
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


async def start_redrive(request: web.Request) -> web.Response:
    """Re-drive many as a job: ``{"all": true}``, ``{"origin": ...}`` or ``{"ids": [...]}``."""
    body = await json_object(request)
    if isinstance(body, web.Response):
        return body
    selectors = [k for k in ("all", "origin", "ids") if body.get(k) not in (None, False)]
    try:
        if len(selectors) != 1:
            raise ValueError('choose what to re-drive: one of "all": true, "origin" or "ids"')
        limit = max_failures(body)
        origin = _origin(body["origin"]) if "origin" in selectors else None
        ids = body.get("ids") if "ids" in selectors else None
        if ids is not None and not (
            isinstance(ids, list) and ids and all(type(i) is int and 1 <= i <= MAX_ID for i in ids)
        ):
            raise ValueError("`ids` is a list of dead letter ids")
        if body.get("all") not in (None, True, False):
            raise ValueError("`all` is true or false")
    except ValueError as exc:
        return error(400, str(exc))
    runtime = request.app[RUNTIME_KEY]
    store = runtime.dead_letters
    try:
        if ids is not None:
            found = [await store.get(i) for i in sorted(set(ids))]
            letters = [letter for letter in found if letter is not None]
        else:
            letters = await store.list(DEAD_LETTER_SCAN, origin=origin)
    except LogError as exc:
        return error(503, f"the event log is unavailable: {exc}")
    waiting = sorted(
        (letter for letter in letters if letter.redriven != Outcome.DELIVERED.value),
        key=lambda letter: letter.id,
    )
    unknown = len(set(ids)) - len(letters) if ids is not None else 0
    job = Job(
        "redrive",
        max_failures=limit,
        skipped=unknown,
        total=len(waiting) + unknown,
        details={"selector": selectors[0], "origin": "/".join(origin) if origin else None},
    )
    if unknown:
        job.details["lastSkipped"] = f"{unknown} of the ids are no dead letter (any more)"
    runtime.redrives.start(job, redrive_all(store, job, waiting))
    return json_response(job.status(), 202)


def add_routes(app: web.Application, runtime: Runtime) -> None:
    app.router.add_post("/api/v1/redrives", start_redrive)
    add_job_routes(app, "/api/v1/redrives", runtime.redrives)
    app.router.add_get("/api/v1/deadletters", list_dead_letters)
    app.router.add_get("/api/v1/deadletters/{id}", get_dead_letter)
    app.router.add_post("/api/v1/deadletters/{id}/redrive", redrive)
