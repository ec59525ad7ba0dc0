"""One node at a time: leases on keys of a KV bucket, and components that run under one.

How this works: a :class:`Lease` is a key of the ``leases`` bucket holding
who has it. A node takes a free lease with ``create`` (compare-and-set on
"absent") and keeps it by rewriting it (compare-and-set on its own last
revision) every third of :data:`LEASE_TTL`. Nobody compares clocks across
machines: a contender that sees the same revision for a whole TTL of its
own monotonic clock concludes the holder is gone and takes the lease over
with a compare-and-set on that revision (only one contender can win). The
holder, for its part, counts from the moment it *sent* its last successful
renewal and gives the lease up (stops what it runs) after
:data:`SAFE_SHARE` of the TTL without another success, which is before any
contender can have waited a whole TTL after seeing that renewal. A node cut
off from NATS therefore stops within ``0.8 x TTL``, and another takes over
after about a TTL. A holder that stops cleanly deletes the key, and a
contender takes it within one poll.

:class:`LeasedComponent` runs a component (a PingSource, an ordered Trigger)
only while its node holds the component's lease; elsewhere it stands by
and says which node is active.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from headwater.runtime.capabilities import Removable
from headwater.state import Bucket, RevisionMismatch, StateError

__all__ = ["LEASES_BUCKET", "LEASE_TTL", "SAFE_SHARE", "Lease", "LeasedComponent"]

log = logging.getLogger(__name__)

LEASES_BUCKET: Final = "leases"

LEASE_TTL: Final = 6.0
"""Seconds without a renewal after which a lease may be taken over: how long a
singleton stays without a runner after its node died."""

SAFE_SHARE: Final = 0.8
"""A holder gives up after this share of the TTL without a successful renewal."""

POLL_SHARE: Final = 1 / 6
"""A contender looks at the lease every TTL x this (once a second at the default)."""


class Lease:
    """One key, held by at most one node at a time (see the module docstring)."""

    def __init__(
        self,
        bucket: Bucket,
        key: str,
        holder: str,
        instance: str,
        *,
        ttl: float = LEASE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.key = key
        self.holder = holder
        self.instance = instance
        self.ttl = ttl
        self.clock = clock
        self.revision = 0
        self._renewed = 0.0
        self._seen: tuple[int, float] | None = None
        #: The node that held the lease when last looked at (None: nobody).
        self.current: str | None = None

    def _value(self) -> bytes:
        return orjson.dumps({"holder": self.holder, "instance": self.instance, "at": time.time()})

    @property
    def held(self) -> bool:
        return self.revision > 0

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, ours, or left alone for a whole TTL."""
        entry = await self.bucket.get(self.key)
        sent = self.clock()
        if entry is None:
            expected = 0
        else:
            try:
                doc = orjson.loads(entry.value)
                mine = doc.get("instance") == self.instance
                self.current = str(doc.get("holder"))
            except (orjson.JSONDecodeError, AttributeError):
                mine, self.current = False, None
            if not mine:
                seen = self._seen
                if seen is None or seen[0] != entry.revision:
                    self._seen = (entry.revision, sent)
                    return False
                if sent - seen[1] < self.ttl:
                    return False
            expected = entry.revision
        try:
            self.revision = await self.bucket.update(self.key, self._value(), expected)
        except RevisionMismatch:
            return False
        self._renewed = sent
        self._seen = None
        self.current = self.holder
        return True

    async def acquire(self) -> None:
        """Wait until this node holds the lease."""
        while True:
            try:
                if await self.try_acquire():
                    return
            except StateError as exc:
                log.debug("lease %s: %s", self.key, exc)
            await asyncio.sleep(self.ttl * POLL_SHARE)

    async def keep(self) -> None:
        """Renew until the lease is lost (taken over, or not renewed in time); then return."""
        while True:
            deadline = self._renewed + self.ttl * SAFE_SHARE
            await asyncio.sleep(max(0.0, min(self.ttl / 3, deadline - self.clock())))
            sent = self.clock()
            if sent >= deadline:
                break
            try:
                async with asyncio.timeout(deadline - sent):
                    self.revision = await self.bucket.update(self.key, self._value(), self.revision)
                self._renewed = sent
            except RevisionMismatch:
                log.warning("lease %s was taken over by another node", self.key)
                break
            except (StateError, TimeoutError) as exc:
                log.debug("lease %s not renewed: %s", self.key, exc)
        if self.revision:
            log.warning(
                "lease %s: not renewed for %.1fs (NATS unreachable?): giving it up",
                self.key,
                self.clock() - self._renewed,
            )
        self.revision = 0
        self.current = None

    async def release(self) -> None:
        """Give the lease back (another node takes it within a poll)."""
        revision, self.revision = self.revision, 0
        if revision:
            with contextlib.suppress(StateError, TimeoutError):
                async with asyncio.timeout(self.ttl * SAFE_SHARE):
                    await self.bucket.delete(self.key, expected_revision=revision)
        self.current = None


class LeasedComponent:
    """Runs ``inner`` only while this node holds ``lease`` (a reconciler Component).

    ``before_start`` runs each time the lease is won, before ``inner`` starts
    (an ordered Trigger rewinds its consumer there).
    """

    def __init__(
        self,
        inner: Any,
        lease: Lease,
        *,
        before_start: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.inner = inner
        self.lease = lease
        self.before_start = before_start
        self.active = False
        self.failure: str | None = None
        self._task: asyncio.Task[None] | None = None

    def __getattr__(self, name: str) -> Any:
        # What callers look up on a component (``sink``, ``member``, ``source``)
        # is the inner one's, when this node runs it.
        if name.startswith("_") or not self.__dict__.get("active"):
            raise AttributeError(name)
        return getattr(self.__dict__["inner"], name)

    @property
    def running(self) -> Any:
        """The inner component while this node runs it, else None."""
        return self.inner if self.active else None

    async def start(self) -> None:
        # Owned and cancelled in stop(): the lease is kept as long as the resource.
        self._task = asyncio.create_task(self._run(), name=f"lease:{self.lease.key}")

    async def _run(self) -> None:
        while True:
            await self.lease.acquire()
            try:
                if self.before_start is not None:
                    await self.before_start()
                await self.inner.start()
            except Exception as exc:
                self.failure = f"{type(exc).__name__}: {exc}"
                log.exception("%s could not start on this node", self.lease.key)
                await self.lease.release()
                await asyncio.sleep(self.lease.ttl)
                continue
            self.failure = None
            self.active = True
            log.info("%s runs on this node now", self.lease.key)
            try:
                await self.lease.keep()
            finally:
                self.active = False
                await self.inner.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.lease.release()

    async def removed(self) -> None:
        """Its resource was deleted (after :meth:`stop`): what the inner component keeps
        goes too (an ordered Trigger's cursor), on every node, whichever ran it last
        (the inner one's clean-up is idempotent)."""
        if isinstance(self.inner, Removable):
            await self.inner.removed()

    async def update(self, resource: Any) -> bool:
        return False  # recreate: the new component competes for the lease again

    def status(self) -> dict[str, Any]:
        if self.active:
            return {**self.inner.status(), "activeNode": self.lease.holder}
        out: dict[str, Any] = {"activeNode": self.lease.current}
        if self.failure is not None:
            out["lastError"] = self.failure
        return out
