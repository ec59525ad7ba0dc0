"""Background jobs of the admin API (replays, bulk re-drives): progress, cancel, fail fast.

How this works: a job is a task the API starts for work that can take long
(each event it delivers may be retried with backoff) and a record of how it
goes: events ``delivered`` and ``failed``, ``total`` and ``remaining`` when
known, and a ``state``: ``running``, then ``done``, ``failed`` (an error, or
``maxFailures`` failed events: fail fast) or ``cancelled`` (``POST
.../{id}/cancel``, which the CLI also sends on Ctrl-C). A client polls the
record; finished records are kept, the oldest forgotten past
:data:`MAX_FINISHED_JOBS`, so that whoever started a job can see how it
ended. Every running job is cancelled when the API shuts down.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from headwater.api.app import error, json_response, read_json
from headwater.eventing import Outcome

log = logging.getLogger(__name__)

MAX_FINISHED_JOBS: Final = 64
"""Finished jobs of one kind kept for status queries; the oldest go first."""


class JobState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TooManyFailures(Exception):
    """A job reached its ``maxFailures``."""


@dataclass
class Job:
    """The record of one job; ``details`` are the fields of its kind (a replay's stream...)."""

    kind: str
    max_failures: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    total: int | None = None
    """Events this job handles, once known."""
    state: JobState = JobState.RUNNING
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def processed(self) -> int:
        return self.delivered + self.failed + self.skipped

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else max(self.total - self.processed, 0)

    def count(self, outcome: Outcome) -> None:
        """Count an event's outcome; raises :class:`TooManyFailures` at ``max_failures``."""
        if outcome is Outcome.DELIVERED:
            self.delivered += 1
            return
        self.failed += 1
        if self.max_failures is not None and self.failed >= self.max_failures:
            raise TooManyFailures(
                f"stopped after {self.failed} failed event(s) (maxFailures {self.max_failures})"
            )

    def status(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state.value,
            "done": self.state is not JobState.RUNNING,
            "delivered": self.delivered,
            "failed": self.failed,
            "skipped": self.skipped,
            "total": self.total,
            "remaining": self.remaining,
            "maxFailures": self.max_failures,
            "error": self.error,
            "started": _iso(self.started),
            "finished": _iso(self.finished) if self.finished is not None else None,
            **self.details,
        }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


class Jobs:
    """The jobs of one kind: started, looked up, cancelled, forgotten when old."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def start(self, job: Job, work: Coroutine[Any, Any, None]) -> Job:
        finished = [k for k, j in self._jobs.items() if j.state is not JobState.RUNNING]
        while len(finished) >= MAX_FINISHED_JOBS:
            del self._jobs[finished.pop(0)]
        self._jobs[job.id] = job
        # Owned by this registry: cancelled by cancel() or at shutdown (close()).
        job.task = asyncio.create_task(self._run(job, work), name=f"{job.kind}:{job.id}")
        return job

    @staticmethod
    async def _run(job: Job, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            job.state = JobState.CANCELLED
        except TooManyFailures as exc:
            job.state, job.error = JobState.FAILED, str(exc)
        except Exception as exc:
            log.warning("%s %s failed: %s", job.kind, job.id, exc)
            job.state, job.error = JobState.FAILED, str(exc) or type(exc).__name__
        else:
            job.state = JobState.DONE
        finally:
            job.finished = time.time()

    def get(self, id: str) -> Job | None:
        return self._jobs.get(id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    async def cancel(self, job: Job) -> None:
        task = job.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    async def close(self) -> None:
        for job in self.all():
            await self.cancel(job)


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


def add_routes(app: web.Application, prefix: str, key: web.AppKey[Jobs]) -> None:
    """``GET {prefix}``, ``GET {prefix}/{id}`` and ``POST {prefix}/{id}/cancel``."""
    app[key] = Jobs()

    async def close(app: web.Application) -> None:
        await app[key].close()

    def find(request: web.Request) -> Job | web.Response:
        job = request.app[key].get(request.match_info["id"])
        return job if job is not None else error(404, f"no job {request.match_info['id']!r}")

    async def listing(request: web.Request) -> web.Response:
        return json_response({"items": [job.status() for job in request.app[key].all()]})

    async def one(request: web.Request) -> web.Response:
        job = find(request)
        return job if isinstance(job, web.Response) else json_response(job.status())

    async def cancel(request: web.Request) -> web.Response:
        job = find(request)
        if isinstance(job, web.Response):
            return job
        await request.app[key].cancel(job)
        return json_response(job.status())

    app.on_shutdown.append(close)
    app.router.add_get(prefix, listing)
    app.router.add_get(prefix + "/{id}", one)
    app.router.add_post(prefix + "/{id}/cancel", cancel)
