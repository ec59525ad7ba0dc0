"""A reader of the JetStream log: pull requests on a durable consumer, acks, progress.

How this works: see :class:`JetStreamReader`. It is the
:class:`~headwater.log.jetstream.JetStreamLog`'s own reader (it uses the
log's connection, its consumer creation and its flush), kept in a module of
its own for size.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson

from headwater.log._codec import CorruptRecord, decode
from headwater.log._jetstream_nats import (
    FETCH_CHUNK,
    MIN_FETCH_WAIT,
    NATS_ERRORS,
    PULL_SLACK,
    stream_sequence,
    translate,
)
from headwater.log.base import (
    DEFAULT_BATCH,
    Entry,
    InvalidAck,
    LogCorrupted,
    LogError,
    ReaderBase,
    Start,
    new_entry,
)

if TYPE_CHECKING:
    from headwater.log.jetstream import JetStreamLog

__all__ = ["JetStreamReader"]


class JetStreamReader(ReaderBase):
    """Pull requests on a durable JetStream consumer (see :class:`headwater.log.Reader`).

    Each reader has its own inbox subscription. ``next_batch`` first asks for
    whatever is there (``no_wait``); only when nothing is, it leaves one
    request for a single message open on the server until the timeout. Messages
    that arrive after the reader stopped waiting are kept for the next call.
    """

    def __init__(self, log: JetStreamLog, stream: str, consumer: str, start: Start) -> None:
        super().__init__(stream, consumer, start)
        self._log = log
        self._inbox_sub: Any = None
        self._inbox = ""
        self._pull_subject = ""
        self._keeper: asyncio.Task[None] | None = None
        self._base = 0
        self._arrived: collections.deque[Any] = collections.deque()  # not yet handed out
        self._answered = asyncio.Event()  # the open pull request got its answer
        self._wanted = 0
        self._skipped: list[Any] = []
        self._held: dict[int, Any] = {}  # offset -> message handed out, not yet acked
        self._delivered = 0

    async def _open(self) -> None:
        self._check_open()
        if self._inbox_sub is not None:
            return
        self._pull_subject, self._base = await self._log._consumer(
            self._stream, self._consumer, self._start
        )
        nc = self._log._nc
        self._inbox = nc.new_inbox()
        try:
            self._inbox_sub = await nc.subscribe(self._inbox, cb=self._arrive)
        except NATS_ERRORS as exc:
            raise translate(exc, self._stream) from exc
        self._keeper = asyncio.create_task(self._keep_held(), name="headwater-log-keep-held")

    async def _arrive(self, message: Any) -> None:
        """The inbox callback: a message of ours, or the status that ends a request."""
        headers = message.headers
        status = headers.get("Status") if headers else None
        if status is None:
            self._arrived.append(message)
            if len(self._arrived) >= self._wanted:
                self._answered.set()
        elif status != "100":  # 100 is an idle heartbeat; the rest end the request
            self._answered.set()

    async def _pull(self, batch: int, wait: float | None) -> None:
        """Ask for up to ``batch`` messages: what is there now (``wait=None``), or the
        next ones within ``wait`` seconds; return when answered (or at the expiry)."""
        request: dict[str, object] = {"batch": batch}
        if wait is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(wait * 1e9)
        self._answered.clear()
        self._wanted = len(self._arrived) + batch
        nc = self._log._nc
        try:
            await nc.publish(self._pull_subject, orjson.dumps(request), reply=self._inbox)
            limit = (wait or 0) + PULL_SLACK
            with contextlib.suppress(TimeoutError):
                await self._log._until_lost(asyncio.wait_for(self._answered.wait(), limit))
        except NATS_ERRORS as exc:
            raise translate(exc, self._stream) from exc

    async def _keep_held(self) -> None:
        """Tell JetStream, every third of ``ack_wait``, that held entries are still being
        worked on (``+WPI``), so that a delivery retrying for longer than ``ack_wait``
        is not handed to another reader meanwhile. Owned by this reader, cancelled by
        :meth:`close`."""
        interval = self._log.ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            for message in [*self._held.values(), *self._arrived]:
                with contextlib.suppress(*NATS_ERRORS):  # down: JetStream redelivers later
                    await message.in_progress()

    async def next_batch(
        self,
        max: int = DEFAULT_BATCH,
        timeout: float | None = 0,  # noqa: ASYNC109 (waiting for a first entry is the contract)
    ) -> list[Entry]:
        if max < 1:
            raise ValueError(f"max must be at least 1, not {max}")
        await self._open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            await self._log._context()  # LogUnavailable at once while NATS is away
            if not self._arrived:
                await self._pull(max, None)
            if not self._arrived:
                wait = FETCH_CHUNK if deadline is None else deadline - loop.time()
                if wait > 0:
                    await self._pull(
                        1, min(FETCH_CHUNK, wait if wait > MIN_FETCH_WAIT else MIN_FETCH_WAIT)
                    )
            self._check_open()
            entries = self._entries(max)
            if self._skipped:
                await self._ack_skipped()
            if entries:
                return entries
            if deadline is not None and loop.time() >= deadline:
                return []

    async def _ack_skipped(self) -> None:
        skipped, self._skipped = self._skipped, []
        for message in skipped:
            await message.ack()

    def _entries(self, limit: int) -> list[Entry]:
        """Hand out up to ``limit`` of the messages that arrived."""
        entries: list[Entry] = []
        held, arrived = self._held, self._arrived
        while arrived and len(entries) < limit:
            message = arrived.popleft()
            offset = stream_sequence(message.reply)
            if offset <= self._base:  # before a start that was in the future
                self._skipped.append(message)
                continue
            held[offset] = message
            try:
                event = decode(message.data)
            except CorruptRecord as exc:
                raise LogCorrupted(
                    f"{self._stream!r} offset {offset} is not an event record: {exc}"
                ) from exc
            entries.append(new_entry(Entry, (offset, event)))
            if offset > self._delivered:
                self._delivered = offset
        return entries

    async def ack(self, offset: int) -> None:
        self._check_open()
        message = self._held.pop(offset, None)
        if message is None:
            if offset > self._delivered:
                raise InvalidAck(
                    f"offset {offset} was never delivered (delivered up to {self._delivered})"
                )
            return  # acked before (or handed to another reader of the consumer)
        try:
            await message.ack()
        except nats.errors.MsgAlreadyAckdError:
            return
        except NATS_ERRORS as exc:
            self._held[offset] = message
            raise translate(exc, self._stream) from exc

    async def flush(self) -> None:
        self._check_open()
        await self._log._flush()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held, self._held = self._held, {}
        arrived, self._arrived = self._arrived, collections.deque()
        sub, self._inbox_sub = self._inbox_sub, None
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        with contextlib.suppress(*NATS_ERRORS, LogError):
            for offset in sorted(held):
                await held[offset].nak()  # redeliver promptly, in order
            for message in arrived:
                await message.nak()
            if sub is not None:
                await sub.unsubscribe()
            await self._log._flush()
