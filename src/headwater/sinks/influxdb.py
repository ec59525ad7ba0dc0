"""InfluxDBSink: events as points, written in batches, each delivery acknowledged honestly.

How this works: :meth:`InfluxDBSink.deliver` turns the event into one line of
line protocol (:mod:`headwater.sinks.lineprotocol`), appends it to the open
batch with a future of its own, and waits for that future. One flusher task
seals a batch when it holds ``batch_size`` points, ``flush_interval`` after
its first point, or at once when no write is in flight (group commit: points
that arrive during a write gather into the next one), and starts its write
as soon as one of ``max_concurrent_writes`` slots is free. Many concurrent
deliveries thus share one HTTP write, and each returns only once InfluxDB
answered ``204`` for the write that carried its point (ack means written). At most ``max_buffered``
points are waiting or being written; further deliveries wait for room
(backpressure up to the Trigger's dispatcher, never dropping).

A failed write fails every delivery in it with :class:`DeliveryError`, so the
Trigger's retries and dead letter sink apply per event. 5xx, 429, timeouts
and connection errors are retryable. A ``400``/``413``/``422`` for a batch
(a line InfluxDB refused: field type conflict, bad line, too large) is
narrowed down by writing the halves again until the refused lines stand
alone: those deliveries fail, not retryable, with InfluxDB's message and the
offending line; the others succeed (writing a point twice is harmless: the
same series and timestamp overwrite the same values).

InfluxDB 1.x: ``POST /write?db=&rp=&precision=`` with basic auth;
2.x: ``POST /api/v2/write?org=&bucket=&precision=`` with ``Authorization:
Token``. Credentials go in headers only, never in URLs, reprs or logs.

Before its first write, and again after a write was told the database or
bucket is not there, the sink prepares its target: on 1.x it creates the
database (``CREATE DATABASE``, which changes nothing when it exists; skipped
with ``create_database=False``), on 2.x it looks the bucket up in its org
(a 2.x bucket has a retention policy of its own, so the sink never creates
one). What stands in the way (a bucket that is not there, a user that may not
create databases, a token InfluxDB refuses) is one clear ERROR line and the
``problem`` of :meth:`InfluxDBSink.status`, not one error per event.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Final

import aiohttp
import orjson

from headwater.cloudevents import CloudEvent
from headwater.eventing._aiohttp import new_session
from headwater.eventing.delivery import parse_retry_after, should_retry
from headwater.eventing.sink import DeliveryError
from headwater.logs import Throttle
from headwater.sinks.influx_target import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_MAX_CONCURRENT_WRITES,
    DEFAULT_WRITE_TIMEOUT,
    InfluxTarget,
)
from headwater.sinks.lineprotocol import LineProtocolError, PointMapping

__all__ = ["InfluxDBSink"]

log = logging.getLogger(__name__)

_problems = Throttle(log)
"""One line per sink and kind of problem with its target per minute."""

MAX_ERROR_BODY: Final = 4096
"""Bytes of an error response kept (it ends up in ``knativeerrordata``)."""

MAX_LINE_IN_REASON: Final = 256
"""Characters of an offending line quoted in a failure reason."""

_SPLITTABLE: Final = frozenset({400, 413, 422})
"""Statuses that blame the content of a batch, so halving it finds the culprit."""


class _Batch:
    __slots__ = ("futures", "lines", "opened")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.lines: list[bytes] = []
        self.futures: list[asyncio.Future[DeliveryError | None]] = []


class InfluxDBSink:
    """Writes each delivered event to InfluxDB as one point; see the module docstring.

    Use as ``async with InfluxDBSink(...) as sink`` (or ``start()``/``close()``):
    the flusher runs between the two, and ``close()`` writes what is buffered.
    """

    def __init__(
        self,
        target: InfluxTarget,
        mapping: PointMapping,
        *,
        session: aiohttp.ClientSession | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        max_concurrent_writes: int = DEFAULT_MAX_CONCURRENT_WRITES,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    ) -> None:
        if batch_size < 1 or max_concurrent_writes < 1 or max_buffered < batch_size:
            raise ValueError(
                "need batch_size >= 1, max_concurrent_writes >= 1, max_buffered >= batch_size"
            )
        if flush_interval < 0 or write_timeout <= 0:
            raise ValueError("flush_interval must be >= 0 and write_timeout > 0")
        self.target = target
        self.mapping = mapping
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_buffered = max_buffered
        self.write_timeout = write_timeout
        self._url = target.write_url(mapping.precision)
        self._headers = {"Content-Type": "text/plain; charset=utf-8", **target.auth_headers()}
        self._session = session
        self._owns_session = session is None
        self._slots = asyncio.Semaphore(max_concurrent_writes)
        self._writing = 0
        self._current: _Batch | None = None
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._buffered = 0
        self._closing = False
        self._flusher: asyncio.Task[None] | None = None
        # Counters for status() and metrics.
        self.points_written = 0
        self.points_failed = 0
        self.writes = 0
        self.failed_writes = 0
        self.last_error: str | None = None
        # The target's state (see prepare()): checked before the first write.
        self.problem: str | None = None
        self._prepared = False
        self._preparing = asyncio.Lock()

    def __repr__(self) -> str:
        where = self.target.database or f"{self.target.org}/{self.target.bucket}"
        return f"InfluxDBSink({self.target.redacted_url!r}, {where!r})"

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> InfluxDBSink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._flusher is not None:
            raise RuntimeError(f"{self!r} already started")
        if self._session is None:
            self._session = new_session()
        # Owned by this sink and awaited in close().
        self._flusher = asyncio.create_task(self._run(), name=f"influxdb-flusher:{self!r}")

    async def close(self) -> None:
        """Write every buffered point (bounded by ``write_timeout`` per write), then stop."""
        self._closing = True
        self._wakeup.set()
        try:
            if self._flusher is not None:
                # wait() rather than await: a flusher cancelled elsewhere is done, not an error.
                await asyncio.wait([self._flusher])
                error = None if self._flusher.cancelled() else self._flusher.exception()
                if error is not None:
                    raise error
        finally:
            if self._owns_session and self._session is not None:
                await self._session.close()
                self._session = None

    @property
    def buffered(self) -> int:
        """Points waiting for or in a write."""
        return self._buffered

    def status(self) -> dict[str, object]:
        return {
            "url": self.target.redacted_url,
            "pointsWritten": self.points_written,
            "pointsFailed": self.points_failed,
            "writes": self.writes,
            "failedWrites": self.failed_writes,
            "buffered": self._buffered,
            "lastError": self.last_error,
            "problem": self.problem,
        }

    # -- the Sink interface ------------------------------------------------------

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        if self._flusher is None or self._closing:
            raise DeliveryError(None, True, reason=f"{self!r} is not running")
        try:
            line = self.mapping.line(event, time.time_ns()).encode()
        except LineProtocolError as exc:
            # The event itself cannot become a point: trying again cannot help.
            self.points_failed += 1
            raise DeliveryError(None, False, reason=str(exc)) from exc
        while self._buffered >= self.max_buffered:
            self._space.clear()
            await self._space.wait()
            if self._closing:  # the flusher may be gone: nothing would write this point
                raise DeliveryError(None, True, reason=f"{self!r} is closing")
        future: asyncio.Future[DeliveryError | None] = asyncio.get_running_loop().create_future()
        batch = self._current
        if batch is None:
            batch = self._current = _Batch(asyncio.get_running_loop().time())
            self._wakeup.set()
        batch.lines.append(line)
        batch.futures.append(future)
        self._buffered += 1
        if len(batch.lines) >= self.batch_size:
            self._sealed.append(batch)
            self._current = None
            self._wakeup.set()
        # Cancelled here (a delivery timeout), the point is still written with
        # its batch; the retry writes it again, which overwrites it unchanged.
        error = await future
        if error is not None:
            raise DeliveryError(
                error.status,
                error.retryable,
                error.body,
                retry_after=error.retry_after,
                reason=error.reason,
            )
        return None

    # -- the flusher ---------------------------------------------------------------

    # -- the target --------------------------------------------------------------

    async def prepare(self) -> str | None:
        """Create the 1.x database / check the 2.x bucket; None when it is ready, else why.

        Once ready, later calls return at once (until a write finds the target gone).
        """
        async with self._preparing:
            if self._prepared:
                return None
            target = self.target
            if target.version == 2:
                check = self._check_bucket()
            elif target.create_database:
                check = self._create_database()
            else:
                check = self._check_database()
            try:
                problem = await check
            except TimeoutError:
                problem = f"InfluxDB did not answer within {self.write_timeout:g}s"
            except (aiohttp.ClientError, OSError) as exc:
                problem = f"InfluxDB cannot be reached: {type(exc).__name__}: {exc}"
            self._prepared = problem is None
            if problem is not None:
                _problems.error(
                    (id(self), problem), "%r: %s; writes fail until this is fixed", self, problem
                )
            elif self.problem is not None:
                log.info("%r: %s is ready", self, target.where)
            self.problem = problem
            return problem

    async def _request(
        self,
        method: str,
        path: str,
        *,
        data: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        session = self._session
        assert session is not None  # set in start()
        url = self.target.url.rstrip("/") + path
        headers = self.target.auth_headers()
        async with (
            asyncio.timeout(self.write_timeout),
            session.request(method, url, headers=headers, data=data, params=params) as response,
        ):
            return response.status, await response.content.read(MAX_ERROR_BODY)

    async def _create_database(self) -> str | None:
        """1.x: ``CREATE DATABASE`` (a no-op for a database that exists)."""
        name = (self.target.database or "").replace("\\", "\\\\").replace('"', '\\"')
        status, body = await self._request(
            "POST", "/query", data={"q": f'CREATE DATABASE "{name}"'}
        )
        if status == 200 and b'"error"' not in body:
            return None
        return (
            f"{self.target.where} does not exist and cannot be created "
            f"(InfluxDB {status}: {_message(body)}): create it "
            f'(CREATE DATABASE "{self.target.database}") or let this user create it; '
            "`createDatabase: false` stops trying"
        )

    async def _check_database(self) -> str | None:
        """1.x with ``create_database=False``: is the database there?"""
        status, body = await self._request("GET", "/query", params={"q": "SHOW DATABASES"})
        if status != 200:
            return f"cannot list the databases (InfluxDB {status}: {_message(body)})"
        try:
            series = orjson.loads(body)["results"][0].get("series") or []
            names = {row[0] for s in series for row in s.get("values") or []}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            return f"cannot list the databases (InfluxDB answered {_message(body)!r})"
        if self.target.database in names:
            return None
        return (
            f"{self.target.where} does not exist and `createDatabase: false` says not to "
            f'create it: create it (CREATE DATABASE "{self.target.database}")'
        )

    async def _check_bucket(self) -> str | None:
        """2.x: is the bucket there? (Its retention is the owner's choice: never created.)"""
        target = self.target
        status, body = await self._request(
            "GET", "/api/v2/buckets", params={"org": target.org or "", "name": target.bucket or ""}
        )
        if status == 200:
            try:
                found = orjson.loads(body).get("buckets") or []
            except (orjson.JSONDecodeError, AttributeError):
                found = []
            if any(b.get("name") == target.bucket for b in found if isinstance(b, dict)):
                return None
            return (
                f"{target.where} does not exist: create it (influx bucket create "
                f"--name {target.bucket} --org {target.org}) or fix `bucket`"
            )
        if status == 401:
            return f"InfluxDB refused the token (401: {_message(body)}): check `tokenEnv`"
        return f"cannot look up {target.where} (InfluxDB {status}: {_message(body)})"

    async def _run(self) -> None:
        await self.prepare()
        async with asyncio.TaskGroup() as writes:
            while (batch := await self._next_batch()) is not None:
                await self._slots.acquire()
                self._writing += 1
                writes.create_task(self._write_batch(batch))

    async def _next_batch(self) -> _Batch | None:
        """The next batch due for writing; ``None`` once closing and empty."""
        loop = asyncio.get_running_loop()
        while True:
            if self._sealed:
                return self._sealed.popleft()
            batch = self._current
            remaining: float | None = None
            if batch is not None:
                remaining = batch.opened + self.flush_interval - loop.time()
                # Group commit: with no write in flight there is nothing to
                # wait behind, so the batch goes now; points arriving during
                # its write gather into the next one.
                if remaining <= 0 or self._closing or self._writing == 0:
                    self._current = None
                    return batch
            elif self._closing:
                return None
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    async def _write_batch(self, batch: _Batch) -> None:
        try:
            if not self._prepared:
                await self.prepare()
            outcomes = await self._write_narrowing(batch.lines)
        except Exception as exc:  # never let one write take the flusher down
            log.exception("%r: write failed unexpectedly", self)
            failure = DeliveryError(None, True, reason=f"{type(exc).__name__}: {exc}")
            outcomes = [failure] * len(batch.lines)
        except asyncio.CancelledError:
            # The flusher itself is being cancelled (loop shutdown): nobody may
            # be left waiting on a point whose write was abandoned.
            cancelled = DeliveryError(None, True, reason="write cancelled")
            for future in batch.futures:
                if not future.done():
                    future.set_result(cancelled)
            raise
        finally:
            self._slots.release()
            self._writing -= 1
            self._buffered -= len(batch.lines)
            self._space.set()
            self._wakeup.set()  # an open batch may go now (group commit)
        for future, outcome in zip(batch.futures, outcomes, strict=True):
            if outcome is None:
                self.points_written += 1
            else:
                self.points_failed += 1
            if not future.done():
                future.set_result(outcome)

    async def _write_narrowing(self, lines: list[bytes]) -> list[DeliveryError | None]:
        """Each line's outcome; a content error on many lines is narrowed by halving."""
        error = await self._post(lines)
        if error is None:
            return [None] * len(lines)
        if error.retryable or error.status not in _SPLITTABLE:
            return [error] * len(lines)
        if len(lines) == 1:
            line = lines[0].decode(errors="replace")
            if len(line) > MAX_LINE_IN_REASON:
                line = line[:MAX_LINE_IN_REASON] + "..."
            reason = f"{error.reason}; line: {line}"
            log.warning("%r: InfluxDB refused a point: %s", self, reason)
            return [DeliveryError(error.status, False, error.body, reason=reason)]
        middle = len(lines) // 2
        return [
            *await self._write_narrowing(lines[:middle]),
            *await self._write_narrowing(lines[middle:]),
        ]

    async def _post(self, lines: list[bytes]) -> DeliveryError | None:
        session = self._session
        assert session is not None  # set in start()
        self.writes += 1
        try:
            async with (
                asyncio.timeout(self.write_timeout),
                session.post(self._url, data=b"\n".join(lines), headers=self._headers) as response,
            ):
                if 200 <= response.status < 300:
                    return None
                body = await response.content.read(MAX_ERROR_BODY)
                status = response.status
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            error = DeliveryError(None, True, reason=f"write timed out after {self.write_timeout}s")
        except (aiohttp.ClientError, OSError) as exc:
            error = DeliveryError(None, True, reason=f"{type(exc).__name__}: {exc}")
        else:
            error = DeliveryError(
                status,
                should_retry(status),
                body,
                retry_after=retry_after,
                reason=f"InfluxDB {status}: {_message(body)}",
            )
        self.failed_writes += 1
        self.last_error = error.reason or str(error)
        if error.status == 404:
            self._prepared = False  # the database or bucket went away: prepare again
        return error


def _message(body: bytes) -> str:
    """InfluxDB's error text: 1.x ``{"error": ...}``, 2.x ``{"message": ...}``, else the body."""
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode(errors="replace").strip()[:MAX_ERROR_BODY]
    if isinstance(decoded, dict):
        text = decoded.get("error") or decoded.get("message")
        if isinstance(text, str):
            return text
    return body.decode(errors="replace").strip()
