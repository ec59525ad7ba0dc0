"""What a mesh runs: the ``resources`` KV bucket, written by any node, followed by all.

How this works: in a mesh every resource lives in the state store's
``resources`` bucket (JetStream KV), those of ``headwater up``'s files
included, and every node runs what the bucket holds:

- **At start** (and at each ``--watch`` reload) a node given ``-f`` writes
  its files' resources to the bucket (``source: file``; an unchanged document
  is not written again) and removes the file-defined resources its files no
  longer define: the files of the node that started (or reloaded) last are
  the mesh's files. A node started without ``-f`` leaves them alone, and
  seeds the embedded defaults only into a bucket that holds nothing else: it
  writes those still missing, so that nodes started together, each seeing
  another's seeding half done, all start with every default. Then it runs
  the whole bucket.
- **Through the API** (``headwater apply``/``delete`` on any node) a change
  is written to the bucket and applied on that node at once; as before, the
  API refuses to change what a file defines (409).
- **Following**: each node watches the bucket from the revision it loaded
  and applies every change another node made (a version it already runs is
  skipped), within the watch's delay (milliseconds). A resource whose
  references are not there yet (a Trigger written before its Broker) waits
  until they are; a delete that others still refer to waits for theirs.

Node-local settings are not stored: ``local`` turns a stored resource into
the one this node runs (``--mqtt-port`` moves the mesh's MQTT listener on
this node only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import replace
from typing import cast

from headwater.resources import ConfigError, Loaded, LoadResult, reference_problems
from headwater.runtime.applied import (
    Origin,
    Resources,
    Stored,
    parse_store_key,
    set_aside_unresolved,
    warn_skipped,
)
from headwater.runtime.reconciler import ApplyResult, Reconciler
from headwater.state import Entry, StateError, StateStore

__all__ = ["MeshResources"]

log = logging.getLogger(__name__)

Key = tuple[str, str, str]

FOLLOW_RETRY: tuple[float, float] = (0.2, 5.0)
"""Backoff bounds (seconds) for watching the bucket again after NATS failed it."""


def _same(loaded: Loaded) -> Loaded:
    return loaded


def _only_from(files: LoadResult, stored: dict[Key, Stored]) -> bool:
    """Whether the bucket holds nothing but what ``files`` (the embedded defaults of a
    node without ``-f``) define: empty, or seeded (perhaps half) by another node."""
    names = {item.file for item in files.loaded}
    return all(s.origin.source == "file" and s.origin.file in names for s in stored.values())


class MeshResources(Resources):
    """The desired state of a mesh node (see the module docstring)."""

    def __init__(
        self,
        reconciler: Reconciler,
        state: StateStore,
        node: str,
        *,
        files_given: bool,
        local: Callable[[Loaded], Loaded] = _same,
    ) -> None:
        super().__init__(reconciler, state, node)
        self.files_given = files_given
        self.local = local
        self._follower: asyncio.Task[None] | None = None
        self._waiting_deletes: set[Key] = set()
        #: Bumped after each change this node applied from another's write (tests wait on it).
        self.followed = 0

    # -- start and reload: the files into the bucket, the bucket into the reconciler ---------

    async def _write_files(self, files: LoadResult, stored: dict[Key, Stored]) -> list[Key]:
        """Store the files' resources (source: file); prune file resources they dropped.

        Returns the keys the API had applied that a file now defines.
        """
        store = await self.store()
        api_known = [
            s.loaded for s in stored.values() if s.loaded is not None and s.origin.source == "api"
        ]
        owned = {i.resource.key for i in files.loaded} | files.invalid
        files.check_references([i for i in api_known if i.resource.key not in owned])
        loaded = files.result()  # ConfigError: every problem, before anything is written
        taken = [k for k, s in stored.items() if k in owned and s.origin.source == "api"]
        for item in loaded:
            if self.files_given or item.resource.key not in stored:
                await store.save(item, source="file")
        if self.files_given:
            gone = [k for k, s in stored.items() if s.origin.source == "file" and k not in owned]
            await store.remove(gone)
            for key in gone:
                log.info("%s %s/%s is no longer in the files: removed from the mesh", *key)
        return taken

    async def _run_stored(self, stored: dict[Key, Stored]) -> ApplyResult:
        """Run what the bucket holds (under the lock): everything that resolves."""
        candidates = dict(stored)
        self.skipped.clear()
        set_aside_unresolved(candidates, set(), self.skipped)
        items = [self.local(s.loaded) for s in candidates.values() if s.loaded is not None]
        result = await self.reconciler.replace(items)
        self.origins = {key: s.origin for key, s in candidates.items()}
        return result

    async def start(self, files: LoadResult) -> ApplyResult:
        async with self._lock:
            store = await self.store()
            stored = {s.key: s for s in await store.load()}
            taken: list[Key] = []
            if self.files_given or _only_from(files, stored):
                taken = await self._write_files(files, stored)
            revision = await store.bucket.revision()
            stored = {s.key: s for s in await store.load()}
            result = await self._run_stored(stored)
        self._report(taken, result)
        self._follower = asyncio.create_task(self._follow(revision), name="mesh-resources")
        return result

    async def reload(self, files: LoadResult) -> ApplyResult:
        async with self._lock:
            store = await self.store()
            stored = {s.key: s for s in await store.load()}
            taken = await self._write_files(files, stored)
            stored = {s.key: s for s in await store.load()}
            result = await self._run_stored(stored)
        self._report(taken, result)
        return result

    def _report(self, taken: Iterable[Key], result: ApplyResult) -> None:
        for key in taken:
            log.warning(
                "%s %s/%s, applied through the API, is now defined by a file: "
                "the file's version runs and the applied copy is replaced",
                *key,
            )
        warn_skipped(self.skipped)

    async def close(self) -> None:
        task, self._follower = self._follower, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- following the other nodes ---------------------------------------------------------

    async def _follow(self, revision: int) -> None:
        store = await self.store()
        delay = FOLLOW_RETRY[0]
        while True:
            try:
                changes = cast(AsyncGenerator[Entry, None], store.bucket.watch(after=revision))
                async with contextlib.aclosing(changes):
                    async for entry in changes:
                        revision = entry.revision
                        delay = FOLLOW_RETRY[0]
                        await self._change(entry)
            except StateError as exc:
                if self.state_closed():
                    return
                log.warning("following the mesh's resources failed, again in %.1fs: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, FOLLOW_RETRY[1])

    def state_closed(self) -> bool:
        return bool(getattr(self.state, "closed", False))

    async def _change(self, entry: Entry) -> None:
        key = parse_store_key(entry.key)
        if key is None:
            return
        async with self._lock:
            known = self.origins.get(key)
            if known is not None and known.revision >= entry.revision:
                return  # this node wrote it (or already followed it)
            store = await self.store()
            changed = False
            if entry.deleted:
                self.skipped.pop(key, None)
                if self.reconciler.get(key) is not None:
                    self._waiting_deletes.add(key)
                    changed = True
            else:
                stored = store.read(key, entry)
                self._waiting_deletes.discard(key)
                self.skipped[key] = stored  # applied below when it resolves
                changed = True
            if changed:
                await self._settle()
                self.followed += 1

    async def _settle(self) -> None:
        """Apply what waits (under the lock) until nothing more resolves."""
        progress = True
        while progress:
            progress = False
            for key in sorted(self._waiting_deletes):
                try:
                    await self.reconciler.delete([key])
                except ConfigError:
                    continue  # still referred to: after the referrers' deletes
                except KeyError:
                    pass
                self._waiting_deletes.discard(key)
                self.origins.pop(key, None)
                progress = True
            for key, s in list(self.skipped.items()):
                if s.loaded is None:
                    continue
                present = {r.key for r in self.reconciler.resources()}
                if reference_problems([s.loaded], present=present - self._waiting_deletes):
                    continue
                try:
                    await self.reconciler.apply([self.local(s.loaded)])
                except ConfigError as exc:
                    self.skipped[key] = replace(s, problem="; ".join(str(p) for p in exc.problems))
                    continue
                del self.skipped[key]
                self.origins[key] = s.origin
                progress = True

    def origin(self, key: Key) -> Origin | None:
        return self.origins.get(key)
