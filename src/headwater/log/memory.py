"""The in-memory event log: for tests and ephemeral channels (Knative's InMemoryChannel).

How this works: each stream keeps parallel lists of events, append times and
encoded sizes, with a moving head index so that dropping the oldest events is
O(1) (the lists are compacted once the dropped prefix is large). Offsets map to
list indexes arithmetically, so reads are slices. Nothing survives the
process; consumer positions survive closing and reopening readers on the same
:class:`MemoryLog`. Events are stored as the immutable objects they are, but
sized as the durable backends would store them, so limits behave the same.
"""

from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Final

from headwater.cloudevents import CloudEvent
from headwater.log._codec import records_of
from headwater.log._cursor import Cursor
from headwater.log._local import LocalReader, Signal
from headwater.log.base import (
    DEFAULT_STREAM_CONFIG,
    EARLIEST,
    Entry,
    EventLogBase,
    EventTooLarge,
    LogClosed,
    Start,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
    as_event_list,
    check_name,
    new_entry,
    stream_info,
)

_COMPACT_AFTER: Final = 4096
"""Dropped entries tolerated at the head of the lists before they are compacted."""


class _Stream:
    __slots__ = (
        "bytes",
        "config",
        "cursors",
        "dropped",
        "events",
        "first",
        "head",
        "last",
        "last_time",
        "positions",
        "signal",
        "sizes",
        "times",
    )

    def __init__(self, config: StreamConfig) -> None:
        self.config = config
        self.first = 1
        self.last = 0
        self.last_time = 0.0
        self.head = 0
        self.events: list[CloudEvent] = []
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.bytes = 0
        self.dropped = 0
        self.positions: dict[str, int] = {}
        self.cursors: dict[str, Cursor] = {}
        self.signal = Signal()

    def drop_oldest(self, count: int) -> None:
        head = self.head
        self.bytes -= sum(self.sizes[head : head + count])
        self.head = head = head + count
        self.first += count
        self.dropped += count
        if head > _COMPACT_AFTER and head * 2 > len(self.events):
            del self.events[:head], self.times[:head], self.sizes[:head]
            self.head = 0

    def apply_retention(self, now: float) -> None:
        config = self.config
        count = self.last - self.first + 1
        if config.max_events is not None and count > config.max_events:
            self.drop_oldest(count - config.max_events)
        if config.max_bytes is not None and self.bytes > config.max_bytes:
            excess, n, i, sizes = self.bytes - config.max_bytes, 0, self.head, self.sizes
            while excess > 0:
                excess -= sizes[i]
                i += 1
                n += 1
            self.drop_oldest(n)
        if config.max_age is not None and self.last >= self.first:
            cut = bisect_left(self.times, now - config.max_age, self.head)
            if cut > self.head:
                self.drop_oldest(cut - self.head)

    def entries_after(self, after: int, limit: int) -> list[Entry]:
        start = after + 1 if after >= self.first else self.first
        if start > self.last:
            return []
        i = self.head + (start - self.first)
        chunk = self.events[i : i + limit]
        return [new_entry(Entry, pair) for pair in enumerate(chunk, start)]

    def offset_at_time(self, timestamp: float) -> int:
        """The first offset appended at or after ``timestamp`` (``last + 1`` if none)."""
        return self.first + bisect_left(self.times, timestamp, self.head) - self.head


class MemoryLog(EventLogBase):
    """An :class:`~headwater.log.EventLog` held in this process's memory."""

    poll_interval: float | None = None

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._readers: weakref.WeakSet[LocalReader] = weakref.WeakSet()
        self._closed = False

    def _stream(self, name: str) -> _Stream:
        if self._closed:
            raise LogClosed("the memory log is closed")
        stream = self._streams.get(name)
        if stream is None:
            raise StreamNotFound(name)
        return stream

    async def create_stream(self, name: str, config: StreamConfig = DEFAULT_STREAM_CONFIG) -> None:
        check_name("stream", name)
        if self._closed:
            raise LogClosed("the memory log is closed")
        stream = self._streams.get(name)
        if stream is None:
            self._streams[name] = _Stream(config)
        else:
            stream.config = config
            stream.apply_retention(self._clock())

    async def delete_stream(self, name: str) -> None:
        stream = self._stream(name)
        del self._streams[name]
        stream.signal.notify()

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        s = self._stream(stream)
        limit = s.config.max_event_size
        events = as_event_list(events)
        sizes = [len(record) for record in records_of(events)]
        for index, size in enumerate(sizes):
            if size > limit:
                raise EventTooLarge(size, limit, index)
        if not sizes:
            return []
        now = self._clock()
        if now < s.last_time:
            now = s.last_time  # append times never go backwards (time starts bisect them)
        s.last_time = now
        first = s.last + 1
        s.events.extend(events)
        s.times.extend([now] * len(sizes))
        s.sizes.extend(sizes)
        s.bytes += sum(sizes)
        s.last += len(sizes)
        s.apply_retention(now)
        s.signal.notify()
        return list(range(first, s.last + 1))

    def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> LocalReader:
        reader = LocalReader(self, stream, consumer, start)
        self._readers.add(reader)
        return reader

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        s = self._stream(stream)
        s.positions.pop(consumer, None)
        s.cursors.pop(consumer, None)

    async def info(self, stream: str) -> StreamInfo:
        s = self._stream(stream)
        s.apply_retention(self._clock())
        return stream_info(
            stream,
            first=s.first,
            last=s.last,
            size=s.bytes,
            dropped=s.dropped,
            config=s.config,
            positions=s.positions.items(),
        )

    async def close(self) -> None:
        if self._closed:
            return
        for reader in list(self._readers):
            await reader.close()
        self._readers.clear()
        self._closed = True
        for s in self._streams.values():
            s.signal.notify()

    # -- LocalBackend ----------------------------------------------------------

    async def open_cursor(self, stream: str, consumer: str, start: Start) -> Cursor:
        s = self._stream(stream)
        cursor = s.cursors.get(consumer)
        if cursor is None:
            position = s.positions.get(consumer)
            if position is None:
                s.apply_retention(self._clock())
                position = start.position(s.last, s.offset_at_time)
                s.positions[consumer] = position
            cursor = s.cursors[consumer] = Cursor(position)
        return cursor

    async def fetch_after(self, stream: str, after: int, limit: int) -> list[Entry]:
        s = self._stream(stream)
        if s.config.max_age is not None:
            s.apply_retention(self._clock())
        return s.entries_after(after, limit)

    async def fetch_offsets(self, stream: str, offsets: Sequence[int]) -> list[Entry]:
        s = self._stream(stream)
        first, last, head, events = s.first, s.last, s.head, s.events
        return [Entry(o, events[head + o - first]) for o in offsets if first <= o <= last]

    def signal(self, stream: str) -> Signal:
        return self._stream(stream).signal

    def save_position(self, stream: str, consumer: str, position: int) -> None:
        s = self._streams.get(stream)
        if s is not None:
            s.positions[consumer] = position

    async def flush_positions(self) -> None:
        return None
