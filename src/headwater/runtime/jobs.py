"""Background jobs (replays, bulk re-drives): progress, cancel, fail fast.

How this works: a job is a task started for work that can take long (each
event it delivers may be retried with backoff) and a record of how it goes:
events ``delivered``, ``failed`` and ``skipped``, ``total`` and ``remaining``
when known, and a ``state``: ``running``, then ``done``, ``failed`` (an
error, or ``maxFailures`` failed events: fail fast) or ``cancelled``. A
client polls the record; finished records are kept, the oldest forgotten
past :data:`MAX_FINISHED_JOBS`, so that whoever started a job can see how it
ended. The runtime owns one :class:`Jobs` per kind and cancels every running
job when it closes. The admin API serves them (:mod:`headwater.api.jobs`).
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

from headwater.eventing import Outcome

__all__ = ["MAX_FINISHED_JOBS", "Job", "JobState", "Jobs", "TooManyFailures"]

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
