"""Presence: whether each device is online, since when, from where; kept across restarts.

How this works: the embedded broker tells :class:`Presence` about every
connection of a registered device (through the device plane's connect and
disconnect hooks). A device is online while it has a connection; presence
remembers *which* connection (the broker's :class:`~headwater.mqtt.config.ClientInfo`
object of it), so that a session takeover, where the new connection is
announced before the old one is closed, keeps the device online, and a
connection closed by keepalive expiry, a network failure (its will is
published) or a DISCONNECT makes it offline.

What a device's presence is changes in memory at once (the API reads it
from there) and is written to the state store's ``device-presence`` bucket
behind, by one flusher task: it writes once no change came for
:data:`FLUSH_DELAY` (or :data:`FLUSH_MAX_DELAY` after the first change
still unwritten, whatever keeps coming), in transactions of up to
:data:`FLUSH_BATCH` devices (:meth:`~headwater.state.Bucket.write_many`).
A reconnect storm of 10,000 devices thus costs each connection a dictionary
update, and the store a few writes once the storm is over, instead of one
per device (each a thread hand-over and a commit competing with the
CONNECTs), or writes every half second while the storm goes on (a thread
taking CPU the CONNECTs need: a fifth of the broker's in a ramped storm of
``benchmarks/devices.py``). At start, every stored record is read back; one
that was online when the process stopped (or crashed) is marked offline, since no
connection survives a restart. At shutdown the brokers close their
connections first, and the flusher writes what is left.

In a mesh every node's Presence writes to the one bucket and follows it
with a watcher: each record names the node that holds (held) the connection,
and what other nodes wrote is kept beside this node's own records. A device
is shown by the record of its latest connection (``connected_at``), wherever
it is: online on another node, this node's API says so. A record that ends
an older connection (the node a device moved away from, writing late) never
hides a newer one, and the flusher does not write it over a newer one it
knows of. At start a node marks offline only its own records: the others
belong to nodes that are running. A node that dies leaves records that say
its devices are online: every :data:`NODE_CHECK` seconds each node asks the
mesh which nodes are alive (a node is gone once its heartbeat is older than
the registry's TTL, ``cluster/nodes.py``) and shows such a device offline
(``reason``: the node is gone); the first live node by name writes that to
the store, so that it stays true after restarts, and tells
:meth:`Presence.on_node_gone` (its MqttBrokerSource records the
``disconnected`` event the dead node could not). A device that connected
again elsewhere meanwhile has a newer record, which wins as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from headwater.devices.model import device_key, parse_device_key
from headwater.devices.registry import follow
from headwater.state import Bucket, Entry, StateClosed, StateError, StateStore

__all__ = [
    "FLUSH_DELAY",
    "FLUSH_MAX_DELAY",
    "NODE_CHECK",
    "PRESENCE_BUCKET",
    "Connection",
    "Presence",
    "PresenceRecord",
]

log = logging.getLogger(__name__)

PRESENCE_BUCKET: Final = "device-presence"

FLUSH_DELAY: Final = 0.5
"""Seconds without a change after which the flusher writes what gathered: a
device that connects and is taken over within it costs one write."""

FLUSH_MAX_DELAY: Final = 5.0
"""Seconds at most between a change and its write, however long changes keep
coming (what a crash can lose; what another node of a mesh may lag behind)."""

FLUSH_BATCH: Final = 1000
"""Devices written per transaction at most: a storm's presence in a few commits,
none of which holds the store's writer for long."""

NODE_CHECK: Final = 5.0
"""Seconds between looks at which nodes of a mesh are alive (their devices'
records are ended when their node is gone)."""

RETRY_DELAY: Final = 5.0
"""Seconds before writing again after the store failed (what is dirty stays dirty)."""


@dataclass(frozen=True, slots=True)
class PresenceRecord:
    """A device's presence as the API shows it and the store keeps it."""

    online: bool
    #: When the current (online) or last connection began, and when the last one ended.
    connected_at: float | None = None
    disconnected_at: float | None = None
    address: str | None = None
    protocol: str | None = None
    client_id: str | None = None
    listener: str | None = None
    #: ``namespace/name`` of the MqttBrokerSource the device is (was last) connected to.
    broker: str | None = None
    credential: str | None = None
    connections: int = 0
    #: Why the last connection ended, when known (``headwater stopped``).
    reason: str | None = None
    #: The mesh node that holds (held) the connection; None on a single node.
    node: str | None = None

    @property
    def last_seen(self) -> float | None:
        """Now for an online device; else when its last connection ended."""
        if self.online:
            return time.time()
        return self.disconnected_at or self.connected_at

    def to_json(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "connectedAt": self.connected_at,
            "disconnectedAt": self.disconnected_at,
            "lastSeen": self.last_seen,
            "address": self.address,
            "protocol": self.protocol,
            "clientId": self.client_id,
            "listener": self.listener,
            "broker": self.broker,
            "credential": self.credential,
            "connections": self.connections,
            "reason": self.reason,
            "node": self.node,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> PresenceRecord:
        return cls(
            bool(doc.get("online")),
            doc.get("connectedAt"),
            doc.get("disconnectedAt"),
            doc.get("address"),
            doc.get("protocol"),
            doc.get("clientId"),
            doc.get("listener"),
            doc.get("broker"),
            doc.get("credential"),
            int(doc.get("connections") or 0),
            doc.get("reason"),
            doc.get("node"),
        )


@dataclass(slots=True)
class Connection:
    """A device's live connection: who to ask to send it something."""

    info: object
    """The broker's ClientInfo of the connection (compared by identity)."""
    sender: Any
    """The device plane of the broker it is connected to."""
    token: str
    """Unique per connection (and per process run): "sent on this connection"."""
    ready: bool = False
    """Subscribed to its command topic: commands can reach it."""


class Presence:
    """Presence of every device (see the module docstring); ``await start()`` first."""

    def __init__(
        self,
        state: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        node: str | None = None,
        live_nodes: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.state = state
        self.clock = clock
        #: This node's name in a mesh (None: a single node, no one else writes).
        self.node = node
        #: The names of the mesh's live nodes (a mesh only).
        self.live_nodes = live_nodes
        self._reaper: asyncio.Task[None] | None = None
        self._bucket: Bucket | None = None
        #: This node's records: its connections' (and, single node, every record).
        self._records: dict[str, PresenceRecord] = {}
        #: The latest record other nodes wrote per device (a mesh only).
        self._remote: dict[str, PresenceRecord] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._live: dict[str, Connection] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._started = False
        self._lock = asyncio.Lock()
        self._gone_listeners: list[Callable[[str, str, PresenceRecord], None]] = []
        self.write_failures = 0
        #: Changes so far (the flusher waits for a pause in them).
        self._changes = 0

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            bucket = self._bucket = await self.state.bucket(PRESENCE_BUCKET)
            revision = await bucket.revision()
            now = self.clock()
            for key in await bucket.keys():
                entry = await bucket.get(key)
                if entry is None or parse_device_key(key) is None:
                    continue
                record = _parse(entry.value)
                if record is None:
                    continue
                if self._foreign(record):
                    self._remote[key] = record
                    continue
                if record.online:
                    # Online when the process stopped: no connection survives a restart.
                    record = replace(
                        record,
                        online=False,
                        disconnected_at=record.disconnected_at or now,
                        reason="headwater restarted",
                    )
                    self._dirty.add(key)
                self._records[key] = record
            self._flusher = asyncio.create_task(self._flush_loop(), name="devices:presence")
            if self.node is not None:
                self._watcher = asyncio.create_task(
                    self._watch(bucket, revision), name="devices:presence-watch"
                )
                if self.live_nodes is not None:
                    self._reaper = asyncio.create_task(
                        self._reap_loop(), name="devices:presence-nodes"
                    )
            if self._dirty:
                self._wake.set()
            self._started = True

    async def close(self) -> None:
        """Write what is left, then stop the flusher (and the watcher)."""
        for task in (self._reaper, self._watcher, self._flusher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reaper = self._watcher = self._flusher = None
        with contextlib.suppress(StateError):
            await self._flush()

    # -- other nodes' records (a mesh) ---------------------------------------------------

    def _foreign(self, record: PresenceRecord) -> bool:
        return self.node is not None and record.node is not None and record.node != self.node

    async def _watch(self, bucket: Bucket, after: int) -> None:
        await follow(bucket, after, self._followed, "device presence")

    def _followed(self, entry: Entry) -> None:
        if entry.deleted:
            self._remote.pop(entry.key, None)
            return
        record = _parse(entry.value)
        if record is None:
            return
        if self._foreign(record):
            self._remote_record(entry.key, record)
        elif not record.online and entry.key in self._live and record.node == self.node:
            # Another node took this one for dead (its heartbeat came too late) and
            # ended a connection that is still here: the live record is written again.
            self._dirty.add(entry.key)
            self._wake.set()

    def _remote_record(self, key: str, record: PresenceRecord) -> None:
        """Keep another node's record unless it is about an older connection than the one kept."""
        kept = self._remote.get(key)
        if kept is None or _since(record) >= _since(kept):
            self._remote[key] = record
        own = self._records.get(key)
        if key in self._live and own is not None and _since(own) > _since(record):
            # The node the device left wrote the end of its connection after this
            # node's record of the newer one: this node writes it again, so that
            # what the store keeps (and a starting node reads) is the live one.
            self._dirty.add(key)
            self._wake.set()

    async def _reap_loop(self) -> None:
        assert self.live_nodes is not None
        while True:
            await _sleep(NODE_CHECK)
            try:
                await self.nodes_gone(await self.live_nodes())
            except StateError as exc:
                log.warning("device presence: nodes of the mesh not checked: %s", exc)
            except Exception:
                log.exception("device presence: nodes of the mesh not checked")

    async def nodes_gone(self, live: set[str]) -> int:
        """End the connections other nodes' records show online on nodes not in
        ``live`` (they died); the first of ``live`` by name writes the records.
        Returns how many devices went offline."""
        live = live | {self.node} if self.node is not None else live
        gone = {
            key: record
            for key, record in self._remote.items()
            if record.online and record.node not in live and key not in self._live
        }
        if not gone:
            return 0
        now = self.clock()
        ended = {
            key: replace(
                record, online=False, disconnected_at=now, reason=f"node {record.node} is gone"
            )
            for key, record in gone.items()
        }
        self._remote.update(ended)
        if self.node == min(live) and self._bucket is not None:
            try:
                await self._bucket.write_many(
                    {key: orjson.dumps(record.to_json()) for key, record in ended.items()}
                )
            except BaseException:
                for key, record in gone.items():  # asked again at the next look
                    if self._remote.get(key) is ended[key]:
                        self._remote[key] = record
                raise
            for key, record in ended.items():
                parsed = parse_device_key(key)
                if parsed is None:
                    continue
                for listener in self._gone_listeners:
                    try:
                        listener(*parsed, record)
                    except Exception:
                        log.exception("a presence listener failed")
        log.warning(
            "device presence: %d device(s) offline: gone from the mesh: %s",
            len(ended),
            ", ".join(sorted({str(r.node) for r in ended.values()})),
        )
        return len(ended)

    def _shown(self, key: str) -> PresenceRecord | None:
        """The record of the device's latest connection, this node's or another's."""
        own = self._records.get(key)
        if key in self._live:
            return own
        other = self._remote.get(key)
        if other is None or (own is not None and _since(own) >= _since(other)):
            return own
        return other

    def on_node_gone(self, listener: Callable[[str, str, PresenceRecord], None]) -> None:
        """``listener(namespace, device id, record)`` for each connection this node
        ended because its node is gone (on the node that writes those records only,
        so that each is told once in the mesh)."""
        self._gone_listeners.append(listener)

    # -- what the API reads ------------------------------------------------------------

    def get(self, namespace: str, device_id: str) -> PresenceRecord | None:
        """The device's presence, on whichever node of the mesh it is connected to."""
        return self._shown(device_key(namespace, device_id))

    def online(self, namespace: str, device_id: str) -> bool:
        """Connected here, or (a mesh) to another node by its latest record."""
        key = device_key(namespace, device_id)
        if key in self._live:
            return True
        shown = self._shown(key)
        return shown is not None and shown.online and self._foreign(shown)

    def local(self, namespace: str, device_id: str) -> PresenceRecord | None:
        """This node's own record of the device (its connection here, if any)."""
        return self._records.get(device_key(namespace, device_id))

    def connection(self, namespace: str, device_id: str) -> Connection | None:
        return self._live.get(device_key(namespace, device_id))

    def online_count(self) -> int:
        """Devices connected to this node."""
        return len(self._live)

    # -- what the broker tells -----------------------------------------------------------

    def connected(
        self,
        namespace: str,
        device_id: str,
        connection: Connection,
        *,
        address: str,
        protocol: str,
        client_id: str,
        listener: str,
        broker: str,
        credential: str | None,
    ) -> PresenceRecord:
        key = device_key(namespace, device_id)
        self._live[key] = connection
        previous = self._shown(key)
        record = PresenceRecord(
            True,
            self.clock(),
            previous.disconnected_at if previous else None,
            address,
            protocol,
            client_id,
            listener,
            broker,
            credential,
            (previous.connections if previous else 0) + 1,
            node=self.node,
        )
        self._set(key, record)
        return record

    def disconnected(self, namespace: str, device_id: str, info: object) -> PresenceRecord | None:
        """The connection ``info`` ended; None when it was not the device's current one
        (it was taken over: the device is still online)."""
        key = device_key(namespace, device_id)
        live = self._live.get(key)
        if live is None or live.info is not info:
            return None
        del self._live[key]
        previous = self._records.get(key)
        record = (
            replace(previous, online=False, disconnected_at=self.clock(), reason=None)
            if previous
            else PresenceRecord(False, disconnected_at=self.clock())
        )
        self._set(key, record)
        return record

    def forget(self, namespace: str, device_id: str) -> None:
        """The device was deleted: its presence goes too."""
        key = device_key(namespace, device_id)
        self._live.pop(key, None)
        self._remote.pop(key, None)
        if self._records.pop(key, None) is not None:
            self._dirty.add(key)
            self._wake.set()

    def _set(self, key: str, record: PresenceRecord) -> None:
        self._records[key] = record
        self._dirty.add(key)
        self._changes += 1
        self._wake.set()

    # -- writing behind --------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            first = loop.time()
            while True:
                seen = self._changes
                await _sleep(FLUSH_DELAY)
                if self._changes == seen or loop.time() - first >= FLUSH_MAX_DELAY:
                    break  # quiet for FLUSH_DELAY, or waited long enough
            self._wake.clear()
            try:
                await self._flush()
            except StateClosed:
                return
            except StateError as exc:
                self.write_failures += 1
                log.warning("device presence: cannot write to the state store: %s", exc)
                await asyncio.sleep(RETRY_DELAY)
                self._wake.set()

    async def _flush(self) -> None:
        bucket = self._bucket
        if bucket is None:
            return
        while self._dirty:
            keys = [self._dirty.pop() for _ in range(min(FLUSH_BATCH, len(self._dirty)))]
            changes: dict[str, bytes | None] = {}
            for key in keys:
                record = self._records.get(key)
                other = self._remote.get(key)
                if record is not None and other is not None and _since(other) > _since(record):
                    continue  # another node holds a newer connection: its record stays
                changes[key] = orjson.dumps(record.to_json()) if record is not None else None
            if not changes:
                continue
            try:
                await bucket.write_many(changes)
            except BaseException:
                self._dirty.update(keys)
                raise


_sleep = asyncio.sleep  # the flusher's (a test steps it)


def _parse(value: bytes) -> PresenceRecord | None:
    try:
        return PresenceRecord.from_json(orjson.loads(value))
    except (orjson.JSONDecodeError, TypeError, ValueError):
        return None


def _since(record: PresenceRecord) -> float:
    """When the connection a record is about began (what orders records of one device)."""
    return record.connected_at or 0.0
