"""The uplink: store-and-forward from a local Broker's stream to a remote CloudEvents receiver.

How this works: an :class:`Uplink` reads its Broker's stream through a durable
consumer of the event log, exactly as a Trigger does, and sends what its
filter matches to a remote receiver (a cloud Headwater's Broker ingress, a
Knative Broker, any CloudEvents HTTP endpoint). An event counts as sent only
when the receiver answered ``2xx`` to the request holding it; only then is its
offset acknowledged, and the log turns acknowledgements into a durable
low-water mark, so a crash, a restart or a cut link resends from the oldest
event not yet accepted: at least once, never skipped. The log *is* the
store-and-forward buffer; nothing is kept in memory that the log does not
also hold.

**Lanes keep order.** Events are spread over ``lanes`` by
:func:`~headwater.tiers._policy.partition_key` (``partitionkey``, else
source and subject: one device), and each lane has one request in flight at
a time, so the events of one key arrive in the order they were appended
(each request is retried until it succeeds before the next one of its lane
starts). Different lanes proceed in parallel, which is what fills a link
whose round trip is long. ``ordering: unordered`` spreads events over the
lanes in turn instead.

**Batches.** A lane sends what it holds in one request: up to
``max_batch_events`` and ``max_batch_bytes`` (before compression) in the
CloudEvents JSON batch format, gzipped, when the receiver takes that; one
event per request in binary mode when it does not (a Knative Broker's
ingress). While a request is under way the next batch fills (Nagle's rule),
so batches grow with the round trip and the backlog by themselves; a lane
that is idle waits ``linger`` for company before sending a small batch, which
is what keeps bytes per event low at a live rate. ``format: auto`` asks the
receiver first (``OPTIONS``, see :mod:`headwater.tiers._remote`).

**Failures.** Connectivity failures (refused, reset, DNS, timeouts, and
answers such as ``5xx``, ``429``, ``401``) are retried forever with capped
exponential backoff and jitter (:func:`~headwater.tiers._policy.new_backoff`);
when one lane gets through after the link was down, the others stop waiting
and go too. A receiver that refuses content (``400``, ``413``) has a batch
split in halves until the one event it refuses is found: that event alone is
handed to ``on_refused`` (the runtime records it as a dead letter, with the
reason), and the rest go on. Before an event is called refused it is tried
in the next plainer form (uncompressed, then alone in binary mode), so a
receiver that does not take batches or gzip never makes good events dead;
only a refusal of that form too makes the event refused (a connectivity
failure of the trial is retried like any other).

**Backlog.** The backlog is bounded by the Broker stream's retention, not by
the uplink: when retention removes events the uplink never sent, they are
counted in ``dropped_unsent`` and logged once a minute; ``status()`` shows
the backlog (events, estimated bytes, the age of the oldest unsent event)
and the send rate, refreshed every second.

**Catch-up.** After an outage the backlog drains in full batches over every
lane: the link is shared by TCP between the uplink's ``lanes`` connections
and whatever else uses it, and ``max_bytes_per_second`` caps the uplink's
share when other traffic must keep room. The CPU work of a catch-up is
reading the log (a batch of entries per query), encoding each event once
(orjson) and gzip, which runs on a worker thread for large bodies (zlib
releases the GIL): the event loop that also serves devices is never blocked
for long. Reading stops while ``max_buffered`` events are held (backpressure
into the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from headwater import tracing
from headwater.backoff import Backoff
from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError
from headwater.eventing.expiry import expired
from headwater.eventing.filters import MATCH_ALL, EventFilter
from headwater.log import LATEST, Entry, EventLog, LogError, LogUnavailable, Reader, Start
from headwater.log.acks import AckBatcher
from headwater.logs import Throttle
from headwater.tiers._lanes import Item, Lane, oldest_unsent_age
from headwater.tiers._policy import Verdict, new_backoff, next_wait, partition_key
from headwater.tiers._remote import Answer, Remote
from headwater.tiers._uplink_status import SendRate, UplinkStats, at_risk, now_text
from headwater.tiers.limits import DEFAULT_MAX_BATCH_BYTES, DEFAULT_MAX_BATCH_EVENTS
from headwater.tracing.flows import Hop, hop_batch

__all__ = [
    "DEFAULT_LANES",
    "DEFAULT_LINGER",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_EVENTS",
    "Uplink",
    "UplinkStats",
]

log = logging.getLogger(__name__)

Ordering = Literal["ordered", "unordered"]
Refused = Callable[[CloudEvent, DeliveryError], Awaitable[None]]
"""``on_refused(event, error)``: keep an event the receiver refused (raising: try later)."""


MIN_BATCH_BYTES: Final = 16 * 1024
"""The lowest the batch byte limit is lowered to after 413 answers."""

DEFAULT_LINGER: Final = 0.1
"""Seconds an idle lane waits for more events before sending a batch that is
not full. At 500 events/s over two lanes it makes batches of about 25 events
instead of single ones: gzipped, a reading then costs some 47 bytes of body
instead of 277 for one alone (and one set of HTTP headers per batch, not per
reading), for a tenth of a second of latency on a link to another tier."""

DEFAULT_LANES: Final = 4
"""Requests in flight at once when batching. Each batch waits for the receiver's
durable append before its lane sends the next, so lanes are what keeps a long
link busy during a catch-up (the cut-link test's 60 s outage drains through a
cloud Headwater at over 10,000 events/s). Fewer lanes make fuller batches at a
live rate: two used about a fifth fewer bytes per reading on the wire in
``benchmarks/uplink.py``, for half the requests in flight on a long link."""

DEFAULT_BINARY_LANES: Final = 32
"""Requests in flight at once when sending one event per request (binary or
structured mode): each event then costs a round trip of its lane."""

READ_BATCH: Final = 1000
"""Entries read from the log per query."""

TAKE_CHUNK: Final = 100
"""Entries filtered, encoded and put on lanes per pass of the event loop (about
a millisecond of work): what a catch-up holds the loop for at a time."""

POLL_TIMEOUT: Final = 1.0
"""How long one read waits for new entries; it returns early when some arrive."""

STALE_AFTER: Final = 5.0
"""Seconds a request must have waited, while one sent after it was answered,
before it is abandoned as lost: far longer than a batch takes on a working link
(a gzipped batch of a thousand readings is about 30 KB, a quarter of a second
at 1 Mbit/s), shorter than the kernel's 10 s to give up on a dead connection."""

ACK_INTERVAL: Final = 0.1
"""Seconds between hand-overs of acknowledgements to the log. A catch-up accepts
tens of thousands of events a second, and each hand-over can be a commit of
its own (an fsync, competing with the devices' appends for the disk); ten a
second keep that small, and a crash then sends at most a tenth of a second of
accepted events again."""

STATS_INTERVAL: Final = 1.0
"""Seconds between refreshes of the backlog figures from the log."""

LOG_RETRY_DELAY: Final = (0.05, 2.0)
"""Backoff bounds (seconds) while the local log is unavailable."""


class Uplink:
    """Sends the matching events of one stream consumer to a :class:`Remote`, until cancelled."""

    def __init__(
        self,
        *,
        log: EventLog,
        stream: str,
        consumer: str,
        remote: Remote,
        on_refused: Refused,
        event_filter: EventFilter = MATCH_ALL,
        start: Start = LATEST,
        ordering: Ordering = "ordered",
        lanes: int | None = None,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        linger: float = DEFAULT_LINGER,
        max_bytes_per_second: float | None = None,
        backoff: tuple[float, float] | None = None,
        name: str | None = None,
    ) -> None:
        if ordering not in ("ordered", "unordered"):
            raise ValueError(f"ordering must be 'ordered' or 'unordered', not {ordering!r}")
        if lanes is not None and lanes < 1:
            raise ValueError(f"lanes must be at least 1, not {lanes}")
        if max_batch_events < 1 or max_batch_bytes < 1:
            raise ValueError("batch limits must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        if max_bytes_per_second is not None and max_bytes_per_second <= 0:
            raise ValueError("max_bytes_per_second must be positive")
        self.log = log
        self.stream = stream
        self.consumer = consumer
        self.remote = remote
        self.name = name or consumer
        self.filter = event_filter
        self.start = start
        self.ordering: Ordering = ordering
        self._lanes_wanted = lanes
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes
        self.linger = linger
        self.max_bytes_per_second = max_bytes_per_second
        self._backoff = backoff
        new_backoff(backoff)  # validate now, not at the first failure
        self._on_refused = on_refused
        self.stats = UplinkStats()
        self._throttle = Throttle(logging.getLogger(__name__))
        self._lanes: list[Lane] = []
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._behind = False
        self._acks = AckBatcher(self.name, ACK_INTERVAL)
        self._link_up = asyncio.Event()
        self._probe_lock = asyncio.Lock()
        self._trial_lock = asyncio.Lock()
        self._requests: dict[asyncio.Future[Answer], float] = {}
        self._ready = asyncio.Event()
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._read_high: int | None = None
        self._counted_dropped = 0
        self._rate = SendRate()
        self._round_robin = itertools.count()
        # The token bucket of max_bytes_per_second: bytes that may go now.
        self._allowance = 0.0
        self._allowance_at = 0.0

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def lanes(self) -> int:
        if self._lanes_wanted is not None:
            return self._lanes_wanted
        return DEFAULT_LANES if self.remote.batches else DEFAULT_BINARY_LANES

    @property
    def max_buffered(self) -> int:
        """Events held in memory at most (read, not yet accepted); the log holds the rest."""
        per_lane = self.max_batch_events if self.remote.batches else 1
        return max(READ_BATCH, 2 * self.lanes * per_lane)

    async def wait_ready(self) -> None:
        """Wait until the cursor exists (so a ``latest`` start is pinned)."""
        await self._ready.wait()

    async def run(self) -> None:
        """Read, batch and send until cancelled; what was not accepted is sent again later."""
        reader = self.log.reader(self.stream, self.consumer, self.start)
        self._reset()
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._acks.run(reader))
                tasks.create_task(self._stats_loop())
                first = await self._open(reader)
                await self._ensure_known()
                self._lanes = [Lane(i) for i in range(self.lanes)]
                for lane in self._lanes:
                    tasks.create_task(self._lane_loop(lane))
                await self._read_loop(reader, first)
        finally:
            await self._acks.flush(reader)  # what was accepted stays accepted
            with contextlib.suppress(LogError):
                await reader.close()

    def _reset(self) -> None:
        self._lanes = []
        self._buffered = 0
        self._room.set()
        self._acks.clear()
        self._idle.set()
        self.stats.in_flight = 0

    async def drain(self, grace: float) -> bool:
        """Start no new request and wait up to ``grace`` s for those under way to end.

        Call before cancelling :meth:`run`: an answered request is acknowledged
        when run() exits; one cut short is sent again after the restart.
        """
        self._draining = True
        self._room.set()
        for lane in self._lanes:
            lane.wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    # -- reading ------------------------------------------------------------------------

    async def _open(self, reader: Reader) -> list[Entry]:
        """Open (and for a new consumer, pin) the cursor and learn its position.

        Returns what the opening read handed out (it must be processed).
        """
        backoff = Backoff(*LOG_RETRY_DELAY)
        while True:
            try:
                first = await reader.next_batch(READ_BATCH, timeout=0)
                info = await self.log.info(self.stream)
            except LogUnavailable as exc:
                self._local_error(exc)
                await asyncio.sleep(backoff.next())
                continue
            if self._read_high is None:
                try:
                    position = info.consumer(self.consumer).position
                except KeyError:
                    position = info.first_offset - 1
                if first:
                    position = min(position, first[0].offset - 1)
                self._read_high = position
            # Else run() restarted in this process: the reader hands back what was
            # read and not acknowledged, with gaps where other lanes acknowledged out
            # of order. Those are not retention drops: only gaps above the highest
            # offset read before are (see _note_read).
            self._ready.set()
            return first

    async def _read_loop(self, reader: Reader, batch: list[Entry]) -> None:
        backoff = Backoff(*LOG_RETRY_DELAY)
        while True:
            if batch:
                self._behind = len(batch) >= READ_BATCH
                for start in range(0, len(batch), TAKE_CHUNK):
                    self._take_in(batch[start : start + TAKE_CHUNK])
                    # The devices' side (the MQTT ingest, PUBACKs) shares this loop:
                    # a catch-up takes it in slices, never for a whole batch at once.
                    await asyncio.sleep(0)
            await self._room.wait()
            if self._draining:
                await asyncio.Event().wait()  # parked until cancelled
            try:
                batch = await reader.next_batch(READ_BATCH, timeout=POLL_TIMEOUT)
            except LogUnavailable as exc:
                self._local_error(exc)
                await asyncio.sleep(backoff.next())
                batch = []
                continue
            backoff.reset()
            if not batch:
                self._behind = False

    def _take_in(self, batch: list[Entry]) -> None:
        """Filter the entries read and put each on its lane."""
        stats = self.stats
        lanes = self._lanes
        count = len(lanes)
        ordered = self.ordering == "ordered"
        now = time.time()
        loop_now = asyncio.get_running_loop().time()
        encode = self.remote.encode
        for offset, event in batch:
            self._note_read(offset)
            if not self.filter(event):
                stats.filtered += 1
                self._ack(offset)
                continue
            if expired(event, now):
                stats.expired += 1
                self._ack(offset)
                continue
            if ordered:
                lane = lanes[hash(partition_key(event)) % count]
            else:
                lane = lanes[next(self._round_robin) % count]
            encoded = encode(event)
            size = len(encoded) if encoded is not None else len(event.data_bytes()) + 200
            if not lane.pending:
                lane.first_at = loop_now
            lane.pending.append(Item(offset, event, encoded, size, now))
            lane.pending_bytes += size
            self._buffered += 1
            lane.wake.set()
        if self._buffered >= self.max_buffered:
            self._room.clear()

    def _note_read(self, offset: int) -> None:
        """Count events retention removed before they were read (a gap in the offsets).

        Only a gap above ``_read_high`` (the highest offset any run() of this
        uplink read) is one: offsets at or below it are redeliveries of events
        read and not acknowledged, and the gaps between those are events that
        were acknowledged out of order.
        """
        high = self._read_high
        if high is not None and offset > high + 1:
            self._count_dropped(offset - 1)
        if high is None or offset > high:
            self._read_high = offset

    def _count_dropped(self, upto: int) -> None:
        """Everything up to ``upto`` is gone; what of it was never read was dropped unsent."""
        floor = max(self._read_high or 0, self._counted_dropped)
        if upto > floor:
            missed = upto - floor
            self.stats.dropped_unsent += missed
            self._throttle.warning(
                ("dropped-unsent", self.name),
                "%s: retention of %s removed %d events the uplink never sent (%d in all); "
                "the link has been down longer than the Broker keeps events",
                self.name,
                self.stream,
                missed,
                self.stats.dropped_unsent,
            )
        self._counted_dropped = max(self._counted_dropped, upto)

    # -- lanes --------------------------------------------------------------------------

    async def _lane_loop(self, lane: Lane) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not lane.pending or self._draining:
                lane.wake.clear()
                await lane.wake.wait()
            if self.linger > 0 and not self._behind:
                deadline = lane.first_at + self.linger
                while not self._full(lane) and not self._draining:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    lane.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await lane.wake.wait()
                if self._draining:
                    continue
            items = self._take(lane)
            self._idle.clear()
            self.stats.in_flight += len(items)
            try:
                await self._deliver(items)
            finally:
                self.stats.in_flight -= len(items)
                lane.in_flight = []
                if not any(other.in_flight for other in self._lanes):
                    self._idle.set()
            # Reached only when every event of the batch was accepted or refused.
            for item in items:
                self._ack(item.offset)
            self._buffered -= len(items)
            if self._buffered <= self.max_buffered * 3 // 4:
                self._room.set()

    def _full(self, lane: Lane) -> bool:
        if not self.remote.batches:
            return bool(lane.pending)
        return (
            len(lane.pending) >= self.max_batch_events or lane.pending_bytes >= self.max_batch_bytes
        )

    def _take(self, lane: Lane) -> list[Item]:
        """The next request's events: the lane's oldest, within the batch limits."""
        pending = lane.pending
        items = [pending.popleft()]
        size = items[0].size
        if self.remote.batches:
            limit_events, limit_bytes = self.max_batch_events, self.max_batch_bytes
            while pending and len(items) < limit_events and size + pending[0].size <= limit_bytes:
                item = pending.popleft()
                items.append(item)
                size += item.size
        lane.pending_bytes -= size
        lane.in_flight = items
        if pending:
            lane.first_at = asyncio.get_running_loop().time()
        return items

    async def _deliver(self, items: list[Item]) -> None:
        """Send ``items`` until the receiver accepted every one or refused it for good."""
        backoff = new_backoff(self._backoff)
        while True:
            await self._ensure_known()
            if not self.remote.batches and len(items) > 1:
                # The receiver turned out not to take batches: one by one, in order.
                for item in items:
                    await self._deliver([item])
                return
            await self._throttle_bytes(sum(item.size for item in items))
            answer = await self._request(items)
            if answer.abandoned:
                continue
            self.stats.requests += 1
            self.stats.wire_bytes += answer.wire_bytes
            self.stats.raw_bytes += answer.raw_bytes
            outcome = answer.verdict
            if outcome is Verdict.ACCEPTED:
                self._abandon_stale(answer.started)
                self._accepted(items)
                return
            self._failed(answer, f"sending {len(items)} event(s) to")
            if answer.status == 415:
                # RFC 9110 15.5.16: the content's media type or coding is not
                # supported. Another lane may have found that out already.
                if answer.form != self.remote.form:
                    continue
                change = self.remote.fallback(compressed=answer.wire_bytes != answer.raw_bytes)
                if change is not None:
                    log.warning(
                        "%s: %s does not take that content (415): %s from now on",
                        self.name,
                        self.remote.url,
                        change,
                    )
                    continue
            if outcome is Verdict.RETRY:
                await self._pause(
                    next_wait(backoff, answer.retry_after), connectivity=answer.status is None
                )
                continue
            # Refused: find the event(s) the receiver will not take.
            if len(items) > 1:
                if answer.status == 413:
                    self._shrink(items)
                half = len(items) // 2
                await self._deliver(items[:half])
                await self._deliver(items[half:])
                return
            if answer.form != self.remote.form:
                continue  # another lane changed how to send meanwhile: try that first
            if answer.status != 413 and not answer.local:
                async with self._trial_lock:
                    if answer.form != self.remote.form:
                        continue
                    trial = await self._try_plainer(items, answer)
                if trial is not None and trial.verdict is Verdict.ACCEPTED:
                    return
                if trial is not None and trial.verdict is Verdict.RETRY:
                    # The plainer form met the weather (an outage, a reset, a 503), not
                    # an answer on the event: nothing is known yet, so it is retried
                    # (in the form the remote now has) like any failed request.
                    self._failed(trial, "trying 1 event in a plainer form with")
                    await self._pause(
                        next_wait(backoff, trial.retry_after), connectivity=trial.status is None
                    )
                    continue
            await self._refuse(items[0], answer, backoff)
            return

    async def _request(self, items: list[Item]) -> Answer:
        """One request for ``items``; abandoned (as if unanswered) when the link came back
        while it waited on a connection that went dead with the outage."""
        loop = asyncio.get_running_loop()
        events = [item.event for item in items]
        encoded = [item.encoded for item in items]
        traced: Hop | None = None
        if tracing.tracer is not None:  # sampled events go out under a span of this request
            events, encoded, traced = hop_batch(
                tracing.tracer, events, encoded, self.remote, f"uplink {self.name}"
            )
        request = asyncio.ensure_future(self.remote.send(events, encoded))
        started = loop.time()
        self._requests[request] = started
        answer: Answer | None = None
        try:
            answer = await request
            return answer
        except asyncio.CancelledError:
            lane = asyncio.current_task()
            if lane is not None and lane.cancelling():
                raise  # the uplink stops
            answer = Answer(None, "sent before the outage, unanswered after it", abandoned=True)
            return answer
        finally:
            del self._requests[request]
            if traced is not None:
                accepted = answer is not None and answer.verdict is Verdict.ACCEPTED
                traced.end(
                    answer.status if answer is not None else None,
                    None if accepted else str(answer or "cancelled"),
                )

    def _abandon_stale(self, answered: float) -> None:
        """A request sent at ``answered`` was just answered: requests sent before it and
        waiting for longer than :data:`STALE_AFTER` are on connections that died
        (the link was cut while they were under way, a NAT forgot them) and that
        nothing answers until the kernel gives up on the peer. They are abandoned
        and sent again at once (the receiver may have their events already: at
        least once)."""
        now = asyncio.get_running_loop().time()
        for request, started in list(self._requests.items()):
            if started < answered and now - started > STALE_AFTER and not request.done():
                request.cancel()

    async def _try_plainer(self, items: list[Item], answer: Answer) -> Answer | None:
        """Try a refused event in the next plainer form; keep that form if it is taken.

        Returns the trial's answer (None: nothing plainer is left). Only an
        accepted trial keeps the plainer form; after any other answer (or none:
        the uplink stops) the remote is as it was, and the caller refuses the
        event only when the trial was refused too.
        """
        remote = self.remote
        saved = (remote.mode, remote.gzip)
        change = remote.fallback(compressed=answer.wire_bytes != answer.raw_bytes)
        if change is None:
            return None
        kept = False
        try:
            trial = await remote.send([items[0].event], [items[0].encoded])
            self.stats.requests += 1
            self.stats.wire_bytes += trial.wire_bytes
            self.stats.raw_bytes += trial.raw_bytes
            if trial.verdict is Verdict.ACCEPTED:
                log.warning(
                    "%s: %s refused an event (%s) but accepted it again when %s; "
                    "keeping that for this run (set `format`/`compression` to choose)",
                    self.name,
                    remote.url,
                    answer,
                    change,
                )
                self._accepted(items)
                kept = True
            return trial
        finally:
            if not kept:
                remote.mode, remote.gzip = saved

    def _shrink(self, items: list[Item]) -> None:
        size = sum(item.size for item in items)
        lowered = max(MIN_BATCH_BYTES, size // 2)
        if lowered < self.max_batch_bytes:
            self.max_batch_bytes = lowered
            log.warning(
                "%s: %s refused a %d-byte batch as too large; batches are now at most %d bytes",
                self.name,
                self.remote.url,
                size,
                lowered,
            )

    async def _refuse(self, item: Item, answer: Answer, backoff: Backoff) -> None:
        """Hand a refused event to ``on_refused``, retrying that (never dropping it)."""
        error = DeliveryError(answer.status, False, answer.body, reason=answer.reason)
        while True:
            try:
                await self._on_refused(item.event, error)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._throttle.error(
                    ("dead-letter", self.name),
                    "%s: cannot keep refused event id=%s as a dead letter yet: %s",
                    self.name,
                    item.event.id,
                    exc,
                )
                await asyncio.sleep(next_wait(backoff))
                continue
            self.stats.dead_lettered += 1
            self._throttle.warning(
                ("refused", self.name),
                "%s: %s refused event id=%s source=%s for good (%s); kept as a dead letter",
                self.name,
                self.remote.url,
                item.event.id,
                item.event.source,
                answer,
            )
            return

    def _accepted(self, items: list[Item]) -> None:
        stats = self.stats
        stats.sent += len(items)
        stats.last_sent_at = now_text()
        now = time.time()
        latency = stats.latency
        for item in items:
            latency.observe(now - item.read_at)
        if stats.link != "up":
            if stats.link == "down":
                log.info("%s: %s reachable again", self.name, self.remote.url)
            stats.link = "up"
        self._link_up.set()

    def _failed(self, answer: Answer, what: str) -> None:
        stats = self.stats
        stats.failed_attempts += 1
        stats.last_error = f"{self.remote.url}: {answer}"
        stats.last_error_at = now_text()
        if answer.status is None:
            if stats.link != "down":
                stats.link = "down"
            self._link_up.clear()
        if answer.verdict is Verdict.REFUSED:
            return  # looked into by the caller, and logged when it is final
        self._throttle.warning(
            ("failed", self.name, answer.status),
            "%s: %s %s failed (%s); retrying until it works",
            self.name,
            what,
            self.remote.url,
            answer,
        )

    async def _pause(self, delay: float, *, connectivity: bool) -> None:
        """Wait ``delay``; after a connectivity failure, less if the link comes back."""
        if not connectivity:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._link_up.wait(), delay)

    async def _ensure_known(self) -> None:
        """Probe the receiver (``format``/``compression: auto``) before the first send."""
        if self.remote.known:
            return
        async with self._probe_lock:
            backoff = new_backoff(self._backoff)
            while not self.remote.known:
                answer = await self.remote.probe()
                if answer.status is None:
                    self._failed(answer, "asking what is accepted by")
                    await self._pause(next_wait(backoff), connectivity=True)

    async def _throttle_bytes(self, size: int) -> None:
        """The token bucket of ``max_bytes_per_second`` (a second's worth of burst)."""
        rate = self.max_bytes_per_second
        if rate is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._allowance = min(rate, self._allowance + (now - self._allowance_at) * rate)
        self._allowance_at = now
        self._allowance -= size
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / rate)

    def _ack(self, offset: int) -> None:
        self._acks.add(offset)

    # -- status -------------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(STATS_INTERVAL)

    async def refresh(self) -> None:
        """Backlog, retention drops and send rate, from the log and the lanes."""
        stats = self.stats
        now = time.time()
        stats.send_rate = self._rate.update(now, stats.sent)
        stats.oldest_unsent_age = oldest_unsent_age(self._lanes, now)
        try:
            info = await self.log.info(self.stream)
            backlog = info.consumer(self.consumer).lag
        except (LogError, KeyError):
            return
        stats.backlog_events = backlog
        stats.backlog_bytes = info.bytes * backlog // info.events if info.events else 0
        if self._read_high is not None and info.first_offset - 1 > self._read_high:
            self._count_dropped(info.first_offset - 1)
        stats.at_risk = at_risk(info.config, stats)
        if stats.at_risk is not None:
            self._throttle.warning(
                ("at-risk", self.name),
                "%s: the unsent backlog is close to %s's retention (%s); "
                "events will be dropped unsent if the link stays down",
                self.name,
                self.stream,
                stats.at_risk,
            )

    def _local_error(self, exc: Exception) -> None:
        self.stats.last_error = f"log: {exc}"
        self.stats.last_error_at = now_text()
        self._throttle.warning(
            ("log", self.name), "%s: log unavailable, retrying: %s", self.name, exc
        )

    def status(self) -> dict[str, Any]:
        remote = self.remote
        return {
            "stream": self.stream,
            "consumer": self.consumer,
            "sinkUri": remote.url,
            "mode": remote.mode if remote.known else "unknown",
            "compression": ("gzip" if remote.gzip else "none") if remote.known else "unknown",
            "ordering": self.ordering,
            "lanes": self.lanes,
            "maxBatchBytes": self.max_batch_bytes,
            **self.stats.snapshot(),
        }
