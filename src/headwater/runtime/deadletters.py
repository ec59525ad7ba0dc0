"""Dead letters: the durable record of every event a Trigger or Subscription gave up on.

How this works: :class:`DeadLetters` is the
:class:`~headwater.eventing.delivery.DeadLetterRecorder` of every DeliverySpec
the runtime resolves. Each event given up on is appended (durably, before the
delivery ends) to the log stream :data:`DEAD_LETTER_STREAM`, with Knative's
``knativeerror*`` extensions and Headwater's own: the resource it came from,
when, and the last error. A record's id is its offset there. The log is
append-only, so a re-drive does not edit its record: it appends a marker
(type :data:`REDRIVE_TYPE`) naming the record and the outcome, and a listing
reads records and markers together within a bounded window
(:data:`DEAD_LETTER_SCAN`). :func:`redrive_all` is the bulk re-drive job's work.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Final, Protocol

from headwater.cloudevents import CloudEvent
from headwater.eventing import Deliverer, DeliveryError, Dispatcher, Outcome
from headwater.eventing.delivery import dead_letter_event
from headwater.log import (
    DEFAULT_MAX_EVENT_SIZE,
    EventLog,
    EventTooLarge,
    LogError,
    Start,
    StreamConfig,
)
from headwater.runtime.jobs import Job
from headwater.runtime.reconciler import Key

__all__ = [
    "DEAD_LETTER_SCAN",
    "DEAD_LETTER_STREAM",
    "DeadLetter",
    "DeadLetters",
    "Dispatchers",
    "RedriveRefused",
    "redrive_all",
]


class Dispatchers(Protocol):
    """Where a record's origin runs (implemented by the runtime)."""

    def dispatcher(self, key: Key) -> Dispatcher | None:
        """The running dispatcher of a Trigger or Subscription (None when not running)."""
        ...

    def origin_of(self, deliverer: Deliverer) -> Key | None:
        """The Trigger or Subscription whose dispatcher delivers with ``deliverer``."""
        ...


DEAD_LETTER_STREAM: Final = "headwater/deadletters"
"""The log stream that keeps every event a Trigger or Subscription gave up on."""

DEAD_LETTER_RETENTION: Final = StreamConfig(
    max_age=7 * 86400.0,
    max_bytes=256 * 1024 * 1024,
    max_event_size=DEFAULT_MAX_EVENT_SIZE + 64 * 1024,
)
"""A week or 256 MiB, whichever is reached first: time to notice a failing
subscriber over a weekend and re-drive, on a gateway's disk. Past it the
oldest records go (retention never refuses an append, so recording never
blocks delivery). The event size limit leaves room for the error extensions
on top of the largest event a Broker accepts."""

DEAD_LETTER_SCAN: Final = 5000
"""Entries one listing or lookup reads at most from the dead-letter stream:
a listing shows the records among the newest this many entries, so a request
costs a bounded read whatever the stream holds."""

ERROR_TEXT_LIMIT: Final = 512
"""Characters of the delivery error kept in ``headwatererror``."""

# Extensions of a record, beyond Knative's knativeerror* ones.
ORIGIN_EXTENSION: Final = "headwaterorigin"  # Kind/namespace/name of the Trigger/Subscription
FAILED_AT_EXTENSION: Final = "headwaterfailedat"  # when it was given up on (RFC 3339)
ERROR_EXTENSION: Final = "headwatererror"  # the last error, as text
DATA_OMITTED_EXTENSION: Final = "headwaterdataomitted"  # data too large to keep alongside
# A re-drive appends a marker (the log is append-only: records are never edited).
REDRIVE_TYPE: Final = "dev.headwater.deadletter.redriven"
REDRIVEN_EXTENSION: Final = "headwaterredriven"  # the record's id
OUTCOME_EXTENSION: Final = "headwateroutcome"  # an Outcome: delivered | dead-lettered | dropped

RECORD_EXTENSIONS: Final = (
    "knativeerrordest",
    "knativeerrorcode",
    "knativeerrordata",
    ORIGIN_EXTENSION,
    FAILED_AT_EXTENSION,
    ERROR_EXTENSION,
    DATA_OMITTED_EXTENSION,
)


def _ascii_text(text: str, limit: int) -> str:
    """Text fit for a CloudEvent string extension: printable ASCII, bounded."""
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in escaped)[:limit]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record of the dead-letter stream: ``id`` is its offset there."""

    id: int
    event: CloudEvent
    """The event as it failed, with the ``knativeerror*`` and ``headwater*`` extensions."""
    redriven: str | None = None
    """The outcome of the latest re-drive (an :class:`Outcome` value), if any."""

    @property
    def origin(self) -> Key | None:
        kind, _, rest = str(self.event.get(ORIGIN_EXTENSION, "")).partition("/")
        namespace, _, name = rest.partition("/")
        return (kind, namespace, name) if kind and namespace and name else None

    def original(self) -> CloudEvent:
        """The event as it was before it failed (the record's own extensions removed)."""
        return self.event.evolve(dict.fromkeys(RECORD_EXTENSIONS))


REDRIVABLE: Final = frozenset({"Trigger", "Subscription"})
"""The origins whose dead letters a re-drive delivers again (through their dispatcher)."""


class RedriveRefused(Exception):
    """A dead letter cannot be re-driven now; the message says why."""


class DeadLetters:
    """The durable record of given-up events, and their re-drive.

    It is the :class:`~headwater.eventing.delivery.DeadLetterRecorder` of every
    DeliverySpec the runtime builds: a record is appended (durably) before the
    delivery ends, so an event a subscriber never took is kept whether or not
    a dead letter sink is configured, and whether or not that sink took it.
    """

    def __init__(self, log: EventLog, dispatchers: Dispatchers) -> None:
        self._log = log
        self._dispatchers = dispatchers
        self._created = False
        self._redriving: set[int] = set()
        # When each origin last gave an event up (time.time()), for "failing"
        # in the dashboard's topology; at most one entry per resource.
        self.given_up: dict[Key, float] = {}

    async def _stream(self) -> str:
        if not self._created:
            await self._log.create_stream(DEAD_LETTER_STREAM, DEAD_LETTER_RETENTION)
            self._created = True
        return DEAD_LETTER_STREAM

    async def __call__(self, deliverer: Deliverer, event: CloudEvent, error: DeliveryError) -> None:
        origin = self._dispatchers.origin_of(deliverer)
        await self.record(origin, deliverer.destination, event, error)

    async def record(
        self, origin: Key | None, destination: str, event: CloudEvent, error: DeliveryError
    ) -> None:
        """Keep ``event``, given up on by ``origin`` while sending to ``destination``."""
        if origin is not None:
            self.given_up[origin] = time.time()
        failed = dead_letter_event(event, destination, error)
        record = failed.evolve(
            {
                ORIGIN_EXTENSION: "/".join(origin) if origin else None,
                FAILED_AT_EXTENSION: datetime.now(UTC).isoformat(timespec="milliseconds"),
                ERROR_EXTENSION: _ascii_text(str(error), ERROR_TEXT_LIMIT) or None,
            }
        )
        stream = await self._stream()
        try:
            await self._log.append(stream, [record])
        except EventTooLarge:
            # Bigger than any Broker accepts (an InMemoryChannel has no limit):
            # keep what failed and why, without the payload.
            slim = record.evolve({DATA_OMITTED_EXTENSION: "true"}, keep_data=False)
            await self._log.append(stream, [slim])

    async def info(self) -> tuple[int, int]:
        """``(first, last)`` retained offsets (``first > last`` when there is none)."""
        info = await self._log.info(await self._stream())
        return info.first_offset, info.last_offset

    async def _scan(self, first: int, last: int) -> tuple[dict[int, CloudEvent], dict[int, str]]:
        """Records and re-drive outcomes in ``first..last`` (offsets)."""
        records: dict[int, CloudEvent] = {}
        outcomes: dict[int, str] = {}
        if first > last:
            return records, outcomes
        stream = await self._stream()
        consumer = f"view/{uuid.uuid4().hex}"
        reader = self._log.reader(stream, consumer, Start.at_offset(first))
        try:
            position = first - 1
            while position < last:
                # Everything up to `last` is stored: the wait only matters for a
                # backend that fetches over the network (JetStream).
                batch = await reader.next_batch(min(256, last - position), timeout=1.0)
                if not batch:
                    break
                for offset, event in batch:
                    if offset > last:
                        break
                    target = event.get(REDRIVEN_EXTENSION)
                    if event.type == REDRIVE_TYPE and isinstance(target, str) and target.isdigit():
                        outcomes[int(target)] = str(event.get(OUTCOME_EXTENSION, ""))
                    else:
                        records[offset] = event
                position = batch[-1].offset
        finally:
            await reader.close()
            with contextlib.suppress(LogError):
                await self._log.delete_consumer(stream, consumer)
        return records, outcomes

    async def list(
        self, limit: int, before: int | None = None, origin: Key | None = None
    ) -> list[DeadLetter]:
        """The newest ``limit`` records (below offset ``before``, of ``origin``), newest first."""
        first, last = await self.info()
        end = last if before is None else min(last, before - 1)
        # Each re-drive adds a marker (and a record when it fails again), so
        # four entries per wanted record is ample; never more than the bound.
        # Records of one origin may be spread among others': the whole bound.
        window = DEAD_LETTER_SCAN if origin is not None else min(DEAD_LETTER_SCAN, 4 * limit)
        start = max(first, end - window + 1)
        # Markers come after their records: read on to the end, within the bound.
        records, outcomes = await self._scan(start, min(last, start + 2 * DEAD_LETTER_SCAN))
        newest = sorted(records, reverse=True)
        letters = (DeadLetter(i, records[i], outcomes.get(i)) for i in newest)
        return [
            letter
            for letter in letters
            if letter.id <= end and (origin is None or letter.origin == origin)
        ][:limit]

    async def get(self, id: int) -> DeadLetter | None:
        first, last = await self.info()
        if not first <= id <= last:
            return None
        records, outcomes = await self._scan(id, min(last, id + DEAD_LETTER_SCAN))
        event = records.get(id)
        return DeadLetter(id, event, outcomes.get(id)) if event is not None else None

    async def redrive(self, id: int) -> tuple[DeadLetter, Outcome, Dispatcher]:
        """Deliver a record's event again, to its origin's current subscriber.

        It goes through the origin's own delivery pipeline (retries, dead
        letter sink, counters; failing again makes a new record) and the
        outcome is kept as a marker. Raises ``LookupError`` for an unknown id
        and :class:`RedriveRefused` when it cannot be re-driven now.
        """
        if id in self._redriving:
            raise RedriveRefused(f"dead letter {id} is being re-driven already")
        self._redriving.add(id)
        try:
            letter = await self.get(id)
            if letter is None:
                raise LookupError(f"no dead letter {id}")
            if letter.redriven == Outcome.DELIVERED.value:
                raise RedriveRefused(f"dead letter {id} was re-driven and delivered already")
            origin = letter.origin
            if origin is None:
                raise RedriveRefused(f"dead letter {id} does not name a Trigger or Subscription")
            if origin[0] not in REDRIVABLE:
                # An Uplink's dead letters were refused for good by the other
                # tier (400, 413): sending them again would be refused again.
                raise RedriveRefused(
                    f"dead letter {id} came from {origin[0]} {origin[1]}/{origin[2]}: "
                    "only a Trigger's or a Subscription's dead letters can be re-driven"
                )
            dispatcher = self._dispatchers.dispatcher(origin)
            if dispatcher is None:
                raise RedriveRefused(f"{origin[0]} {origin[1]}/{origin[2]} is not running")
            outcome = await dispatcher.deliverer.deliver(letter.original())
            marker = CloudEvent(
                {
                    "specversion": "1.0",
                    "id": uuid.uuid4().hex,
                    "source": "/headwater/deadletters",
                    "type": REDRIVE_TYPE,
                    REDRIVEN_EXTENSION: str(id),
                    OUTCOME_EXTENSION: outcome.value,
                }
            )
            await self._log.append(await self._stream(), [marker])
            return replace(letter, redriven=outcome.value), outcome, dispatcher
        finally:
            self._redriving.discard(id)


async def redrive_all(store: DeadLetters, job: Job, letters: list[DeadLetter]) -> None:
    """Re-drive ``letters`` one at a time, oldest first, counting into ``job``.

    A record that cannot be re-driven now (its origin is not running, it was
    delivered meanwhile) is skipped and counted; ``maxFailures`` stops the job.
    """
    for letter in letters:
        try:
            _, outcome, _ = await store.redrive(letter.id)
        except (RedriveRefused, LookupError) as exc:
            job.skipped += 1
            job.details["lastSkipped"] = str(exc).strip("'\"")
            continue
        job.count(outcome)  # may stop the job: maxFailures
