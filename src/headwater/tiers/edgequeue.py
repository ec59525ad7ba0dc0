"""The cloud side of the downlink: one durable queue per edge, pulled by that edge.

How this works: an :class:`EdgeQueue` is a stream of the cloud's event log
(``edge/<namespace>/<name>``) with one durable consumer. It is a
:class:`~headwater.eventing.Sink`: a Trigger on a cloud Broker delivers
commands to it, and a delivery ends when the command is durably appended to
the queue (the Trigger's cursor moves on then, as for any Broker). The edge,
which accepts no inbound connections, pulls: :meth:`EdgeQueue.pull` is one
long poll of the edge's outbound HTTP connection (``POST /edges/<ns>/<name>``,
see :mod:`headwater.api.edges`). It answers at once with what is queued, or
waits up to ``wait`` seconds for the first command to arrive.

Acknowledgement is the cursor the edge sends back: each answer carries the
offset of its last command (``Headwater-Last-Offset``), and the edge's next
pull says ``ack=<that offset>`` once it has appended every command of the
answer to its own log, durably. Only then does the queue acknowledge them in
the cloud's log. An answer that got lost (the link was cut while it was on the
way, or the edge was killed before its append) is simply never acknowledged:
the next pull, from that edge or its restart, gets the same commands again
(at least once). The queue remembers what it handed out and not yet had
acknowledged (``outstanding``), and a restarted cloud reads it again from the
durable position, so nothing depends on one TCP connection surviving.

One edge pulls at a time: a new pull supersedes one still waiting (an edge
whose old connection died behind a NAT without either side noticing comes
back on a new one), and the old one answers ``204`` at once.

Commands that carry an ``expiresat`` in the past (:mod:`headwater.eventing.expiry`)
are not queued, and are dropped, counted, if they expire while queued: an
edge back after an hour's outage does not open a vent it was told to open an
hour ago.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.eventing.expiry import expired
from headwater.log import (
    EARLIEST,
    Entry,
    EventLog,
    EventTooLarge,
    LogClosed,
    LogError,
    LogFull,
    LogUnavailable,
    Reader,
    StreamConfig,
)
from headwater.tiers.limits import DEFAULT_PULL_EVENTS, DEFAULT_WAIT, MAX_PULL_EVENTS, MAX_WAIT

__all__ = [
    "DEFAULT_PULL_EVENTS",
    "DEFAULT_WAIT",
    "MAX_PULL_EVENTS",
    "MAX_WAIT",
    "EdgeQueue",
    "Pull",
]

log = logging.getLogger(__name__)

CONSUMER: Final = "edge"
"""The name of the queue's one durable consumer (the edge's position)."""


CONNECTED_GRACE: Final = 10.0
"""An edge counts as connected while a pull waits, and this many seconds after one ended."""


class Pull(NamedTuple):
    """One answer to an edge: its commands, and the offset to acknowledge once they are stored."""

    events: list[CloudEvent]
    last_offset: int | None
    """None when the answer holds nothing to acknowledge."""


@dataclass(slots=True, eq=False)
class EdgeStats:
    queued: int = 0
    delivered: int = 0
    expired: int = 0
    pulls: int = 0
    resent: int = 0
    superseded: int = 0
    waiting: int = 0
    last_pull_at: float | None = None

    def snapshot(self, backlog: int | None, outstanding: int) -> dict[str, Any]:
        connected = self.waiting > 0 or (
            self.last_pull_at is not None and time.time() - self.last_pull_at < CONNECTED_GRACE
        )
        last = (
            datetime.fromtimestamp(self.last_pull_at).astimezone().isoformat(timespec="seconds")
            if self.last_pull_at is not None
            else None
        )
        return {
            "connected": connected,
            "lastPullAt": last,
            "queued": self.queued,
            "backlog": backlog,
            "outstanding": outstanding,
            "delivered": self.delivered,
            "expired": self.expired,
            "pulls": self.pulls,
            "resent": self.resent,
        }


class EdgeQueue:
    """The durable queue of one edge (see the module docstring); ``start`` before use."""

    def __init__(self, log: EventLog, stream: str, retention: StreamConfig) -> None:
        self.log = log
        self.stream = stream
        self.retention = retention
        self.stats = EdgeStats()
        self._reader: Reader | None = None
        self._outstanding: collections.deque[Entry] = collections.deque()
        self._lock = asyncio.Lock()
        self._generation = 0
        self._superseded = asyncio.Event()
        self._closed = False
        self._backlog: int | None = None

    async def start(self) -> None:
        await self.log.create_stream(self.stream, self.retention)
        self._reader = self.log.reader(self.stream, CONSUMER, EARLIEST)
        self._closed = False

    def wake(self) -> None:
        """Answer a waiting pull now, with what it has (nothing, mostly)."""
        self._superseded.set()

    async def stop(self) -> None:
        """Answer waiting pulls at once and close the cursor (unacknowledged commands stay)."""
        self._closed = True
        self._superseded.set()
        async with self._lock:
            reader, self._reader = self._reader, None
            self._outstanding.clear()
            if reader is not None:
                with contextlib.suppress(LogError):
                    await reader.close()

    # -- the cloud's side: queueing ----------------------------------------------------

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        """Queue a command durably (a Trigger's delivery); an expired one is dropped."""
        if expired(event):
            self.stats.expired += 1
            return None
        try:
            await self.log.append(self.stream, [event])
        except EventTooLarge as exc:
            raise DeliveryError(413, False, reason=str(exc)) from exc
        except LogFull as exc:
            # 507 Insufficient Storage (RFC 4918 11.5), as a Broker answers: retried.
            raise DeliveryError(507, True, reason=f"edge queue {self.stream}: {exc}") from exc
        except (LogUnavailable, LogClosed) as exc:
            raise DeliveryError(503, True, reason=f"edge queue {self.stream}: {exc}") from exc
        self.stats.queued += 1
        return None

    # -- the edge's side: pulling ------------------------------------------------------

    async def pull(self, ack: int | None, max_events: int, wait: float) -> Pull:
        """Acknowledge up to ``ack``, then answer with what is queued (waiting up to ``wait`` s).

        Raises :class:`~headwater.log.LogUnavailable` when the log cannot be read
        (the edge retries), ``LogClosed`` when the queue is stopping.
        """
        max_events = max(1, min(max_events, MAX_PULL_EVENTS))
        wait = max(0.0, min(wait, MAX_WAIT))
        self._generation += 1
        generation = self._generation
        # A pull still waiting belongs to a connection this one replaces.
        self._superseded.set()
        self._superseded = superseded = asyncio.Event()
        stats = self.stats
        stats.waiting += 1
        try:
            async with self._lock:
                if generation != self._generation or self._closed:
                    stats.superseded += 1
                    return Pull([], None)
                reader = self._reader
                if reader is None:
                    raise LogClosed(f"edge queue {self.stream} is stopped")
                if ack is not None:
                    await self._acknowledge(reader, ack)
                await self._prune(reader, self._outstanding)
                if self._outstanding:
                    # Handed out before and not acknowledged: that answer never
                    # arrived (or its commands were never stored); send them again.
                    entries = list(self._outstanding)[:max_events]
                    stats.resent += len(entries)
                    return _answer(entries)
                entries = await self._next(reader, max_events, wait, superseded)
                self._outstanding.extend(entries)
                return _answer(entries)
        finally:
            stats.waiting -= 1
            stats.pulls += 1
            stats.last_pull_at = time.time()

    async def _acknowledge(self, reader: Reader, ack: int) -> None:
        outstanding = self._outstanding
        while outstanding and outstanding[0].offset <= ack:
            entry = outstanding.popleft()
            await reader.ack(entry.offset)
            self.stats.delivered += 1

    async def _next(
        self, reader: Reader, max_events: int, wait: float, superseded: asyncio.Event
    ) -> list[Entry]:
        """New entries, waiting until one comes, ``wait`` passes or a newer pull arrives."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            read = asyncio.ensure_future(reader.next_batch(max_events, timeout=wait))
            stop = asyncio.ensure_future(superseded.wait())
            try:
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not read.done():
                    read.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
            if read.cancelled():
                return []
            entries = collections.deque(read.result())  # raises what the read raised
            if not entries:
                return []
            await self._prune(reader, entries)
            wait = deadline - loop.time()
            if entries or wait <= 0 or superseded.is_set():
                return list(entries)

    async def _prune(self, reader: Reader, entries: collections.deque[Entry]) -> None:
        """Drop expired commands from ``entries``, acknowledging each at once (the
        low-water mark still waits for what is outstanding below it)."""
        now = time.time()
        if not any(expired(entry.event, now) for entry in entries):
            return
        fresh = [entry for entry in entries if not expired(entry.event, now)]
        for entry in entries:
            if expired(entry.event, now):
                self.stats.expired += 1
                await reader.ack(entry.offset)
        entries.clear()
        entries.extend(fresh)

    async def refresh(self) -> None:
        """The backlog (commands not yet acknowledged by the edge), for status."""
        try:
            info = await self.log.info(self.stream)
            self._backlog = info.consumer(CONSUMER).lag
        except (LogError, KeyError):
            pass

    def status(self) -> dict[str, Any]:
        return {"stream": self.stream, **self.stats.snapshot(self._backlog, len(self._outstanding))}


def _answer(entries: Sequence[Entry]) -> Pull:
    if not entries:
        return Pull([], None)
    return Pull([entry.event for entry in entries], entries[-1].offset)
