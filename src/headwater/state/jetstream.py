"""The state store on NATS JetStream KV: buckets every node of a mesh shares.

How this works: each bucket is a JetStream KV bucket, laid out as NATS's own
KV is (stream ``KV_<namespace>_<name>``, subjects ``$KV.<namespace>_<name>.<key>``,
one message per key kept, ``KV-Operation: DEL`` tombstones, roll-ups allowed,
deletes of messages denied), so that ``nats kv`` can read and write it too.
A revision is the bucket stream's sequence: per bucket, 1-based, increasing,
never reused, as the contract requires.

- **Writes** publish to the key's subject and wait for JetStream's PubAck
  (stored with the bucket's replicas). ``update`` is a compare-and-set on
  the key's last sequence (``Nats-Expected-Last-Subject-Sequence``); a key
  whose last message is a tombstone counts as absent, so an ``update(key,
  value, 0)`` of a deleted key retries on the tombstone's sequence. Each
  write carries the writer's clock in a ``Headwater-Time`` header, which is
  the entry's ``updated`` (entries written by other tools use the server's
  timestamp).
- **Reads** ask the stream leader (``STREAM.MSG.GET``, not the direct get a
  replica may answer with an older value), so a read after a write on any
  node sees it.
- **Watches** are ordered push consumers (nats-py recreates them after a gap
  or missed heartbeats, e.g. when a server of the cluster dies): all keys'
  latest values first (``after=0``), or every change after a revision, or
  only new changes. The consumer of a watch is created when :meth:`watch` is
  called, and writes through the same store wait until it exists, so "from
  now on" means from the call, as for the other backends.
- **Failure**: a call while NATS is unreachable, or that gets no answer in
  ``request_timeout``, raises :class:`~headwater.state.StateUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import nats
import nats.errors
import nats.js.errors
from nats.js import api

from headwater.state.base import (
    MAX_VALUE_SIZE,
    Entry,
    Operation,
    RevisionMismatch,
    StateClosed,
    StateError,
    StateUnavailable,
    check_bucket,
    check_key,
    check_prefix,
    check_revision,
    check_value,
)

__all__ = ["DEFAULT_NAMESPACE", "JetStreamBucket", "JetStreamStore"]

DEFAULT_NAMESPACE: Final = "headwater"

DEFAULT_REQUEST_TIMEOUT: Final = 5.0
"""Seconds to wait for a PubAck or an API answer before raising StateUnavailable."""

TIME_HEADER: Final = "Headwater-Time"
"""The writer's clock at the write (seconds since the epoch), the entry's ``updated``."""

_KV_OPERATION: Final = "KV-Operation"
_DELETED: Final = ("DEL", "PURGE")
_EXPECTED_LAST: Final = "Nats-Expected-Last-Subject-Sequence"

# JetStream API error codes (nats-server's errors.json).
_ERR_WRONG_LAST_SEQUENCE: Final = 10071
_ERR_NO_MESSAGE: Final = 10037
_ERR_STREAM_NOT_FOUND: Final = 10059

log = logging.getLogger(__name__)

_NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)

OPEN_ATTEMPTS: Final = 4
"""Tries to open a bucket while JetStream answers late: a cluster that creates
streams for several nodes starting at once, or elects their leaders, can take
longer than one ``request_timeout`` (as the event log's ``CREATE_ATTEMPTS``)."""


class _NoLeader(Exception):
    """A bucket's replicated stream has not elected a leader yet."""


_CLOSED: Final = object()
"""Put in a watcher's queue when the store closes."""


def _unavailable(exc: BaseException, doing: str) -> StateError:
    if isinstance(exc, StateError):
        return exc
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return StateUnavailable(f"cannot {doing}: the NATS connection is closed")
    return StateUnavailable(f"cannot {doing}: NATS JetStream: {type(exc).__name__}: {exc}")


def _time(headers: dict[str, str] | None, fallback: datetime | None) -> datetime:
    text = headers.get(TIME_HEADER) if headers else None
    if text is not None:
        with contextlib.suppress(ValueError, OverflowError):
            return datetime.fromtimestamp(float(text), UTC)
    return fallback if fallback is not None else datetime.now(UTC)


class JetStreamBucket:
    """A :class:`~headwater.state.Bucket` in a JetStream KV bucket."""

    def __init__(self, store: JetStreamStore, name: str, stream: str, prefix: str) -> None:
        self._store = store
        self._name = name
        self.stream = stream
        self.prefix = prefix  # "$KV.<bucket>."
        # Watches being set up: writes through this store wait for them (see module docstring).
        self._opening: set[asyncio.Future[Any]] = set()

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"JetStreamBucket({self.stream!r})"

    # -- reads -----------------------------------------------------------------------

    async def _last(self, key: str) -> tuple[Entry | None, int]:
        """The key's latest entry (None if absent or deleted) and its last sequence
        (a tombstone's included; 0 when the key never existed)."""
        js = self._store.js()
        try:
            message = await js.get_msg(self.stream, subject=self.prefix + key)
        except nats.js.errors.NotFoundError:
            return None, 0
        except nats.js.errors.APIError as exc:
            if exc.err_code == _ERR_NO_MESSAGE:
                return None, 0
            raise _unavailable(exc, f"read {key!r}") from exc
        except _NATS_ERRORS as exc:
            raise _unavailable(exc, f"read {key!r}") from exc
        headers = message.headers
        revision = int(message.seq or 0)
        if headers and headers.get(_KV_OPERATION) in _DELETED:
            return None, revision
        entry = Entry(
            self._name,
            key,
            bytes(message.data or b""),
            revision,
            _time(headers, message.time),
        )
        return entry, revision

    async def get(self, key: str) -> Entry | None:
        self._store.check_open()
        entry, _ = await self._last(check_key(key))
        return entry

    async def keys(self, prefix: str = "") -> list[str]:
        self._store.check_open()
        check_prefix(prefix)
        found: dict[str, bool] = {}
        async for entry in self._snapshot(headers_only=True):
            found[entry.key] = not entry.deleted
        return sorted(k for k, live in found.items() if live and k.startswith(prefix))

    async def revision(self) -> int:
        self._store.check_open()
        js = self._store.js()
        try:
            info = await js.stream_info(self.stream)
        except _NATS_ERRORS as exc:
            raise _unavailable(exc, f"read the revision of {self._name!r}") from exc
        return int(info.state.last_seq)

    # -- writes ----------------------------------------------------------------------

    async def _publish(self, key: str, value: bytes, headers: dict[str, str]) -> int:
        if self._opening:
            await asyncio.wait(set(self._opening))
        self._store.check_open()
        headers[TIME_HEADER] = repr(self._store.clock())
        js = self._store.js()
        try:
            ack = await js.publish(self.prefix + key, value, stream=self.stream, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _ERR_WRONG_LAST_SEQUENCE:
                raise _WrongLast from exc
            raise _unavailable(exc, f"write {key!r}") from exc
        except _NATS_ERRORS as exc:
            raise _unavailable(exc, f"write {key!r}") from exc
        return int(ack.seq)

    async def put(self, key: str, value: bytes) -> int:
        return await self._publish(check_key(key), check_value(value), {})

    async def write_many(self, changes: Mapping[str, bytes | None]) -> None:
        """Every change validated first, then published in order.

        JetStream before nats-server 2.12 has no atomic batch of messages, so
        "all or none" holds here for what can be refused up front (a bad key,
        a value over the limit); a NATS failure midway leaves the changes
        before it written, each at its own revision. Its one use (presence
        written behind) rewrites whole records and tolerates that.
        """
        checked = [
            (check_key(k), check_value(v) if v is not None else None) for k, v in changes.items()
        ]
        for key, value in checked:
            if value is not None:
                await self._publish(key, value, {})
                continue
            current, _ = await self._last(key)
            if current is not None:
                await self._publish(key, b"", {_KV_OPERATION: "DEL"})

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> int:
        check_key(key)
        value = check_value(value)
        expected = check_revision(expected_revision)
        last = expected
        while True:
            try:
                return await self._publish(key, value, {_EXPECTED_LAST: str(last)})
            except _WrongLast:
                current, sequence = await self._last(key)
                actual = current.revision if current is not None else 0
                if expected == 0 and current is None and sequence != last:
                    last = sequence  # deleted counts as absent: CAS on the tombstone
                    continue
                raise RevisionMismatch(self._name, key, expected, actual) from None

    async def delete(self, key: str, expected_revision: int | None = None) -> int | None:
        check_key(key)
        expected = None if expected_revision is None else check_revision(expected_revision)
        while True:
            current, _ = await self._last(key)
            actual = current.revision if current is not None else 0
            if expected is not None and expected != actual:
                raise RevisionMismatch(self._name, key, expected, actual)
            if current is None:
                return None
            headers = {_KV_OPERATION: "DEL", _EXPECTED_LAST: str(actual)}
            try:
                return await self._publish(key, b"", headers)
            except _WrongLast:
                continue  # changed between the read and the delete: look again

    # -- watches -----------------------------------------------------------------------

    def _entry(self, message: Any) -> Entry:
        headers = message.headers
        meta = message.metadata
        deleted = bool(headers) and headers.get(_KV_OPERATION) in _DELETED
        operation: Operation = "delete" if deleted else "put"
        return Entry(
            self._name,
            message.subject[len(self.prefix) :],
            b"" if deleted else bytes(message.data),
            int(meta.sequence.stream),
            _time(headers, meta.timestamp),
            operation,
        )

    async def _subscribe(
        self, queue: asyncio.Queue[Any], after: int | None, *, headers_only: bool = False
    ) -> tuple[Any, int]:
        """An ordered consumer delivering into ``queue``; with the number of messages
        it had to catch up on at creation."""
        js = self._store.js()
        policy: dict[str, Any]
        if after is None:
            policy = {"deliver_policy": api.DeliverPolicy.NEW}
        elif after == 0:
            policy = {"deliver_policy": api.DeliverPolicy.LAST_PER_SUBJECT}
        else:
            policy = {
                "deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE,
                "config": api.ConsumerConfig(opt_start_seq=after + 1),
            }

        async def arrived(message: Any) -> None:
            queue.put_nowait(message)

        try:
            sub = await js.subscribe(
                self.prefix + ">",
                stream=self.stream,
                cb=arrived,
                ordered_consumer=True,
                headers_only=headers_only,
                inactive_threshold=60.0,
                **policy,
            )
            info = await sub.consumer_info()
        except _NATS_ERRORS as exc:
            raise _unavailable(exc, f"watch {self._name!r}") from exc
        return sub, int(info.num_pending) + int(info.delivered.consumer_seq)

    async def _snapshot(self, *, headers_only: bool = False) -> AsyncIterator[Entry]:
        """Every key's latest entry (tombstones included), then stop."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sub, pending = await self._subscribe(queue, 0, headers_only=headers_only)
        try:
            for _ in range(pending):
                message = await self._store.wait(queue)
                yield self._entry(message)
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    def watch(self, prefix: str = "", *, after: int | None = None) -> AsyncIterator[Entry]:
        check_prefix(prefix)
        start = None if after is None else check_revision(after)
        self._store.check_open()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        opening = asyncio.ensure_future(self._subscribe(queue, start))
        self._opening.add(opening)
        opening.add_done_callback(self._opening.discard)
        return self._watch(prefix, queue, opening)

    async def _watch(
        self, prefix: str, queue: asyncio.Queue[Any], opening: asyncio.Future[tuple[Any, int]]
    ) -> AsyncIterator[Entry]:
        sub: Any = None
        self._store.watchers.add(queue)
        try:
            try:
                sub, _ = await opening
            except StateError:
                self._store.check_open()  # closed meanwhile: StateClosed, not "unavailable"
                raise
            seen = 0
            while True:
                message = await self._store.wait(queue)
                entry = self._entry(message)
                if entry.revision <= seen:
                    continue  # an ordered consumer recreated after a gap starts at the gap
                seen = entry.revision
                if entry.key.startswith(prefix):
                    yield entry
        finally:
            self._store.watchers.discard(queue)
            if not opening.done():
                opening.cancel()
            elif sub is None and not opening.cancelled() and opening.exception() is None:
                sub = opening.result()[0]
            if sub is not None:
                with contextlib.suppress(*_NATS_ERRORS):
                    await sub.unsubscribe()


class _WrongLast(Exception):
    """Internal: JetStream refused a write for its expected last sequence."""


class JetStreamStore:
    """A :class:`~headwater.state.StateStore` of JetStream KV buckets.

    ``servers`` (with ``connect_options`` for nats-py's ``connect``) opens a
    connection of its own, closed with the store; or ``connection`` borrows
    one (a connected nats-py client), left open. ``replicas`` is what new
    buckets get (existing ones keep theirs); ``namespace`` prefixes bucket
    names so that several deployments can share a NATS account.
    """

    def __init__(
        self,
        servers: str | Sequence[str] | None = None,
        *,
        connection: Any = None,
        namespace: str = DEFAULT_NAMESPACE,
        replicas: int = 1,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        connect_options: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        bucket_ttl: dict[str, float] | None = None,
    ) -> None:
        if (servers is None) == (connection is None):
            raise ValueError("give servers or a connection, not both or neither")
        self._servers = [servers] if isinstance(servers, str) else list(servers or ())
        self._nc: Any = connection
        self._owned = connection is None
        self._js: Any = (
            None if connection is None else connection.jetstream(timeout=request_timeout)
        )
        self.namespace = check_bucket(namespace)
        self.replicas = replicas
        self.request_timeout = request_timeout
        self._connect_options = dict(connect_options or {})
        self.clock = clock
        #: Buckets whose entries expire (seconds after their last write): a node
        #: registry's heartbeats.
        self.bucket_ttl = dict(bucket_ttl or {})
        self.closed = False
        self._buckets: dict[str, JetStreamBucket] = {}
        self._connecting = asyncio.Lock()
        self.watchers: set[asyncio.Queue[Any]] = set()

    def __repr__(self) -> str:
        return f"JetStreamStore({self.namespace!r})"

    def check_open(self) -> None:
        if self.closed:
            raise StateClosed("the state store was closed")

    def js(self) -> Any:
        if self._nc is None or not self._nc.is_connected:
            raise StateUnavailable("NATS is unreachable (reconnecting in the background)")
        return self._js

    async def wait(self, queue: asyncio.Queue[Any]) -> Any:
        """The next message of a watcher's queue; StateClosed once the store closed."""
        self.check_open()
        item = await queue.get()
        if item is _CLOSED:
            queue.put_nowait(_CLOSED)  # for any later wait on the same queue
            raise StateClosed("the state store was closed")
        return item

    async def _connect(self) -> None:
        async with self._connecting:
            if self._nc is not None:
                return
            try:
                nc = await nats.connect(
                    self._servers,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    **self._connect_options,
                )
            except (*_NATS_ERRORS, ValueError) as exc:
                raise StateUnavailable(f"cannot connect to NATS at {self._servers}: {exc}") from exc
            nc.options["max_reconnect_attempts"] = -1  # connected once: reconnect forever
            self._nc = nc
            self._js = nc.jetstream(timeout=self.request_timeout)

    async def bucket(self, name: str) -> JetStreamBucket:
        self.check_open()
        check_bucket(name)
        bucket = self._buckets.get(name)
        if bucket is not None:
            return bucket
        if self._nc is None:
            await self._connect()
        kv_name = f"{self.namespace}_{name}"
        stream = f"KV_{kv_name}"
        ttl = self.bucket_ttl.get(name)
        config = api.StreamConfig(
            name=stream,
            description=f"Headwater state: {name}",
            subjects=[f"$KV.{kv_name}.>"],
            allow_rollup_hdrs=True,
            deny_delete=True,
            discard=api.DiscardPolicy.NEW,
            duplicate_window=min(120.0, ttl) if ttl else 120.0,
            max_age=ttl,
            max_msgs=-1,
            max_msgs_per_subject=1,
            max_msg_size=MAX_VALUE_SIZE + 4096,  # a value plus its key and headers
            num_replicas=self.replicas,
            storage=api.StorageType.FILE,
        )
        js = self.js()
        for attempt in range(1, OPEN_ATTEMPTS + 1):
            try:
                try:
                    info = await js.stream_info(stream)
                except nats.js.errors.NotFoundError:
                    try:
                        info = await js.add_stream(config)
                    except nats.js.errors.BadRequestError:
                        info = await js.stream_info(stream)  # created by another node meanwhile
                await self._until_led(js, stream, info)
                break
            except (TimeoutError, nats.js.errors.ServiceUnavailableError, _NoLeader) as exc:
                if attempt == OPEN_ATTEMPTS or self.closed:
                    if isinstance(exc, _NoLeader):
                        raise StateUnavailable(str(exc)) from exc
                    raise _unavailable(exc, f"open bucket {name!r}") from exc
                log.info("opening bucket %r: %s; again (%d/%d)", name, exc, attempt, OPEN_ATTEMPTS)
            except _NATS_ERRORS as exc:
                raise _unavailable(exc, f"open bucket {name!r}") from exc
        return self._buckets.setdefault(
            name, JetStreamBucket(self, name, stream, f"$KV.{kv_name}.")
        )

    async def _until_led(self, js: Any, stream: str, info: Any) -> None:
        """Wait (up to ``request_timeout``) until a replicated bucket's stream has a
        leader: one created a moment ago answers nothing until its servers elected one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        while info.cluster is not None and not info.cluster.leader:
            if loop.time() >= deadline:
                raise _NoLeader(f"bucket stream {stream} has no leader yet")
            await asyncio.sleep(0.1)
            info = await js.stream_info(stream)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for queue in list(self.watchers):
            queue.put_nowait(_CLOSED)
        nc, self._nc = self._nc, None
        if nc is not None and self._owned:
            with contextlib.suppress(*_NATS_ERRORS):
                await nc.close()
