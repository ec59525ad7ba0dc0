"""Replays: a Broker's history from a start position, delivered again to a Destination.

How this works: a replay is a job (:mod:`headwater.runtime.jobs`) that reads
the Broker's stream with a cursor of its own (``replay/{job id}``, deleted
when it ends) from the start it was given up to the stream's last offset at
the moment it was asked for (events appended later are not part of it), and
delivers each event, one at a time, through a Deliverer with
:data:`REPLAY_DELIVERY`. Each outcome is counted in the job; ``maxFailures``
stops it. Nothing is written back to the stream: history is immutable, and the
Broker's own Triggers keep their cursors.

:func:`start_position` turns the text of a start (``earliest``, ``latest``,
``offset:N``, ``time:RFC3339``: a replay's, a tail's, or a Trigger's
``headwater.dev/start`` annotation) into the log's :class:`~headwater.log.Start`.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Final

from headwater.eventing import Deliverer, DeliverySpec, Sink
from headwater.log import EARLIEST, LATEST, EventLog, LogError, Start, StartKind
from headwater.resources import parse_start
from headwater.runtime.jobs import Job

__all__ = ["READ_BATCH", "REPLAY_DELIVERY", "new_replay", "run_replay", "start_position"]

READ_BATCH: Final = 256
"""Entries one read of a replay (or a tail) asks for."""

REPLAY_DELIVERY: Final = DeliverySpec(
    retry=5, backoff_policy="exponential", backoff_delay=0.2, timeout=10.0
)
"""Replay retries a failing destination a few times (about 12 s of backoff), then
counts the event as failed; an attempt that hangs gives up after 10 s, not the
delivery default of a minute, so a destination that is down costs little per
event (and ``maxFailures`` stops the replay altogether)."""


def start_position(text: str | None) -> Start:
    """The log position a start text names (``latest`` when there is none);
    ``ValueError`` saying what is accepted otherwise."""
    if text is None:
        return LATEST
    kind, value = parse_start(text)
    if kind == "earliest":
        return EARLIEST
    if kind == "offset":
        return Start.at_offset(int(value))  # type: ignore[arg-type]
    if kind == "time":
        return Start.at_time(datetime.fromisoformat(str(value)))
    return LATEST


def first_offset(start: Start, first: int, last: int) -> int | None:
    """The first offset a replay from ``start`` delivers, when known without reading."""
    if start.kind is StartKind.EARLIEST:
        return first
    if start.kind is StartKind.LATEST:
        return last + 1
    if start.kind is StartKind.OFFSET:
        return max(start.offset, first)
    return None  # a time: known once the first entry is read


async def new_replay(
    log: EventLog,
    stream: str,
    start_text: str,
    start: Start,
    destination: str,
    *,
    max_failures: int | None = None,
) -> Job:
    """The job record of a replay of ``stream`` as it is now (not started yet)."""
    info = await log.info(stream)
    first = first_offset(start, info.first_offset, info.last_offset)
    return Job(
        "replay",
        max_failures=max_failures,
        total=None if first is None else max(info.last_offset - first + 1, 0),
        details={
            "stream": stream,
            "start": start_text,
            "destination": destination,
            "untilOffset": info.last_offset,
            "position": (first - 1) if first is not None else info.first_offset - 1,
        },
    )


async def run_replay(log: EventLog, job: Job, start: Start, sink: Sink) -> None:
    """Deliver the job's range of its stream to ``sink``, counting each outcome."""
    stream, until = job.details["stream"], job.details["untilOffset"]
    deliverer = Deliverer(
        sink, REPLAY_DELIVERY, destination=job.details["destination"], name=f"replay {job.id}"
    )
    consumer = f"replay/{job.id}"
    reader = log.reader(stream, consumer, start)
    try:
        while job.details["position"] < until:
            batch = await reader.next_batch(READ_BATCH, timeout=1.0)
            if not batch:
                info = await log.info(stream)
                if info.last_offset <= job.details["position"] or info.first_offset > until:
                    break  # nothing more to replay in range (e.g. retention dropped it)
                continue
            for entry in batch:
                if entry.offset > until:
                    job.details["position"] = until
                    break
                if job.total is None:  # a time start: known from its first event
                    job.total = until - entry.offset + 1
                outcome = await deliverer.deliver(entry.event)
                job.details["position"] = entry.offset
                await reader.ack(entry.offset)
                job.count(outcome)  # may stop the job: maxFailures
        job.total = job.processed  # retention may have taken some: none remain
    finally:
        await reader.close()
        with contextlib.suppress(LogError):
            await log.delete_consumer(stream, consumer)
