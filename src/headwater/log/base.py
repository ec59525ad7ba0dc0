"""The event log's interface: streams of CloudEvents with durable, named cursors.

How this works: a stream is an append-only sequence of events, each given an
*offset* when it is appended. Offsets are 1-based, strictly increasing within a
stream and never reused (retention drops the oldest events; their offsets stay
gone). A *consumer* is a named, durable cursor over one stream; a
:class:`Reader` is this process's handle on it. Several readers with the same
consumer name share the work: each entry is handed to one of them.

The off-by-one rule, stated once for every backend: a consumer's *position* is
the highest offset ``p`` such that every retained offset ``<= p`` has been
acknowledged. After a restart, delivery resumes at the first retained offset
``> p``. ``ack(offset)`` acknowledges exactly that one entry; acks may arrive
out of order, and the position only moves past an offset once everything below
it is acknowledged (a low-water mark), so a crash redelivers but never skips:
entries above ``p`` come again, those acknowledged out of order included (the
SQLite backend persists only ``p``), and need their ack again. The whole
contract is listed in docs/architecture.md, "The log's guarantees", and every
backend passes ``tests/contract/test_log_contract.py``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Final, NamedTuple, Protocol, Self, runtime_checkable

from headwater.cloudevents import CloudEvent

DEFAULT_MAX_EVENT_SIZE: Final = 1024 * 1024
"""1 MiB, the largest stored event (attributes plus data, as encoded) a stream
accepts unless configured otherwise. Bigger events raise :class:`EventTooLarge`
before anything is written: an IoT reading is bytes to kilobytes, and a bound
keeps one producer from stalling a group commit or a NATS connection."""

DEFAULT_BATCH: Final = 256
"""Entries per :meth:`Reader.next_batch` unless asked otherwise."""

MAX_NAME_LENGTH: Final = 200
"""Stream and consumer names: at most this many characters (room for a
backend's prefix and hash suffix within NATS's 255-byte limit)."""


# -- errors ------------------------------------------------------------------


class LogError(Exception):
    """Base of every error the event log raises."""


class LogUnavailable(LogError):
    """The backend cannot be reached or failed to store/read (retry later).

    Nothing from the failed call was acknowledged. A memory or SQLite append
    is all or nothing; a JetStream append of several events that raised this
    may have stored some of them (a retry can then duplicate: at least once).
    """


class LogFull(LogUnavailable):
    """The backend's storage is full (a full disk, a stream or account quota).

    Nothing from the failed call was stored; retry once space is freed. Sources
    tell producers so precisely: MQTT 5 PUBACK 0x97 Quota exceeded.
    """


class LogClosed(LogError):
    """The log or reader was closed by this process (not worth retrying, unlike
    :class:`LogUnavailable`)."""


class StreamNotFound(LogError, LookupError):
    """No stream with that name; create it with ``create_stream`` first."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} does not exist")


class EventTooLarge(LogError, ValueError):
    """An event is larger than the stream's ``max_event_size``; nothing was appended."""

    def __init__(self, size: int, limit: int, index: int = 0) -> None:
        self.size = size
        self.limit = limit
        self.index = index
        super().__init__(
            f"event #{index} is {size} bytes encoded, over the stream's limit of {limit}"
        )


class InvalidAck(LogError, ValueError):
    """``ack`` of an offset this consumer was never handed."""


class NotAHeadwaterLog(LogError):
    """The file or store exists but is not a Headwater event log (or a newer one)."""


class LogCorrupted(LogError):
    """The log's storage is damaged: a page or a stored event cannot be read back.

    Not retryable; restore the file from a backup (or start a new one).
    """


def check_name(kind: str, name: str) -> str:
    """Validate a stream or consumer name (non-empty, printable, bounded)."""
    if type(name) is not str or not name or len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{kind} name must be 1..{MAX_NAME_LENGTH} characters, not {name!r}")
    if not name.isprintable():
        raise ValueError(f"{kind} name must be printable, not {name!r}")
    return name


# -- values --------------------------------------------------------------------


class Entry(NamedTuple):
    """One event read from a stream, with its offset."""

    offset: int
    event: CloudEvent


new_entry: Final = tuple.__new__
"""``new_entry(Entry, (offset, event))``: an :class:`Entry` without the Python-level
``NamedTuple.__new__`` call (a third of the cost of reading an entry back)."""


class StartKind(Enum):
    EARLIEST = "earliest"
    LATEST = "latest"
    OFFSET = "offset"
    TIME = "time"


@dataclass(frozen=True, slots=True)
class Start:
    """Where a *new* consumer begins. An existing consumer resumes at its position.

    - ``EARLIEST``: the oldest retained event.
    - ``LATEST``: only events appended after the consumer was created.
    - ``Start.at_offset(n)``: offset ``n`` (or the first retained one after it);
      ``n`` may lie in the future.
    - ``Start.at_time(t)``: the first event *appended* at or after ``t``
      (datetime, or seconds since the epoch); the event's own ``time`` attribute
      plays no part.

    Replay is a new consumer with the start you want.
    """

    kind: StartKind
    offset: int = 0
    timestamp: float = 0.0

    @classmethod
    def at_offset(cls, offset: int) -> Start:
        if type(offset) is not int or offset < 1:
            raise ValueError(f"offsets start at 1, not {offset!r}")
        return cls(StartKind.OFFSET, offset=offset)

    @classmethod
    def at_time(cls, moment: datetime | float) -> Start:
        if isinstance(moment, datetime):
            if moment.tzinfo is None:
                raise ValueError("start time must be timezone-aware")
            ts = moment.timestamp()
        else:
            ts = float(moment)
        if not math.isfinite(ts):
            raise ValueError(f"start time must be finite, not {moment!r}")
        return cls(StartKind.TIME, timestamp=ts)

    def position(self, last_offset: int, first_at: Callable[[float], int]) -> int:
        """The position a new consumer starting here gets (see the off-by-one rule).

        ``first_at(timestamp)`` finds the first offset appended at or after a
        time (``last_offset + 1`` if none); only time starts call it.
        """
        if self.kind is StartKind.EARLIEST:
            return 0
        if self.kind is StartKind.LATEST:
            return last_offset
        if self.kind is StartKind.OFFSET:
            return self.offset - 1
        return first_at(self.timestamp) - 1


EARLIEST: Final = Start(StartKind.EARLIEST)
LATEST: Final = Start(StartKind.LATEST)


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """Retention limits of a stream; ``None`` means unlimited.

    When any limit is exceeded the oldest events are dropped first (never the
    new ones: appends do not fail because a stream is full), whether or not
    every consumer has read them; the count of dropped events is in
    :attr:`StreamInfo.dropped`. ``max_age`` is in seconds since the event was
    appended.
    """

    max_age: float | None = None
    max_bytes: int | None = None
    max_events: int | None = None
    max_event_size: int = DEFAULT_MAX_EVENT_SIZE
    replicas: int | None = None
    """Copies a replicating backend keeps (JetStream: the stream's replicas, 1..5);
    ``None`` is the backend's default. Memory and SQLite keep one and ignore it."""

    def __post_init__(self) -> None:
        if self.replicas is not None and (type(self.replicas) is not int or self.replicas < 1):
            raise ValueError(f"replicas must be a positive integer, not {self.replicas!r}")
        if self.max_age is not None and not (self.max_age > 0 and math.isfinite(self.max_age)):
            raise ValueError(f"max_age must be a positive number of seconds, not {self.max_age}")
        for name in ("max_bytes", "max_events", "max_event_size"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


DEFAULT_STREAM_CONFIG: Final = StreamConfig()


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """A consumer's durable position (see the module docstring) and its lag."""

    name: str
    position: int
    lag: int
    """Retained events after ``position`` (not yet acknowledged)."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A snapshot of a stream.

    An empty stream has ``first_offset == last_offset + 1`` (the offset the next
    event will get, if nothing was ever dropped). ``dropped`` counts events
    removed by retention since the stream was created.
    """

    name: str
    first_offset: int
    last_offset: int
    events: int
    bytes: int
    """What the backend stores for the retained events, and what ``max_bytes`` bounds:
    the encoded events plus the backend's own framing (none in memory; in SQLite
    a batch's 5-byte header and 4 bytes an event in it; JetStream's subjects and
    headers)."""
    dropped: int
    config: StreamConfig
    consumers: tuple[ConsumerInfo, ...] = field(default=())

    def consumer(self, name: str) -> ConsumerInfo:
        for consumer in self.consumers:
            if consumer.name == name:
                return consumer
        raise KeyError(name)


def lag(position: int, first_offset: int, last_offset: int) -> int:
    """Retained events after ``position``."""
    return last_offset - (position if position >= first_offset else first_offset - 1)


def stream_info(
    name: str,
    *,
    first: int,
    last: int,
    size: int,
    dropped: int,
    config: StreamConfig,
    positions: Iterable[tuple[str, int]],
) -> StreamInfo:
    """A :class:`StreamInfo` from a backend's counters and consumer positions."""
    return StreamInfo(
        name=name,
        first_offset=first,
        last_offset=last,
        events=last - first + 1,
        bytes=size,
        dropped=dropped,
        config=config,
        consumers=tuple(
            ConsumerInfo(consumer, position, lag(position, first, last))
            for consumer, position in sorted(positions)
        ),
    )


# -- interfaces ------------------------------------------------------------------


@runtime_checkable
class Reader(Protocol):
    """This process's handle on a durable consumer; also an async iterator of entries."""

    @property
    def stream(self) -> str: ...

    @property
    def consumer(self) -> str: ...

    async def next_batch(
        self,
        max: int = DEFAULT_BATCH,
        timeout: float | None = 0,  # noqa: ASYNC109 (waiting for a first entry is the contract)
    ) -> list[Entry]:
        """Up to ``max`` entries in offset order, waiting up to ``timeout`` seconds
        for the first (``None``: forever, ``0``: do not wait). ``[]`` on timeout.

        Entries handed out and not acknowledged are redelivered to this consumer
        after a restart (or when this reader closes, to other readers of it).
        Raises :class:`StreamNotFound` or :class:`LogUnavailable`.
        """
        ...

    async def ack(self, offset: int) -> None:
        """Acknowledge one entry; see the off-by-one rule in the module docstring.

        Acking an offset at or below the position, or twice, does nothing;
        acking one never handed out raises :class:`InvalidAck`. The new
        position is persisted in the background, coalesced with other writes;
        :meth:`flush` waits for it.
        """
        ...

    async def flush(self) -> None:
        """Wait until every ack so far is durable."""
        ...

    async def close(self) -> None:
        """Flush acks and give unacknowledged entries back for redelivery."""
        ...

    def __aiter__(self) -> AsyncIterator[Entry]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


@runtime_checkable
class EventLog(Protocol):
    """Durable streams of events; ``async with`` closes it."""

    async def create_stream(self, name: str, config: StreamConfig = DEFAULT_STREAM_CONFIG) -> None:
        """Create a stream, or apply ``config`` to the existing one (idempotent)."""
        ...

    async def delete_stream(self, name: str) -> None:
        """Delete a stream, its events and its consumers; :class:`StreamNotFound` if absent."""
        ...

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        """Store ``events`` in order and return their offsets.

        When this returns, the events are durable as the backend's setting
        promises (SQLite ``fsync``: on disk; JetStream: acknowledged by the
        server). Raises :class:`StreamNotFound`, :class:`EventTooLarge` (nothing
        stored) or :class:`LogUnavailable`. A cancelled append may or may not
        have been stored; it was never acknowledged.
        """
        ...

    def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> Reader:
        """A handle on the durable consumer ``consumer`` of ``stream``.

        The consumer is created on first use, starting at ``start``; an existing
        consumer resumes at its position and ``start`` is ignored.
        """
        ...

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        """Forget a consumer and its position (no error when it does not exist)."""
        ...

    async def info(self, stream: str) -> StreamInfo:
        """Offsets, size, drops and every consumer's position and lag."""
        ...

    async def close(self) -> None:
        """Close every reader and release the backend; pending appends finish first."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


class ReaderBase:
    """What every reader shares: its names, the closed check, ``async for`` and
    ``async with`` (on top of the subclass's ``next_batch`` and ``close``)."""

    def __init__(self, stream: str, consumer: str, start: Start) -> None:
        self._stream = check_name("stream", stream)
        self._consumer = check_name("consumer", consumer)
        self._start = start
        self._closed = False

    @property
    def stream(self) -> str:
        return self._stream

    @property
    def consumer(self) -> str:
        return self._consumer

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosed(f"reader {self._consumer!r} of {self._stream!r} is closed")

    async def next_batch(
        self,
        max: int = DEFAULT_BATCH,
        timeout: float | None = 0,  # noqa: ASYNC109 (waiting for a first entry is the contract)
    ) -> list[Entry]:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Entry]:
        while True:
            for entry in await self.next_batch(DEFAULT_BATCH, timeout=None):
                yield entry

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class EventLogBase:
    """``async with`` for an event log, on top of its ``close``."""

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def as_event_list(events: Sequence[CloudEvent]) -> Sequence[CloudEvent]:
    """``events`` as a sequence that can be walked twice; a single event passed where a
    sequence is expected (a common slip) is a TypeError."""
    if isinstance(events, CloudEvent):
        raise TypeError("append() takes a sequence of events; wrap a single event in a list")
    if isinstance(events, list | tuple):  # a tuple: EncodedEvents too
        return events
    return list(events)
