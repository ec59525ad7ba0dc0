"""The reader shared by the in-process backends (memory and SQLite).

How this works: a backend hands out one :class:`~headwater.log._cursor.Cursor`
per open consumer and answers three questions: the entries after an offset,
the entries at given offsets (redeliveries), and a :class:`Signal` that fires
when the stream grows. :class:`LocalReader` does the rest: redeliveries
first, then new entries, waiting on the signal (no polling for appends made
in this process; a backend whose file other processes write to also sets a
bounded ``poll_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Final, Protocol

from headwater._signal import Signal
from headwater.log._cursor import Cursor
from headwater.log.base import (
    DEFAULT_BATCH,
    Entry,
    LogError,
    ReaderBase,
    Start,
)

__all__ = ["FOREVER_WAIT", "LocalBackend", "LocalReader", "Signal"]

FOREVER_WAIT: Final = 3600.0
"""How long one wait of ``async for`` lasts before it simply waits again."""


class LocalBackend(Protocol):
    poll_interval: float | None

    async def open_cursor(self, stream: str, consumer: str, start: Start) -> Cursor: ...

    async def fetch_after(self, stream: str, after: int, limit: int) -> list[Entry]: ...

    async def fetch_offsets(self, stream: str, offsets: Sequence[int]) -> list[Entry]: ...

    def signal(self, stream: str) -> Signal: ...

    def save_position(self, stream: str, consumer: str, position: int) -> None: ...

    async def flush_positions(self) -> None: ...


class LocalReader(ReaderBase):
    """A reader handle of the memory and SQLite backends (see :class:`headwater.log.Reader`)."""

    def __init__(self, backend: LocalBackend, stream: str, consumer: str, start: Start) -> None:
        super().__init__(stream, consumer, start)
        self._backend = backend
        self._cursor: Cursor | None = None
        self._unacked: set[int] = set()
        self._save_pending = False

    async def _open(self) -> Cursor:
        self._check_open()
        cursor = self._cursor
        if cursor is None:
            cursor = await self._backend.open_cursor(self._stream, self._consumer, self._start)
            self._check_open()  # closed while opening
            self._cursor = cursor
        return cursor

    async def next_batch(
        self,
        max: int = DEFAULT_BATCH,
        timeout: float | None = 0,  # noqa: ASYNC109 (waiting for a first entry is the contract)
    ) -> list[Entry]:
        if max < 1:
            raise ValueError(f"max must be at least 1, not {max}")
        cursor = await self._open()
        backend = self._backend
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        signal = backend.signal(self._stream)
        while True:
            waiter = signal.waiter()
            entries = await self._take(cursor, max)
            if entries:
                return entries
            wait = FOREVER_WAIT if deadline is None else deadline - loop.time()
            if wait <= 0:
                return []
            if backend.poll_interval is not None and wait > backend.poll_interval:
                wait = backend.poll_interval
            try:
                async with asyncio.timeout(wait):
                    await waiter.wait()
            except TimeoutError:
                pass
            self._check_open()

    async def _take(self, cursor: Cursor, limit: int) -> list[Entry]:
        backend = self._backend
        async with cursor.lock:
            entries: list[Entry] = []
            if cursor.redeliver:
                wanted = cursor.take_redeliveries(limit)
                entries = await backend.fetch_offsets(self._stream, wanted)
                found = {entry.offset for entry in entries}
                moved = False
                for offset in wanted:
                    if offset not in found:  # dropped by retention meanwhile
                        moved |= cursor.ack(offset)
                if moved:
                    self._save_position()
            if len(entries) < limit:
                entries += await backend.fetch_after(
                    self._stream, cursor.delivered, limit - len(entries)
                )
            if entries:
                offsets = [entry.offset for entry in entries]
                cursor.handed_out(offsets)
                self._unacked.update(offsets)
            return entries

    async def ack(self, offset: int) -> None:
        cursor = self._cursor
        if cursor is None or self._closed:
            cursor = await self._open()
        self._unacked.discard(offset)
        if cursor.ack(offset) and not self._save_pending:
            # Saved once per event-loop pass, however many acks that pass made.
            self._save_pending = True
            asyncio.get_running_loop().call_soon(self._save_position)

    def _save_position(self) -> None:
        self._save_pending = False
        cursor = self._cursor
        if cursor is not None:
            self._backend.save_position(self._stream, self._consumer, cursor.position)

    async def flush(self) -> None:
        if self._save_pending:
            self._save_position()
        await self._backend.flush_positions()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._save_pending:
            self._save_position()
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            cursor.give_back(self._unacked)
            self._unacked.clear()
            with contextlib.suppress(LogError):  # the stream or log may be gone already
                self._backend.signal(self._stream).notify()  # wake readers of given-back entries
                await self._backend.flush_positions()
