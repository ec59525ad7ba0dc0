"""The nodes of a mesh: each one's heartbeat in a KV bucket whose entries expire.

How this works: every node writes its :class:`NodeInfo` (name, version,
addresses, uptime, connected devices, load) under its name in the ``nodes``
bucket every :data:`HEARTBEAT_INTERVAL` seconds; the bucket keeps an entry
for :data:`NODE_TTL` seconds after its last write, so a node that stops
(or dies) drops out of ``headwater get nodes`` by itself, and a stopping
node removes its entry at once. ``nodes()`` lists the entries whose last
heartbeat is recent.

Joining checks two things before anything runs (:meth:`NodeRegistry.join`):

- **one name, one node**: a live entry under this name written by another
  process (another ``instance``, a random id kept in the data directory) is
  a second node started with the same ``--node-name``; it is refused. The
  same instance restarting (after a crash its entry is still there) takes
  its name back.
- **one mesh protocol**: :data:`MESH_PROTOCOL` numbers what nodes exchange
  (KV documents, NATS subjects, stream layouts); a node whose protocol
  differs from a live node's is refused with both versions named, since the
  two would misread each other's state. Releases that speak the same
  protocol may run side by side (a rolling upgrade); that is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from headwater import __version__
from headwater.cluster.connection import ClusterError
from headwater.state import Bucket, StateError

__all__ = [
    "HEARTBEAT_INTERVAL",
    "MESH_PROTOCOL",
    "NODES_BUCKET",
    "NODE_TTL",
    "NodeInfo",
    "NodeRegistry",
    "instance_id",
]

log = logging.getLogger(__name__)

MESH_PROTOCOL: Final = 1
"""What nodes exchange, numbered: bump it when a KV document, a subject or a
stream layout changes in a way an older node would misread."""

NODES_BUCKET: Final = "nodes"

HEARTBEAT_INTERVAL: Final = 2.0
"""Seconds between heartbeats: the freshness of ``get nodes``."""

NODE_TTL: Final = 10.0
"""Seconds a node stays listed after its last heartbeat (five heartbeats missed)."""

INSTANCE_FILE: Final = "node-id"


def instance_id(data_dir: Path) -> str:
    """This node's instance id, kept in its data directory (made once)."""
    path = data_dir / INSTANCE_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if not text:
        text = secrets.token_hex(8)
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text


@dataclass(slots=True)
class NodeInfo:
    """What a node says about itself in each heartbeat."""

    name: str
    version: str = __version__
    protocol: int = MESH_PROTOCOL
    instance: str = ""
    started: float = 0.0
    heartbeat: float = 0.0
    addresses: dict[str, str] = field(default_factory=dict)
    """Where it listens: ``http``, ``mqtt/<namespace>/<name>``."""
    devices: int = 0
    """MQTT clients connected to it now."""
    cpu: float = 0.0
    """Share of one CPU core the process used since its previous heartbeat."""
    rss: int = 0
    """Resident memory, in bytes."""
    loadavg: float = 0.0
    """The machine's one-minute load average."""

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        out = asdict(self)
        out["uptimeSeconds"] = round(max(0.0, now - self.started), 3)
        out["heartbeatAgeSeconds"] = round(max(0.0, now - self.heartbeat), 3)
        return out

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> NodeInfo:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in doc.items() if k in known})


class _Load:
    """The process's CPU share between two calls, and its memory."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._at = time.monotonic()

    def sample(self) -> tuple[float, int, float]:
        cpu, at = time.process_time(), time.monotonic()
        share = (cpu - self._cpu) / (at - self._at) if at > self._at else 0.0
        self._cpu, self._at = cpu, at
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with contextlib.suppress(OSError), open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return round(share, 4), rss, round(load, 2)


class NodeRegistry:
    """This node's heartbeat and everyone's (see the module docstring)."""

    def __init__(
        self,
        bucket: Bucket,
        name: str,
        instance: str,
        *,
        addresses: Callable[[], dict[str, str]] = dict,
        devices: Callable[[], int] = lambda: 0,
        interval: float = HEARTBEAT_INTERVAL,
        ttl: float = NODE_TTL,
    ) -> None:
        self.bucket = bucket
        self.name = name
        self.instance = instance
        self.started = time.time()
        self._addresses = addresses
        self._devices = devices
        self.interval = interval
        self.ttl = ttl
        self._load = _Load()
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        self.clock: Callable[[], float] = time.monotonic
        #: Per node seen alive: when (``clock``) its last heartbeat was written.
        self._alive_at: dict[str, float] = {}
        #: Since when (``clock``) this process's looks at the registry succeed.
        self._looking_since: float | None = None

    def info(self) -> NodeInfo:
        cpu, rss, load = self._load.sample()
        return NodeInfo(
            self.name,
            instance=self.instance,
            started=self.started,
            heartbeat=time.time(),
            addresses=self._addresses(),
            devices=self._devices(),
            cpu=cpu,
            rss=rss,
            loadavg=load,
        )

    async def nodes(self) -> list[NodeInfo]:
        """The live nodes, by name."""
        now = time.time()
        found: list[NodeInfo] = []
        for key in await self.bucket.keys():
            entry = await self.bucket.get(key)
            if entry is None:
                continue
            try:
                node = NodeInfo.from_json(orjson.loads(entry.value))
            except (orjson.JSONDecodeError, TypeError):
                continue
            if now - node.heartbeat <= self.ttl:
                found.append(node)
        return sorted(found, key=lambda n: n.name)

    async def live(self) -> set[str]:
        """The names of the nodes to take for alive: those with a recent heartbeat, and
        those this process saw alive less than a TTL before, counted from when its own
        looks last started to succeed. After an outage of NATS the registry's entries
        have expired; a node that is back heartbeats within seconds, and one that
        looked first must not take the others for gone meanwhile (their devices'
        wills, their sessions and presence would be closed under them). A node that
        dies while this process looks is gone a TTL after its last heartbeat, as
        before. Raises StateError when the registry cannot be read."""
        now = self.clock()
        try:
            listed = await self.nodes()
        except StateError:
            self._looking_since = None
            raise
        since = self._looking_since
        if since is None:
            since = self._looking_since = now
        wall = time.time()
        for node in listed:
            self._alive_at[node.name] = now - max(0.0, wall - node.heartbeat)
        alive = {node.name for node in listed}
        for name, at in list(self._alive_at.items()):
            if now - max(at, since) < self.ttl:
                alive.add(name)
            elif now - at > 100 * self.ttl:
                del self._alive_at[name]  # long gone: forgotten
        return alive

    async def join(self) -> None:
        """Check the name and the protocol against the live nodes, then heartbeat."""
        for node in await self.nodes():
            if node.name == self.name and node.instance != self.instance:
                where = node.addresses.get("http", "an unknown address")
                raise ClusterError(
                    f"node name {self.name!r} is taken by a running node ({where}, "
                    f"headwater {node.version}): give each node its own --node-name"
                )
            if node.protocol != MESH_PROTOCOL:
                raise ClusterError(
                    f"mixed Headwater versions: node {node.name!r} runs headwater {node.version} "
                    f"(mesh protocol {node.protocol}) and this node headwater {__version__} "
                    f"(mesh protocol {MESH_PROTOCOL}); they cannot share a mesh: run one "
                    "version on every node"
                )
            if node.version != __version__ and node.name != self.name:
                log.warning(
                    "node %s runs headwater %s, this node %s (same mesh protocol %d)",
                    node.name,
                    node.version,
                    __version__,
                    MESH_PROTOCOL,
                )
        await self.beat()
        self._task = asyncio.create_task(self._beating(), name="headwater-heartbeat")

    async def beat(self) -> None:
        await self.bucket.put(self.name, orjson.dumps(asdict(self.info())))

    async def _beating(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
                self.failures = 0
            except StateError as exc:
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    log.warning(
                        "heartbeat of node %s failed (%d times): %s", self.name, self.failures, exc
                    )

    async def leave(self) -> None:
        """Stop heartbeating and remove this node's entry (others see it gone at once)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StateError):
            await self.bucket.delete(self.name)
