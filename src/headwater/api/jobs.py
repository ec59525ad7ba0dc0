"""Background jobs in the admin API: list, look at one, cancel (``GET``/``POST`` routes).

How this works: the jobs themselves (replays, bulk re-drives) and their
records are the runtime's (:mod:`headwater.runtime.jobs`); these routes show a
kind's records and cancel one (``POST .../{id}/cancel``, which the CLI also
sends on Ctrl-C). :func:`json_object` and :func:`max_failures` read what a
job is started with.
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web

from headwater.api.http import error, json_response, read_json
from headwater.runtime.jobs import Job, Jobs

MAX_REQUEST_BYTES: Final = 64 * 1024
"""The largest body a job is started with, however it is framed (a start, a
destination and a few options are a few lines)."""


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The JSON object a job is started with, or the 400 answer."""
    try:
        body = await read_json(request, MAX_REQUEST_BYTES)
    except ValueError:
        return error(400, "send a JSON object")
    if not isinstance(body, dict):
        return error(400, "send a JSON object")
    return body


def max_failures(body: dict[str, Any]) -> int | None:
    """``maxFailures`` of a request body: a positive integer or absent (ValueError)."""
    value = body.get("maxFailures")
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise ValueError("`maxFailures` must be a positive integer")
    return value


def add_job_routes(app: web.Application, prefix: str, jobs: Jobs) -> None:
    """``GET {prefix}``, ``GET {prefix}/{id}`` and ``POST {prefix}/{id}/cancel``."""

    def find(request: web.Request) -> Job | web.Response:
        job = jobs.get(request.match_info["id"])
        return job if job is not None else error(404, f"no job {request.match_info['id']!r}")

    async def listing(request: web.Request) -> web.Response:
        return json_response({"items": [job.status() for job in jobs.all()]})

    async def one(request: web.Request) -> web.Response:
        job = find(request)
        return job if isinstance(job, web.Response) else json_response(job.status())

    async def cancel(request: web.Request) -> web.Response:
        job = find(request)
        if isinstance(job, web.Response):
            return job
        await jobs.cancel(job)
        return json_response(job.status())

    app.router.add_get(prefix, listing)
    app.router.add_get(prefix + "/{id}", one)
    app.router.add_post(prefix + "/{id}/cancel", cancel)
