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
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nats.errors
import orjson

from headwater import natsclient
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


async def _nak(message: Any) -> None:
    with contextlib.suppress(*NATS_ERRORS):
        await message.nak()


def _ended(requests: dict[str, _Request], reply: str) -> bool:
    return reply not in requests


@dataclass(slots=True)
class _Request:
    """A pull request of a reader's: messages it may still bring, until when."""

    owed: int
    deadline: float  # loop time: its expiry plus PULL_SLACK
    waits: bool  # a waiting request (``expires``), not ``no_wait``


class JetStreamReader(ReaderBase):
    """Pull requests on a durable JetStream consumer (see :class:`headwater.log.Reader`).

    Each reader has its own inbox and each of its pull requests a reply subject
    under it (``<inbox>.<n>``): a status names the request it ends, and a
    message answers the oldest open one (the server serves requests in the
    order they came), so the reader knows how many messages each still owes. ``next_batch(max)``
    hands out what has arrived; when nothing has, it first asks for whatever
    is there (``no_wait``: its answer also orders after everything the consumer
    sent before), then leaves a request for one message open on the server
    until the timeout. Whenever it hands entries out it tops the messages
    asked for (arrived plus still owed) up to ``max`` with a ``no_wait``
    request it does not wait for: the next batch is on its way while this one
    is delivered (a busy consumer's reader seldom waits a round trip), and the
    request ends at once on the server, so a closed reader leaves no request
    behind to swallow messages. A request that neither finished nor expired by
    its own deadline plus :data:`PULL_SLACK` (its status lost in a NATS blip)
    no longer counts. Messages that arrive after the reader stopped waiting are
    kept for the next call; those that arrive after it closed are naked.
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
        self._answered = asyncio.Event()  # a message arrived or a request ended
        self._requests: dict[str, _Request] = {}  # open pull requests by reply subject
        self._numbers = itertools.count(1)
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
            self._inbox_sub = await natsclient.subscribe(nc, self._inbox + ".*", self._arrive)
        except NATS_ERRORS as exc:
            raise translate(exc, self._stream) from exc
        self._keeper = asyncio.create_task(self._keep_held(), name="headwater-log-keep-held")

    def _arrive(self, message: Any) -> None:
        """The inbox's handler: a message of ours, or the status that ends a request."""
        headers = message.headers
        status = headers.get("Status") if headers else None
        if status is None:
            if self._closed:  # owed to a closed reader: back to the consumer at once
                self._log._background(_nak(message), "headwater-log-nak")
            else:
                self._arrived.append(message)
            # A delivered message keeps its stream subject: the server fills
            # its waiting requests in the order they came, so it answers the
            # oldest open one.
            requests = self._requests
            if requests:
                reply = next(iter(requests))
                request = requests[reply]
                request.owed -= 1
                if request.owed <= 0:
                    del requests[reply]
            self._answered.set()
        elif status != "100":  # 100 is an idle heartbeat; the rest end the request
            self._requests.pop(message.subject, None)
            self._answered.set()

    def _open_requests(self) -> dict[str, _Request]:
        """The pull requests still open, those past their deadline forgotten."""
        now = asyncio.get_running_loop().time()
        requests = self._requests
        for reply in [r for r, request in requests.items() if request.deadline <= now]:
            del requests[reply]
        return requests

    def _asking(self) -> str | None:
        """The reply subject of an open ``no_wait`` request, if there is one."""
        return next((r for r, q in self._open_requests().items() if not q.waits), None)

    def _owed(self) -> int:
        """Messages the open pull requests may still bring."""
        return sum(request.owed for request in self._open_requests().values())

    async def _request(self, batch: int, wait: float | None) -> str:
        """Ask for up to ``batch`` messages: what is there now (``wait=None``), or
        those that come within ``wait`` seconds. Returns the request's reply subject."""
        body: dict[str, object] = {"batch": batch}
        if wait is None:
            body["no_wait"] = True
        else:
            body["expires"] = int(wait * 1e9)
        reply = f"{self._inbox}.{next(self._numbers)}"
        deadline = asyncio.get_running_loop().time() + (wait or 0) + PULL_SLACK
        self._requests[reply] = _Request(batch, deadline, waits=wait is not None)
        try:
            await self._log._nc.publish(self._pull_subject, orjson.dumps(body), reply=reply)
        except NATS_ERRORS as exc:
            self._requests.pop(reply, None)
            raise translate(exc, self._stream) from exc
        return reply

    async def _until(self, ready: Callable[[], bool], limit: float) -> None:
        """Wait until ``ready()``, at most ``limit`` seconds (LogUnavailable if the
        connection drops meanwhile)."""

        async def answered() -> None:
            while not ready():
                self._answered.clear()
                await self._answered.wait()

        with contextlib.suppress(TimeoutError):
            await self._log._until_lost(asyncio.wait_for(answered(), limit))

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
                # What is there now: an open no_wait request (the last batch's
                # top-up) or a new one; its end orders after all sent before it.
                asked = self._asking() or await self._request(max, None)
                await self._until(functools.partial(_ended, self._requests, asked), PULL_SLACK)
            if not self._arrived:
                wait = FETCH_CHUNK if deadline is None else deadline - loop.time()
                if wait > 0:
                    if not self._owed():
                        await self._request(
                            1, min(FETCH_CHUNK, wait if wait > MIN_FETCH_WAIT else MIN_FETCH_WAIT)
                        )
                    await self._until(lambda: bool(self._arrived) or not self._owed(), wait)
            self._check_open()
            entries = self._entries(max)
            if self._skipped:
                await self._ack_skipped()
            if entries:
                wanted = max - len(self._arrived) - self._owed()
                if wanted > 0:  # the next batch comes while this one is delivered
                    await self._request(wanted, None)
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
                if self._owed():
                    # Requests still open on the server would deliver to an inbox
                    # nobody reads (redelivered only after ack_wait): the inbox
                    # stays, naking, until they end.
                    self._log._background(self._linger(sub), "headwater-log-reader-linger")
                else:
                    await sub.unsubscribe()
            await self._log._flush()

    async def _linger(self, sub: Any) -> None:
        """Nak what the open requests of a closed reader still bring, then unsubscribe."""
        try:
            with contextlib.suppress(LogError):
                await self._until(lambda: not self._owed(), FETCH_CHUNK + PULL_SLACK)
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()
