"""The janitor of a mesh's MQTT sessions: expiry, wills, sessions of nodes that are gone.

How this works: one node at a time (the holder of the lease
``mqtt/<source>/janitor``) keeps every session document of the sessions
bucket in view (a watch from the start) and, every :data:`JANITOR_INTERVAL`:

- a session whose node is gone (no heartbeat in the node registry) is
  closed as a network failure would close it: marked disconnected, its will
  published (at once, or after its Will Delay), its document deleted if it
  was a clean session;
- a disconnected session whose Will Delay passed gets its will published
  [MQTT-3.1.2-8 (5.0)], and one whose expiry passed is ended (its consumers
  and its document deleted).

Every change is a compare-and-set on the document's revision, so a client
that reconnects meanwhile (a claim) wins over the janitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, Final, cast

import orjson

from headwater.cluster.mqtt.link import MeshUnavailable
from headwater.cluster.mqtt.session import read_doc
from headwater.mqtt.config import ClientInfo
from headwater.mqtt.packets import ProtocolVersion
from headwater.mqtt.session import NEVER_EXPIRES, Message
from headwater.state import Entry, RevisionMismatch, StateError

if TYPE_CHECKING:
    from headwater.cluster.mqtt.sessions import MeshSessions

__all__ = ["JANITOR_INTERVAL", "Janitor"]

log = logging.getLogger(__name__)

JANITOR_INTERVAL: Final = 1.0
"""Seconds between the janitor's looks at sessions (expiry, wills, orphans)."""


class Janitor:
    """The janitor of one node's :class:`MeshSessions` (see the module docstring)."""

    def __init__(self, sessions: MeshSessions) -> None:
        self.sessions = sessions

    async def run(self) -> None:
        """Hold the janitor's lease and do its work while holding it (forever)."""
        lease = self.sessions.link.lease(f"mqtt/{self.sessions.link.source}/janitor")
        while True:
            await lease.acquire()
            work = asyncio.ensure_future(self._work())
            keep = asyncio.ensure_future(lease.keep())
            try:
                await asyncio.wait({work, keep}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (work, keep):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                await lease.release()

    async def _work(self) -> None:
        bucket = self.sessions.link.sessions
        assert bucket is not None
        docs: dict[str, tuple[int, dict[str, Any]]] = {}

        async def follow() -> None:
            changes = cast(AsyncGenerator[Entry, None], bucket.watch(after=0))
            async with contextlib.aclosing(changes):
                async for entry in changes:
                    if entry.deleted:
                        docs.pop(entry.key, None)
                    else:
                        docs[entry.key] = (entry.revision, read_doc(entry))

        watcher = asyncio.ensure_future(follow())
        try:
            while True:
                await asyncio.sleep(JANITOR_INTERVAL)
                if watcher.done():
                    watcher.result()  # raises what ended it
                try:
                    live = await self.sessions.link.live_nodes()
                except StateError:
                    continue
                now = time.time()
                for key, (revision, doc) in list(docs.items()):
                    try:
                        await self._tidy(key, revision, doc, live, now)
                    except (StateError, MeshUnavailable) as exc:
                        self.sessions.throttle.warning("janitor", "MQTT session janitor: %s", exc)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _tidy(
        self,
        key: str,
        revision: int,
        doc: dict[str, Any],
        live: set[str],
        now: float,
    ) -> None:
        bucket = self.sessions.link.sessions
        assert bucket is not None
        node = doc.get("node")
        if node is not None:
            if node in live or node == self.sessions.link.node:
                return
            # Its node is gone (no heartbeat for the registry's TTL): the connection
            # ended as a network failure would end it.
            self.sessions.counters["orphans"] += 1
            log.warning("node %s is gone: closing the session of %s", node, doc.get("cid"))
            will = doc.get("will")
            delay = int((will or {}).get("delay") or 0)
            doc = {**doc, "node": None, "disc": now}
            if will is not None and (delay == 0 or not int(doc.get("exp") or 0)):
                await self._publish_will(will)
                doc["will"] = None
            elif will is not None:
                doc["will_at"] = now + delay
            if not int(doc.get("exp") or 0):
                await bucket.delete(key, expected_revision=revision)
                return
            await bucket.update(key, orjson.dumps(doc), revision)
            return
        will_at = doc.get("will_at")
        expiry = int(doc.get("exp") or 0)
        disc = float(doc.get("disc") or now)
        ends = expiry != NEVER_EXPIRES and now >= disc + expiry
        if doc.get("will") is not None and (ends or (will_at is not None and now >= will_at)):
            # [MQTT-3.1.2-8 (5.0)] after the Will Delay, or at the session's end at the latest.
            await self._publish_will(doc["will"])
            doc = {**doc, "will": None, "will_at": None}
            if not ends:
                await bucket.update(key, orjson.dumps(doc), revision)
                return
        if ends:
            self.sessions.counters["expired"] += 1
            await self.sessions.delete_consumers(dict(doc.get("cons") or {}))
            with contextlib.suppress(RevisionMismatch):
                await bucket.delete(key, expected_revision=revision)

    async def _publish_will(self, will: dict[str, Any]) -> None:
        broker = self.sessions.broker
        if broker is None:
            return
        message = Message.from_json(will["message"])
        info = will.get("info") or {}
        client = ClientInfo(
            str(info.get("client_id", message.origin or "")),
            info.get("username"),
            ProtocolVersion(int(info.get("version", 4))),
            str(info.get("listener", "")),
            str(info.get("peer", "")),
            str(info.get("user", "")),
        )
        broker.publish_will(message, client)
