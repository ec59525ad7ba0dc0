"""The in-memory state store: for tests, and for a node that keeps nothing.

How this works: a bucket is a dict from key to its latest :class:`Entry`,
tombstones included (so that a watcher sees deletes), and the bucket's last
revision. Every call completes at once; nothing survives the process.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime

from headwater.state._watch import Signal, watch_changes
from headwater.state.base import (
    Entry,
    RevisionMismatch,
    StateClosed,
    check_bucket,
    check_key,
    check_prefix,
    check_revision,
    check_value,
)

__all__ = ["MemoryBucket", "MemoryStore"]


class MemoryBucket:
    """A :class:`~headwater.state.Bucket` in a dict."""

    def __init__(self, store: MemoryStore, name: str) -> None:
        self._store = store
        self._name = name
        self._entries: dict[str, Entry] = {}
        self._revision = 0
        self.signal = Signal()

    @property
    def name(self) -> str:
        return self._name

    def __repr__(self) -> str:
        return f"MemoryBucket({self._name!r})"

    def _live(self, key: str) -> Entry | None:
        entry = self._entries.get(key)
        return entry if entry is not None and not entry.deleted else None

    def _write(self, key: str, value: bytes, deleted: bool, expected: int | None) -> int | None:
        """One write; None (nothing written) for an unconditional delete of a missing key."""
        self._store.check_open()
        current = self._live(key)
        actual = current.revision if current is not None else 0
        if expected is not None and expected != actual:
            raise RevisionMismatch(self._name, key, expected, actual)
        if deleted and current is None:
            return None
        self._revision += 1
        self._entries[key] = Entry(
            self._name,
            key,
            value,
            self._revision,
            datetime.fromtimestamp(self._store.clock(), UTC),
            "delete" if deleted else "put",
        )
        self.signal.notify()
        return self._revision

    def _put(self, key: str, value: bytes, expected: int | None) -> int:
        revision = self._write(check_key(key), check_value(value), False, expected)
        assert revision is not None  # only deletes write nothing
        return revision

    async def get(self, key: str) -> Entry | None:
        self._store.check_open()
        return self._live(check_key(key))

    async def put(self, key: str, value: bytes) -> int:
        return self._put(key, value, None)

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, 0)

    async def update(self, key: str, value: bytes, expected_revision: int) -> int:
        return self._put(key, value, check_revision(expected_revision))

    async def delete(self, key: str, expected_revision: int | None = None) -> int | None:
        expected = None if expected_revision is None else check_revision(expected_revision)
        return self._write(check_key(key), b"", True, expected)

    async def write_many(self, changes: Mapping[str, bytes | None]) -> None:
        self._store.check_open()
        checked = [
            (check_key(k), check_value(v) if v is not None else None) for k, v in changes.items()
        ]
        for key, value in checked:
            self._write(key, value if value is not None else b"", value is None, None)

    async def keys(self, prefix: str = "") -> list[str]:
        self._store.check_open()
        check_prefix(prefix)
        return sorted(k for k, e in self._entries.items() if not e.deleted and k.startswith(prefix))

    async def revision(self) -> int:
        self._store.check_open()
        return self._revision

    async def _changes_after(self, prefix: str, seen: int) -> list[Entry]:
        self._store.check_open()
        return sorted(
            (e for e in self._entries.values() if e.revision > seen and e.key.startswith(prefix)),
            key=lambda e: e.revision,
        )

    def watch(self, prefix: str = "", *, after: int | None = None) -> AsyncIterator[Entry]:
        check_prefix(prefix)
        start = self._revision if after is None else check_revision(after)
        return watch_changes(
            lambda seen: self._changes_after(prefix, seen),
            start,
            self.signal,
            closed=lambda: self._store.closed,
        )


class MemoryStore:
    """A :class:`~headwater.state.StateStore` that lives as long as the object."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.closed = False
        self._buckets: dict[str, MemoryBucket] = {}

    def check_open(self) -> None:
        if self.closed:
            raise StateClosed("the state store was closed")

    async def bucket(self, name: str) -> MemoryBucket:
        self.check_open()
        check_bucket(name)
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = MemoryBucket(self, name)
        return bucket

    async def close(self) -> None:
        self.closed = True
        for bucket in self._buckets.values():
            bucket.signal.notify()
