"""The event log on NATS JetStream: for running several Headwater processes on one log.

How this works:

- **Streams**: each Headwater stream is one JetStream stream with limits
  retention (``max_msgs``, ``max_bytes``, ``max_age``; discard old) and
  ``max_msg_size`` = the stream's ``max_event_size`` (``max_bytes`` and
  ``StreamInfo.bytes`` count as JetStream does: each record plus its subject
  and some framing). Its JetStream name and
  subject are the Headwater name made safe for NATS (``.``, ``*``, ``>``,
  spaces and the like become ``_`` and a short hash of the real name is added),
  prefixed with ``namespace`` so that several deployments can share a server;
  the real name is kept in the stream's description.
- **Offsets** are JetStream stream sequences (1-based, increasing, never
  reused). An append publishes each event's record (:mod:`headwater.log._codec`)
  with a reply subject under one wildcard inbox of the log's, and waits (up to
  ``request_timeout``) for every PubAck; their sequences are the offsets. JetStream
  has no multi-message transaction: if an append of several events fails
  midway, the first ones may be stored (the error says nothing was
  acknowledged; a retry can duplicate them: at least once).
- **Consumers** are durable pull consumers with explicit acks, one per
  Headwater consumer; every reader (in any process) with the same consumer
  name pulls from the same JetStream consumer, so they share the work. A
  reader sends JetStream's pull requests itself, on an inbox of its own (a
  third of the per-message cost of nats-py's ``fetch``).
  ``ack(offset)`` acks that message; JetStream's *ack floor* is exactly the
  low-water-mark position of :mod:`headwater.log.base`. A reader keeps what it
  holds alive (``+WPI`` every third of ``ack_wait``) however long a delivery
  retries; closing a reader naks what it holds, for prompt redelivery, and
  entries held by a process that died are redelivered after ``ack_wait``.
- **Failure**: while the connection is down, every call raises
  :class:`~headwater.log.LogUnavailable` at once, and calls in flight when it
  drops fail with it as soon as the client notices; the client reconnects in
  the background and the log works again when NATS is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import Awaitable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.js import api

from headwater import natsclient
from headwater.cloudevents import CloudEvent
from headwater.log._codec import records_of
from headwater.log._jetstream_nats import (
    NATS_ERRORS,
    PULL_SUBJECT,
    consumer_position,
    describe,
    described,
    nats_token,
    translate,
)
from headwater.log._jetstream_reader import JetStreamReader
from headwater.log.base import (
    DEFAULT_MAX_EVENT_SIZE,
    DEFAULT_STREAM_CONFIG,
    EARLIEST,
    EventLogBase,
    EventTooLarge,
    LogClosed,
    LogError,
    LogUnavailable,
    Start,
    StartKind,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
    as_event_list,
    check_name,
    stream_info,
)

T = TypeVar("T")

DEFAULT_NAMESPACE: Final = "headwater"

DEFAULT_ACK_WAIT: Final = 30.0
"""Seconds JetStream waits for an ack (or a sign of progress) before redelivering an
entry to any reader of the consumer: how long the entries of a reader whose
process died stay stuck. Live readers send progress for what they hold."""

DEFAULT_MAX_ACK_PENDING: Final = 10_000
"""Entries a consumer may have handed out unacknowledged (over all its readers);
at the limit JetStream delivers nothing more until some are acked: backpressure
on slow consumers instead of unbounded redelivery bookkeeping."""

DEFAULT_REQUEST_TIMEOUT: Final = 5.0
"""Seconds to wait for a JetStream API answer or a PubAck before giving up."""

DEFAULT_CONNECT_TIMEOUT: Final = 2.0

NO_LEADER_RETRY: Final = 0.05
"""Seconds between appends to a stream that has no leader yet (within request_timeout)."""

RECONNECT_WAIT: Final = 0.5
"""Seconds between reconnect attempts while NATS is away (forever)."""

_CONSUMER_PAGE: Final = 256  # consumers per CONSUMER.LIST answer

# JetStream API error codes (nats-server's errors.json).
_ERR_STREAM_NAME_IN_USE: Final = 10058

CREATE_ATTEMPTS: Final = 3
"""Tries of a stream's creation that time out (a leader election in a cluster) before
the Broker reports the log unavailable."""

_COMPARED: Final = (
    "subjects",
    "retention",
    "discard",
    "max_msgs",
    "max_bytes",
    "max_age",
    "max_msg_size",
    "storage",
    "num_replicas",
    "description",
)


def _differs(found: Any, wanted: Any) -> bool:
    """Whether an existing stream's configuration differs from the wanted one."""
    for field in _COMPARED:
        have, want = getattr(found, field, None), getattr(wanted, field, None)
        if field in ("max_msgs", "max_bytes") and (have or -1) == (want or -1):
            continue
        if field == "max_age" and (have or 0) == (want or 0):
            continue
        if field == "num_replicas" and (have or 1) == (want or 1):
            continue
        if have != want:
            return True
    return False


_ERR_MESSAGE_TOO_BIG: Final = 10054


class JetStreamLog(EventLogBase):
    """An :class:`~headwater.log.EventLog` on NATS JetStream (see the module docstring)."""

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ack_wait: float = DEFAULT_ACK_WAIT,
        max_ack_pending: int = DEFAULT_MAX_ACK_PENDING,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        replicas: int = 1,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self.namespace = nats_token(check_name("namespace", namespace))
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._replicas = replicas
        self._connect_options = dict(connect_options or {})
        self._nc: Any = None
        self._js: Any = None
        self._connecting = asyncio.Lock()
        self._lost = asyncio.Event()
        # PubAcks awaited, by reply subject (one wildcard inbox for all of them).
        self._acks: dict[str, asyncio.Future[int]] = {}
        self._ack_prefix = ""
        self._ack_tokens = itertools.count()
        self._max_sizes: dict[str, int] = {}
        self._readers: weakref.WeakSet[JetStreamReader] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()  # readers' work after their close
        self._closed = False

    # -- names ---------------------------------------------------------------------

    def stream_name(self, stream: str) -> str:
        return f"{self.namespace}_{nats_token(stream)}"

    def subject(self, stream: str) -> str:
        return f"{self.namespace}.log.{nats_token(stream)}"

    @property
    def connected(self) -> bool:
        """Whether the log can reach NATS now (not yet connected counts as reachable:
        it connects at its first use)."""
        return self._nc is None or bool(self._nc.is_connected)

    # -- connection ----------------------------------------------------------------

    async def _context(self) -> Any:
        """The JetStream context, connecting first if needed; LogUnavailable while down."""
        if self._closed:
            raise LogClosed("the JetStream log is closed")
        if self._nc is None:
            async with self._connecting:
                if self._nc is None:
                    await self._connect()
        if not self._nc.is_connected:
            raise LogUnavailable("NATS is unreachable (reconnecting in the background)")
        return self._js

    async def _connect(self) -> None:
        async def disconnected() -> None:
            self._lost.set()
            failure = LogUnavailable("the NATS connection was lost")
            acks, self._acks = self._acks, {}
            for future in acks.values():
                if not future.done():
                    future.set_exception(failure)

        async def reconnected() -> None:
            self._lost = asyncio.Event()

        async def error(exc: Exception) -> None:
            return None  # connection problems surface as LogUnavailable on the next call

        try:
            nc = await natsclient.connect(
                self._servers,
                connect_timeout=self._connect_timeout,
                allow_reconnect=True,
                # nats-py applies this to the first connect too: -1 would retry
                # an unreachable server forever instead of reporting it.
                max_reconnect_attempts=1,
                reconnect_time_wait=RECONNECT_WAIT,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                **self._connect_options,
            )
        except (*NATS_ERRORS, ValueError) as exc:
            raise LogUnavailable(f"cannot connect to NATS at {self._servers}: {exc}") from exc
        nc.options["max_reconnect_attempts"] = -1  # connected once: reconnect forever
        self._ack_prefix = nc.new_inbox() + "."
        try:
            await natsclient.subscribe(nc, self._ack_prefix + "*", self._on_puback)
        except NATS_ERRORS as exc:
            await nc.close()
            raise LogUnavailable(f"cannot subscribe at NATS: {exc}") from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=self.request_timeout)

    def _on_puback(self, message: Any) -> None:
        """A PubAck (or the refusal) for one published record: resolve its future."""
        future = self._acks.pop(message.subject, None)
        if future is None or future.done():
            return  # timed out, cancelled, or failed by a disconnect meanwhile
        headers = message.headers
        if headers and headers.get("Status") == "503":  # no responders: no stream there
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = orjson.loads(message.data)
            if "error" in answer:
                future.set_exception(nats.js.errors.APIError.from_error(answer["error"]))
            else:
                future.set_result(int(answer["seq"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            future.set_exception(LogUnavailable(f"unreadable PubAck: {exc}"))

    async def _until_lost(self, work: Awaitable[T]) -> T:
        """Await ``work``, but raise LogUnavailable as soon as the connection drops."""
        lost = self._lost
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, *NATS_ERRORS):
                    await task
        if task.cancelled():
            raise LogUnavailable("the NATS connection was lost")
        return task.result()

    # -- EventLog --------------------------------------------------------------------------

    async def create_stream(self, name: str, config: StreamConfig = DEFAULT_STREAM_CONFIG) -> None:
        check_name("stream", name)
        js = await self._context()
        wanted = api.StreamConfig(
            name=self.stream_name(name),
            description=name,
            subjects=[self.subject(name)],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_msgs=config.max_events or -1,
            max_bytes=config.max_bytes or -1,
            max_age=config.max_age or 0,
            max_msg_size=config.max_event_size,
            storage=api.StorageType.FILE,
            num_replicas=config.replicas or self._replicas,
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                try:
                    found = await js.stream_info(wanted.name)
                except nats.js.errors.NotFoundError:
                    try:
                        await js.add_stream(wanted)
                    except nats.js.errors.BadRequestError as exc:
                        if exc.err_code != _ERR_STREAM_NAME_IN_USE:
                            raise
                        continue  # another process created it meanwhile: compare with that
                else:
                    # Several nodes of a mesh start the same Broker: only a change
                    # of its configuration is worth a (replicated) update.
                    if _differs(found.config, wanted):
                        await js.update_stream(wanted)
            except (TimeoutError, nats.errors.TimeoutError) as exc:
                # A clustered JetStream may be electing a leader for the stream.
                if attempt < CREATE_ATTEMPTS:
                    continue
                raise translate(exc) from exc
            except NATS_ERRORS as exc:
                raise translate(exc) from exc
            break
        self._max_sizes[name] = config.max_event_size

    async def delete_stream(self, name: str) -> None:
        js = await self._context()
        try:
            await js.delete_stream(self.stream_name(name))
        except NATS_ERRORS as exc:
            raise translate(exc, name) from exc
        finally:
            self._max_sizes.pop(name, None)

    async def _max_size(self, stream: str) -> int:
        size = self._max_sizes.get(stream)
        if size is None:
            size = (await self._stream_info(stream)).config.max_msg_size
            if size is None or size < 0:
                size = DEFAULT_MAX_EVENT_SIZE
            self._max_sizes[stream] = size
        return size

    async def append(self, stream: str, events: Sequence[CloudEvent]) -> list[int]:
        await self._context()
        records = records_of(as_event_list(events))
        limit = await self._max_size(stream)
        for index, record in enumerate(records):
            if len(record) > limit:
                raise EventTooLarge(len(record), limit, index)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        while True:
            try:
                return await self._append(stream, records, limit)
            except StreamNotFound:
                # "No responders" also answers a stream that exists but has no leader
                # yet (just created, or a server of its cluster died): retry that one.
                await self._stream_info(stream)  # StreamNotFound when it really is gone
                if loop.time() >= deadline:
                    raise LogUnavailable(
                        f"stream {stream!r} has no leader in JetStream (electing one?)"
                    ) from None
                await asyncio.sleep(NO_LEADER_RETRY)

    async def _append(self, stream: str, records: list[bytes], limit: int) -> list[int]:
        subject = self.subject(stream)
        nc, loop = self._nc, asyncio.get_running_loop()
        futures: list[asyncio.Future[int]] = []
        replies: list[str] = []
        # One timer for the whole append: PubAcks that have not come by then fail it.
        timer = loop.call_later(self.request_timeout, _expire, futures)
        try:
            for record in records:
                reply = f"{self._ack_prefix}{next(self._ack_tokens)}"
                future: asyncio.Future[int] = loop.create_future()
                self._acks[reply] = future
                futures.append(future)
                replies.append(reply)
                await nc.publish(subject, record, reply=reply)
            if not nc.is_connected:  # dropped while publishing: no PubAck will come
                raise LogUnavailable("the NATS connection was lost")
            if len(futures) == 1:
                offsets = [await futures[0]]
            else:
                offsets = list(await asyncio.gather(*futures))
        except (*NATS_ERRORS, LogError) as exc:
            if isinstance(exc, nats.js.errors.APIError) and exc.err_code == _ERR_MESSAGE_TOO_BIG:
                self._max_sizes.pop(stream, None)
                raise EventTooLarge(max(map(len, records)), limit) from exc
            raise translate(exc, stream) from exc
        finally:
            timer.cancel()
            for reply, future in zip(replies, futures, strict=True):
                self._acks.pop(reply, None)  # normally gone already, with its PubAck
                if not future.done():
                    future.cancel()
        return offsets

    def reader(self, stream: str, consumer: str, start: Start = EARLIEST) -> JetStreamReader:
        if self._closed:
            raise LogClosed("the JetStream log is closed")
        reader = JetStreamReader(self, stream, consumer, start)
        self._readers.add(reader)
        return reader

    async def delete_consumer(self, stream: str, consumer: str) -> None:
        js = await self._context()
        try:
            await js.delete_consumer(self.stream_name(stream), nats_token(consumer))
        except nats.js.errors.NotFoundError:
            await self._stream_info(stream)  # a missing stream is still an error
        except NATS_ERRORS as exc:
            raise translate(exc, stream) from exc

    async def reset_consumer(self, stream: str, consumer: str) -> int:
        """Make ``consumer`` deliver again everything after its position, in order.

        JetStream redelivers what a reader that died held only after
        ``ack_wait``, while the consumer hands newer entries to other readers
        at once: one key's events would then arrive out of order. An ordered
        Trigger that moves to another node calls this first: the consumer is
        recreated at its position (its ack floor, the low-water mark), so that
        everything not acknowledged below the first gap comes again, first
        and in order (those acknowledged out of order above it come again too:
        at least once). Returns the position; a consumer that does not exist
        yet is left to be created by its first reader.
        """
        js = await self._context()
        name, durable = self.stream_name(stream), nats_token(consumer)
        try:
            try:
                info = await js.consumer_info(name, durable)
            except nats.js.errors.NotFoundError:
                await self._stream_info(stream)  # a missing stream is still an error
                return 0
            _, position = consumer_position(info)
            await js.delete_consumer(name, durable)
            config = self._consumer_config(consumer, Start.at_offset(position + 1), position)
            await js.add_consumer(name, config)
        except NATS_ERRORS as exc:
            raise translate(exc, stream) from exc
        return position

    async def _stream_info(self, stream: str) -> Any:
        js = await self._context()
        try:
            return await js.stream_info(self.stream_name(stream))
        except NATS_ERRORS as exc:
            raise translate(exc, stream) from exc

    async def info(self, stream: str) -> StreamInfo:
        found = await self._stream_info(stream)
        js = await self._context()
        consumers: list[Any] = []
        try:
            while True:  # the server lists consumers in pages
                page = await js.consumers_info(self.stream_name(stream), offset=len(consumers))
                consumers += page
                if len(page) < _CONSUMER_PAGE:
                    break
        except NATS_ERRORS as exc:
            raise translate(exc, stream) from exc
        state, config = found.state, found.config
        last = state.last_seq
        first = last + 1 if state.messages == 0 else state.first_seq
        return stream_info(
            stream,
            first=first,
            last=last,
            size=state.bytes,
            dropped=first - 1,
            config=StreamConfig(
                max_age=config.max_age or None,
                max_bytes=config.max_bytes if config.max_bytes and config.max_bytes > 0 else None,
                max_events=config.max_msgs if config.max_msgs and config.max_msgs > 0 else None,
                max_event_size=config.max_msg_size
                if config.max_msg_size and config.max_msg_size > 0
                else DEFAULT_MAX_EVENT_SIZE,
                replicas=config.num_replicas or 1,
            ),
            positions=[consumer_position(c) for c in consumers],
        )

    async def close(self) -> None:
        if self._closed:
            return
        for reader in list(self._readers):
            with contextlib.suppress(LogError):
                await reader.close()
        self._closed = True
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await nc.close()

    # -- for readers ----------------------------------------------------------------------

    def _background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` of a closed reader's; cancelled when the log closes."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _consumer_config(self, consumer: str, start: Start, base: int) -> Any:
        config = api.ConsumerConfig(
            durable_name=nats_token(consumer),
            description=describe(consumer, base),
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=api.DeliverPolicy.ALL,
        )
        if start.kind is StartKind.LATEST:
            config.deliver_policy = api.DeliverPolicy.NEW
        elif start.kind is StartKind.OFFSET:
            config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = start.offset
        elif start.kind is StartKind.TIME:
            config.deliver_policy = api.DeliverPolicy.BY_START_TIME
            config.opt_start_time = datetime.fromtimestamp(start.timestamp, UTC)
        return config

    async def _consumer(self, stream: str, consumer: str, start: Start) -> tuple[str, int]:
        """Create the durable consumer on first use; its pull subject and start.

        The start is the offset the consumer started after: JetStream starts a
        consumer whose start lies beyond the stream's end at the end instead,
        so readers skip (and ack) what comes before a start in the future.
        """
        js = await self._context()
        name = self.stream_name(stream)
        durable = nats_token(consumer)
        try:
            try:
                info = await js.consumer_info(name, durable)
            except nats.js.errors.NotFoundError:
                found = await self._stream_info(stream)  # StreamNotFound, not "no consumer"
                base = start.position(found.state.last_seq, lambda _: 1)
                config = self._consumer_config(consumer, start, base)
                # A time start's offset is known to the server only (and it
                # refuses to update the config later): its base stays 0, so
                # its position reads 0 until its first ack.
                info = await js.add_consumer(name, config)
        except NATS_ERRORS as exc:
            raise translate(exc, stream) from exc
        return PULL_SUBJECT.format(stream=name, consumer=durable), described(info)[1]

    async def _flush(self) -> None:
        await self._context()
        try:
            await self._nc.flush(timeout=self.request_timeout)
        except NATS_ERRORS as exc:
            raise translate(exc) from exc


def _expire(futures: list[asyncio.Future[int]]) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(LogUnavailable("no PubAck from JetStream in time"))
