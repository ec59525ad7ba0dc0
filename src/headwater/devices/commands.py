"""Commands with answers: queued durably, sent at most once per connection, tracked to the end.

How this works: a :class:`Command` goes through

    queued -> sent -> answered | failed      (the device answered; failed: with a code >= 400)
    queued | sent -> expired                 (its expiry passed with no answer)
    queued | sent -> failed                  (the device was deleted)

A command is written to the state store's ``device-commands`` bucket
(``{namespace}/{device}/{id}``) before the API answers, so it survives a
restart. While its device is connected and subscribed to its command topic
(:class:`~headwater.devices.presence.Connection` ``ready``), it is published
there (:mod:`headwater.devices.plane` says how); the record remembers the
connection it was sent on, and it is **sent at most once per connection**.
When the device reconnects, a command that is still unanswered and
unexpired is sent again, **with the same id**, so a device that already
acted on it can recognise and drop the duplicate: a device must treat the
command id as an idempotency key. An expired command is never sent (and its
MQTT 5 Message Expiry Interval makes the broker drop a copy still queued for
the device when it runs out). Nothing is retried blindly: a command is sent
again only on a new connection.

When it ends (answered, failed, expired) the record moves to the
``device-command-results`` bucket (written there first, then removed from
``device-commands``; a crash in between is repaired at the next start, the
result winning), so the queue that is read back at start holds only what is
under way. Results are kept :data:`RESULT_RETENTION` and at most
:data:`MAX_RESULTS_PER_DEVICE` per device. Command ids start with the time
they were made (milliseconds, hex), so keys sort by age and retention needs
no reads.

Changes of one device's commands are made one at a time (a lock per
device), so that an answer arriving while "sent" is being written cannot be
overtaken by it.

In a mesh every node's Commands follows the ``device-commands`` bucket with
a watcher, so that each node knows every unfinished command, whichever node
made it. The node that holds the device's connection (one node at a time:
:class:`~headwater.devices.presence.Presence` knows) is the one that sends
it, when it hears of the command or when the device (re)connects there; an
answer taken on any node finishes the command there (a command the node has
not heard of yet is read from the store). What ends a command is the result
*created* in ``device-command-results`` (compare-and-set: absent): the node
whose write comes first finishes it (its ``on_finished``, so one event in the
mesh), another that finds the result there already forgets the command, and
an answer that finds one is late or a duplicate, as on one node. The removal
from ``device-commands`` is what the other nodes' watchers see: they forget
the command and wake whoever waits for it there, who then reads the result.
"Sent" is written compare-and-set on the revision known, so that it never
brings back a command another node finished. A node keeps its own record of
a command sent on a connection it holds over what another node wrote (a
stale "sent" on the device's previous connection): a command goes out at
most once per connection, whatever order the writes are seen in.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final, Protocol

from headwater.devices.command_model import (
    DEFAULT_EXPIRY,
    MAX_COMMAND_BYTES,
    MAX_EXPIRY,
    MIN_EXPIRY,
    Command,
    Status,
    TooManyCommands,
    command_time,
    cut_response,
    new_command_id,
)
from headwater.devices.model import InvalidDevice
from headwater.devices.presence import Presence
from headwater.devices.registry import follow
from headwater.state import (
    Bucket,
    Entry,
    RevisionMismatch,
    StateClosed,
    StateError,
    StateStore,
)

__all__ = [
    "COMMANDS_BUCKET",
    "DEFAULT_EXPIRY",
    "MAX_COMMAND_BYTES",
    "MAX_EXPIRY",
    "MAX_PENDING_PER_DEVICE",
    "RESULTS_BUCKET",
    "Command",
    "Commands",
    "Sender",
    "Status",
    "TooManyCommands",
]

log = logging.getLogger(__name__)

COMMANDS_BUCKET: Final = "device-commands"
RESULTS_BUCKET: Final = "device-command-results"

MAX_PENDING_PER_DEVICE: Final = 1000
"""Commands waiting for one device at most; more is refused (429) rather than
queued without bound for a device that may never come back."""

RESULT_RETENTION: Final = 7 * 86400.0
"""How long finished commands are kept for the API and the dashboard."""

MAX_RESULTS_PER_DEVICE: Final = 100
"""Finished commands kept per device at most (the newest)."""

RETENTION_INTERVAL: Final = 3600.0
"""Seconds between two sweeps of old results."""


class Sender(Protocol):
    """What puts a command on the wire to a connected device (a device plane)."""

    def send_command(self, command: Command, now: float) -> None: ...


class Commands:
    """The command queue and its results (see the module docstring)."""

    def __init__(
        self,
        state: StateStore,
        presence: Presence,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.presence = presence
        self.clock = clock
        self._pending_bucket: Bucket | None = None
        self._results_bucket: Bucket | None = None
        #: Per device key: its unfinished commands, oldest first.
        self._pending: dict[str, dict[str, Command]] = {}
        #: Per command key: the latest revision of its queue entry known (written
        #: here or seen by the watcher); what "sent" is written compare-and-set on.
        self._revisions: dict[str, int] = {}
        self._expiry: list[tuple[float, str, str]] = []  # (expires, device key, command id)
        self._expiry_changed = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Follows the queue in a mesh (what other nodes write).
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._started = False
        self._lock = asyncio.Lock()
        #: Called with every command that finished (answered, failed, expired).
        self.on_finished: Callable[[Command], None] | None = None
        self.sent = 0
        self.answered = 0
        self.expired = 0
        self.failed = 0
        self.duplicate_answers = 0

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            pending = self._pending_bucket = await self.state.bucket(COMMANDS_BUCKET)
            results = self._results_bucket = await self.state.bucket(RESULTS_BUCKET)
            revision = await pending.revision()  # before reading: follow from there
            finished = set(await results.keys())
            for key in await pending.keys():
                if key in finished:
                    await pending.delete(key)  # moved, then the process stopped: done
                    continue
                entry = await pending.get(key)
                if entry is None:
                    continue
                command = _readable(key, entry.value)
                if command is not None:
                    self._remember(command, entry.revision)
            self._tasks = [
                asyncio.create_task(self._expire_loop(), name="devices:command-expiry"),
                asyncio.create_task(self._retention_loop(), name="devices:command-retention"),
            ]
            if self.presence.node is not None:  # a mesh: other nodes make commands too
                self._watcher = asyncio.create_task(
                    follow(pending, revision, self._followed, "device commands"),
                    name="devices:command-watch",
                )
            self._started = True

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:  # first: it starts deliveries
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if self._background:  # what was sent is recorded before the store closes
            await asyncio.gather(*self._background, return_exceptions=True)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.cancel()

    def _buckets(self) -> tuple[Bucket, Bucket]:
        if self._pending_bucket is None or self._results_bucket is None:
            raise RuntimeError("device commands are not started")
        return self._pending_bucket, self._results_bucket

    def _device_lock(self, device_key: str) -> asyncio.Lock:
        lock = self._locks.get(device_key)
        if lock is None:
            lock = self._locks[device_key] = asyncio.Lock()
        return lock

    def _remember(self, command: Command, revision: int) -> Command:
        """Keep an unfinished command (unless kept already: the watcher may have been
        first, and a delivery since); the one kept."""
        device_key = f"{command.namespace}/{command.device}"
        self._revisions[command.key] = max(revision, self._revisions.get(command.key, 0))
        queue = self._pending.setdefault(device_key, {})
        kept = queue.get(command.id)
        if kept is not None:
            return kept
        queue[command.id] = command
        heapq.heappush(self._expiry, (command.expires, device_key, command.id))
        self._expiry_changed.set()
        return command

    def _forget(self, command: Command) -> None:
        device_key = f"{command.namespace}/{command.device}"
        self._revisions.pop(command.key, None)
        queue = self._pending.get(device_key)
        if queue is not None:
            queue.pop(command.id, None)
            if not queue:
                del self._pending[device_key]
                lock = self._locks.get(device_key)
                if lock is not None and not lock.locked():
                    del self._locks[device_key]

    # -- the API's side ---------------------------------------------------------------------

    def pending_count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return sum(len(q) for q in self._pending.values())
        prefix = f"{namespace}/"
        return sum(len(q) for k, q in self._pending.items() if k.startswith(prefix))

    async def create(
        self,
        namespace: str,
        device: str,
        data: bytes,
        content_type: str | None,
        *,
        expiry: float = DEFAULT_EXPIRY,
        origin: str | None = None,
        command_id: str | None = None,
        correlation: str | None = None,
    ) -> Command:
        """Queue a command (durably) and send it at once if the device is reachable.

        ``origin`` (what made it) and ``command_id`` make a repeated request one
        command: a command of the same id, or an unfinished one of the same
        origin, is answered instead of a new one (a Trigger's redelivery of
        the same event never commands a device twice).
        """
        if len(data) > MAX_COMMAND_BYTES:
            raise InvalidDevice(
                f"a command's data is {len(data)} bytes, over the limit of {MAX_COMMAND_BYTES}"
            )
        if not (isinstance(expiry, int | float) and MIN_EXPIRY <= expiry <= MAX_EXPIRY):
            raise InvalidDevice(
                f"`expiry` must be {MIN_EXPIRY:g} to {MAX_EXPIRY:g} seconds, not {expiry!r}"
            )
        pending, _ = self._buckets()
        device_key = f"{namespace}/{device}"
        async with self._device_lock(device_key):
            queue = self._pending.get(device_key, {})
            if command_id is not None:
                known = queue.get(command_id) or await self._result(f"{device_key}/{command_id}")
                if known is not None:
                    return known  # the same request again: the same command
            if origin is not None:
                for command in queue.values():
                    if command.origin == origin:
                        return command
            if len(queue) >= MAX_PENDING_PER_DEVICE:
                raise TooManyCommands(
                    f"device {device!r} has {len(queue)} commands waiting already "
                    f"(at most {MAX_PENDING_PER_DEVICE}); let them be answered or expire"
                )
            now = self.clock()
            command = Command(
                namespace,
                device,
                command_id or new_command_id(now),
                data,
                content_type,
                now,
                now + float(expiry),
                origin=origin,
                correlation=correlation,
            )
            try:
                revision = await pending.create(command.key, command.stored())
            except RevisionMismatch:
                # Another node made the command of this id meanwhile: that one.
                stored = await pending.get(command.key)
                if stored is None:
                    found = await self._result(command.key)
                    if found is None:
                        raise
                    return found
                command, revision = Command.load(command.key, stored.value), stored.revision
            self._remember(command, revision)
        await self.deliver(namespace, device)
        return self._current(command)

    def _current(self, command: Command) -> Command:
        queue = self._pending.get(f"{command.namespace}/{command.device}", {})
        return queue.get(command.id, command)

    async def get(self, namespace: str, device: str, command_id: str) -> Command | None:
        queue = self._pending.get(f"{namespace}/{device}", {})
        command = queue.get(command_id)
        if command is not None:
            return command
        key = f"{namespace}/{device}/{command_id}"
        return await self._result(key) or await self._stored_pending(key)

    async def _stored_pending(self, key: str) -> Command | None:
        """An unfinished command from the store's queue (in a mesh: one another node
        made, that this node's watcher has not brought yet), if there is one."""
        if self.presence.node is None:
            return None  # one node: the queue in memory is the whole queue
        pending, _ = self._buckets()
        try:
            entry = await pending.get(key)
        except ValueError:  # InvalidKey: not an id this registry made
            return None
        if entry is None:
            return None
        try:
            return Command.load(key, entry.value)
        except (ValueError, KeyError, TypeError):
            return None

    async def _result(self, key: str) -> Command | None:
        """A finished command from the results, if there is one."""
        _, results = self._buckets()
        try:
            entry = await results.get(key)
        except ValueError:  # InvalidKey: not an id this registry made
            return None
        return Command.load(key, entry.value) if entry is not None else None

    async def recent(self, namespace: str, device: str, limit: int = 20) -> list[Command]:
        """The newest ``limit`` commands of a device, unfinished ones included, newest first."""
        queue = list(self._pending.get(f"{namespace}/{device}", {}).values())
        _, results = self._buckets()
        keys = await results.keys(f"{namespace}/{device}/")
        keys = sorted(keys, reverse=True)[:limit]
        finished = []
        for key in keys:
            entry = await results.get(key)
            if entry is not None:
                finished.append(Command.load(key, entry.value))
        both = sorted([*queue, *finished], key=lambda c: c.id, reverse=True)
        return both[:limit]

    async def wait(
        self, namespace: str, device: str, command_id: str, seconds: float
    ) -> Command | None:
        """The command once finished, or as it is after ``seconds``."""
        command = await self.get(namespace, device, command_id)
        if command is None or command.finished or seconds <= 0:
            return command
        key = f"{namespace}/{device}/{command_id}"
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(waiter)
        try:
            async with asyncio.timeout(seconds):  # not wait_for: it may swallow a cancel (3.11)
                await waiter
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
                if not waiters:
                    del self._waiters[key]
        return await self.get(namespace, device, command_id)

    # -- the broker's side ------------------------------------------------------------------

    async def deliver(self, namespace: str, device: str) -> int:
        """Send the device's unfinished commands not sent on its current connection yet.

        That a command was sent is recorded behind (a task that takes the
        device's lock, and writes only if the command is still unfinished):
        an answer may already be on its way, and the round trip does not wait
        for that write. If the process stops before it, the command is sent
        again at the next connection, which a device recognises by its id.
        """
        connection = self.presence.connection(namespace, device)
        device_key = f"{namespace}/{device}"
        if connection is None or not connection.ready or device_key not in self._pending:
            return 0
        sent: list[Command] = []
        async with self._device_lock(device_key):
            if self.presence.connection(namespace, device) is not connection:
                return 0  # it went away (or reconnected: that connection delivers)
            queue = self._pending.get(device_key, {})
            for command in list(queue.values()):
                now = self.clock()
                if command.connection == connection.token or command.expires <= now:
                    continue  # sent on this connection already; or expired: never sent
                connection.sender.send_command(command, now)
                self.sent += 1
                command = replace(
                    command,
                    status=Status.SENT,
                    attempts=command.attempts + 1,
                    sent_at=now,
                    connection=connection.token,
                )
                queue[command.id] = command
                sent.append(command)
        if sent:
            self._spawn(self._record_sent(device_key, sent))
        return len(sent)

    async def _record_sent(self, device_key: str, sent: list[Command]) -> None:
        pending, _ = self._buckets()
        async with self._device_lock(device_key):
            queue = self._pending.get(device_key, {})
            for command in sent:
                if queue.get(command.id) is not command:
                    continue  # finished (or sent again) meanwhile: nothing to record
                try:
                    await self._write_sent(pending, command)
                except StateError as exc:
                    # It went out; only the record of it did not: a later write catches up.
                    log.warning("device commands: cannot record %s as sent: %s", command.id, exc)

    async def _write_sent(self, pending: Bucket, command: Command) -> None:
        """Write a command sent, over the revision known (caller holds its device's lock).

        Never brings back what another node finished (removed from the queue); over
        another node's record of it (sent on the device's previous connection), this
        one, of a later send, is written."""
        key = command.key
        known = self._revisions.get(key)
        if not known:
            return  # forgotten meanwhile; 0 would be a create: it would bring it back
        try:
            revision = await pending.update(key, command.stored(), known)
        except RevisionMismatch as exc:
            if exc.actual == 0:
                return  # finished elsewhere: the watcher forgets it
            revision = await pending.update(key, command.stored(), exc.actual)
        if key in self._revisions:
            self._revisions[key] = max(revision, self._revisions[key])

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def answer(
        self,
        namespace: str,
        device: str,
        command_id: str,
        payload: bytes,
        content_type: str | None,
        code: int | None,
    ) -> bool:
        """The device answered; False when no such command is waiting (a duplicate answer)."""
        failed = code is not None and code >= 400
        changes: dict[str, Any] = {
            "status": Status.FAILED if failed else Status.ANSWERED,
            "response": cut_response(payload),
            "response_type": content_type,
            "code": 200 if code is None else code,
            "reason": f"the device answered {code}" if failed else None,
        }
        device_key = f"{namespace}/{device}"
        key = f"{device_key}/{command_id}"
        async with self._device_lock(device_key):
            command = self._pending.get(device_key, {}).get(command_id)
            if command is None:
                command = await self._stored_pending(key)
            if command is None or not await self._finish(command, **changes):
                return await self._late_answer(key, changes)
        return True

    async def _late_answer(self, key: str, changes: dict[str, Any]) -> bool:
        """An answer to a command that expired after it was sent: the device did act on it."""
        _, results = self._buckets()
        command = await self._result(key)
        if command is None or command.status != Status.EXPIRED or not command.attempts:
            self.duplicate_answers += 1
            return False
        if changes["reason"] is None:
            changes["reason"] = "answered after it expired"
        done = replace(command, finished_at=self.clock(), **changes)
        await results.put(key, done.stored())
        self._finished(done)
        return True

    async def fail_device(self, namespace: str, device: str, reason: str) -> int:
        """Fail every unfinished command of a device (it was deleted)."""
        device_key = f"{namespace}/{device}"
        count = 0
        async with self._device_lock(device_key):
            for command in list(self._pending.get(device_key, {}).values()):
                if await self._finish(command, status=Status.FAILED, reason=reason):
                    count += 1
        return count

    async def _finish(self, command: Command, **changes: Any) -> bool:
        """Move a command to the results (caller holds its device's lock); False when
        it had a result already (another node of a mesh finished it first)."""
        pending, results = self._buckets()
        done = replace(command, finished_at=self.clock(), **changes)
        try:
            await results.create(done.key, done.stored())
            first = True
        except RevisionMismatch:
            first = False  # another node's result came first: it finished the command
        # Finished once the result is durable: waiters hear it now, before the queue
        # entry goes (a crash in between leaves the entry, dropped at the next start).
        self._forget(command)
        if first:
            self._finished(done)
        else:
            self._wake(command.key)
        try:
            await pending.delete(command.key)
        except StateError as exc:
            log.warning("device commands: cannot remove %s from the queue: %s", command.id, exc)
        return first

    def _finished(self, command: Command) -> None:
        if command.status == Status.ANSWERED:
            self.answered += 1
        elif command.status == Status.EXPIRED:
            self.expired += 1
        else:
            self.failed += 1
        self._wake(command.key)
        if self.on_finished is not None:
            try:
                self.on_finished(command)
            except Exception:
                log.exception("device commands: the finished-command listener failed")

    def _wake(self, key: str) -> None:
        """Whoever waits for the command ``key``: it finished."""
        for waiter in self._waiters.get(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    # -- other nodes' commands (a mesh) --------------------------------------------------------

    def _followed(self, entry: Entry) -> None:
        """A change of the queue, this node's own writes included (seen again)."""
        key = entry.key
        if entry.revision <= self._revisions.get(key, 0):
            return  # known already (this node's own write, or older than what it wrote)
        parts = key.split("/")
        if len(parts) != 3:
            return
        namespace, device, command_id = parts
        queue = self._pending.get(f"{namespace}/{device}", {})
        kept = queue.get(command_id)
        if entry.deleted:  # finished (on this node or another): waiters read the result
            if kept is not None:
                self._forget(kept)
            self._wake(key)
            return
        command = _readable(key, entry.value)
        if command is None or command.finished:
            return
        connection = self.presence.connection(namespace, device)
        token = connection.token if connection is not None else None
        if kept is None:
            kept = self._remember(command, entry.revision)
        else:
            self._revisions[key] = entry.revision
            if token is None or kept.connection != token:
                # Unless sent on this node's connection of the device: what this node
                # knows then is newer than any other record of it (its previous one's).
                kept = queue[command_id] = command
        if connection is not None and connection.ready and kept.connection != token:
            self._spawn(self.deliver(namespace, device))  # the device is connected here

    # -- expiry and retention ----------------------------------------------------------------

    async def _expire_loop(self) -> None:
        while True:
            self._expiry_changed.clear()
            now = self.clock()
            while self._expiry and self._expiry[0][0] <= now:
                _, device_key, command_id = heapq.heappop(self._expiry)
                try:
                    await self._expire(device_key, command_id)
                except StateClosed:
                    return
                except StateError as exc:
                    log.warning("device commands: cannot expire %s: %s", command_id, exc)
                    heapq.heappush(self._expiry, (now + 5.0, device_key, command_id))
                    break
            delay = self._expiry[0][0] - self.clock() if self._expiry else 3600.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(delay, 3600.0))):
                    await self._expiry_changed.wait()

    async def _expire(self, device_key: str, command_id: str) -> None:
        async with self._device_lock(device_key):
            command = self._pending.get(device_key, {}).get(command_id)
            if command is None or command.expires > self.clock():
                return
            reason = (
                f"no answer after {command.attempts} send(s)"
                if command.attempts
                else "the device was not reachable before it expired: never sent"
            )
            await self._finish(command, status=Status.EXPIRED, reason=reason)

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except StateClosed:
                return
            except StateError as exc:
                log.warning("device commands: cannot sweep old results: %s", exc)
            await asyncio.sleep(RETENTION_INTERVAL)

    async def sweep(self) -> int:
        """Delete results older than the retention, or beyond the newest per device."""
        _, results = self._buckets()
        cutoff = self.clock() - RESULT_RETENTION
        by_device: dict[str, list[str]] = {}
        for key in await results.keys():
            device_key, _, command_id = key.rpartition("/")
            by_device.setdefault(device_key, []).append(command_id)
        removed = 0
        for device_key, ids in by_device.items():
            ids.sort(reverse=True)
            for index, command_id in enumerate(ids):
                made = command_time(command_id)
                if index >= MAX_RESULTS_PER_DEVICE or (made is not None and made < cutoff):
                    await results.delete(f"{device_key}/{command_id}")
                    removed += 1
        return removed


def _readable(key: str, value: bytes) -> Command | None:
    """The command a queue entry holds (None, logged, if it is not one)."""
    try:
        return Command.load(key, value)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("device commands: %s is not readable (%s); it is ignored", key, exc)
        return None
