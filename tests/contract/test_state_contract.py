"""The state-store contract: every backend (memory, sqlite, JetStream KV) passes all of it.

The rules here are JetStream KV's (per-bucket revisions, compare-and-set on a
key's revision, tombstones that watchers see).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import pytest

from headwater.state import (
    MAX_VALUE_SIZE,
    Bucket,
    Entry,
    InvalidKey,
    MemoryStore,
    RevisionMismatch,
    SqliteStore,
    StateClosed,
    StateStore,
    ValueTooLarge,
)
from headwater.state.jetstream import JetStreamStore
from tests.servers import NatsServer

WAIT = 10.0
"""Seconds a watcher may take to see a change before the test fails (not a speed bound:
a change through the same store wakes it at once)."""

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class StateHarness(Protocol):
    async def open(self) -> StateStore: ...

    async def reopen(self, store: StateStore) -> StateStore:
        """Close ``store`` and open the same storage again (a restart)."""
        ...


class MemoryHarness:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.store = MemoryStore(clock=clock)

    async def open(self) -> StateStore:
        return self.store

    async def reopen(self, store: StateStore) -> StateStore:
        return self.store


class SqliteHarness:
    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path = path
        self.clock = clock

    async def open(self) -> StateStore:
        return await SqliteStore.open(self.path, clock=self.clock)

    async def reopen(self, store: StateStore) -> StateStore:
        await store.close()
        return await self.open()


class JetStreamHarness:
    """Buckets on the session's nats-server, under a namespace of the test's own."""

    def __init__(self, url: str, clock: Callable[[], float]) -> None:
        self.url = url
        self.clock = clock
        self.namespace = f"t{uuid.uuid4().hex[:12]}"

    async def open(self) -> StateStore:
        return JetStreamStore(self.url, namespace=self.namespace, clock=self.clock)

    async def reopen(self, store: StateStore) -> StateStore:
        await store.close()
        return await self.open()


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("jetstream", marks=pytest.mark.integration)]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> StateHarness:
    clock = lambda: NOW  # noqa: E731
    if request.param == "memory":
        return MemoryHarness(clock)
    if request.param == "jetstream":
        server: NatsServer = request.getfixturevalue("nats_server")
        return JetStreamHarness(server.url, clock)
    return SqliteHarness(tmp_path / "state.db", clock)


@pytest.fixture
async def store(harness: StateHarness) -> AsyncIterator[StateStore]:
    opened = await harness.open()
    yield opened
    await opened.close()


@pytest.fixture
async def bucket(store: StateStore) -> Bucket:
    return await store.bucket("resources")


async def next_change(changes: AsyncIterator[Entry]) -> Entry:
    async with asyncio.timeout(WAIT):
        return await anext(changes)


async def test_put_then_get_gives_the_value_the_revision_and_the_time(bucket: Bucket) -> None:
    assert await bucket.revision() == 0
    assert await bucket.put("Broker/default/default", b"one") == 1
    assert await bucket.put("Trigger/default/t", b"two") == 2
    entry = await bucket.get("Broker/default/default")
    assert entry == Entry(
        "resources", "Broker/default/default", b"one", 1, datetime.fromtimestamp(NOW, UTC)
    )
    assert not entry.deleted
    assert await bucket.get("Broker/default/missing") is None
    assert await bucket.revision() == 2


async def test_revisions_belong_to_their_bucket(store: StateStore) -> None:
    a, b = await store.bucket("a"), await store.bucket("b")
    assert await a.put("k", b"1") == 1
    assert await a.put("k", b"2") == 2
    assert await b.put("k", b"x") == 1
    assert (await store.bucket("a")).name == "a"
    assert [(await a.get("k")), (await b.get("k"))] != [None, None]


async def test_update_is_a_compare_and_set_on_the_key_revision(bucket: Bucket) -> None:
    first = await bucket.create("k", b"v1")
    with pytest.raises(RevisionMismatch) as exists:
        await bucket.create("k", b"again")
    assert (exists.value.expected, exists.value.actual) == (0, first)
    second = await bucket.update("k", b"v2", first)
    with pytest.raises(RevisionMismatch) as stale:
        await bucket.update("k", b"lost", first)
    assert (stale.value.expected, stale.value.actual) == (first, second)
    assert "changed meanwhile" in str(stale.value)
    entry = await bucket.get("k")
    assert entry is not None and (entry.value, entry.revision) == (b"v2", second)
    with pytest.raises(RevisionMismatch) as missing:
        await bucket.update("nothing", b"v", 3)
    assert missing.value.actual == 0


async def test_one_of_two_racing_updates_wins(bucket: Bucket) -> None:
    revision = await bucket.put("k", b"start")
    results = await asyncio.gather(
        *(bucket.update("k", f"writer {i}".encode(), revision) for i in range(5)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, int)]
    assert len(won) == 1
    assert all(isinstance(r, RevisionMismatch) for r in results if not isinstance(r, int))


async def test_delete_leaves_a_tombstone_and_the_key_can_come_back(bucket: Bucket) -> None:
    await bucket.put("a/1", b"x")
    await bucket.put("a/2", b"y")
    assert await bucket.delete("a/1") == 3
    assert await bucket.get("a/1") is None
    assert await bucket.keys() == ["a/2"]
    assert await bucket.delete("a/1") is None  # nothing left to delete
    assert await bucket.revision() == 3
    with pytest.raises(RevisionMismatch):
        await bucket.delete("a/2", expected_revision=1)
    assert await bucket.delete("a/2", expected_revision=2) == 4
    assert await bucket.create("a/1", b"again") == 5  # deleted counts as absent


async def test_write_many_puts_and_deletes_each_at_its_own_revision(bucket: Bucket) -> None:
    await bucket.put("gone", b"x")
    async with contextlib.aclosing(bucket.watch()) as changes:
        await bucket.write_many({"a": b"1", "b": b"2", "gone": None, "never-was": None})
        seen = [await next_change(changes) for _ in range(3)]
    assert [(c.key, c.value, c.revision, c.operation) for c in seen] == [
        ("a", b"1", 2, "put"),
        ("b", b"2", 3, "put"),
        ("gone", b"", 4, "delete"),
    ]
    assert await bucket.keys() == ["a", "b"] and await bucket.revision() == 4
    await bucket.write_many({})
    assert await bucket.revision() == 4


async def test_write_many_is_all_or_none(bucket: Bucket) -> None:
    with pytest.raises(InvalidKey):
        await bucket.write_many({"a": b"1", "not a key": b"2"})
    with pytest.raises(ValueTooLarge):
        await bucket.write_many({"a": b"1", "b": b"x" * (MAX_VALUE_SIZE + 1)})
    assert await bucket.keys() == [] and await bucket.revision() == 0


async def test_keys_with_a_prefix_are_sorted(bucket: Bucket) -> None:
    for key in ("Trigger/default/b", "Broker/default/x", "Trigger/default/a", "Trigger/other/c"):
        await bucket.put(key, b"{}")
    assert await bucket.keys("Trigger/default/") == ["Trigger/default/a", "Trigger/default/b"]
    assert len(await bucket.keys()) == 4
    assert await bucket.keys("Nothing") == []


@pytest.mark.parametrize(
    "key", ["", "has space", "ümlaut", ".leading", "trailing.", "x" * 256, "a*b", "a>b"]
)
async def test_keys_follow_jetstream_kv_rules(bucket: Bucket, key: str) -> None:
    with pytest.raises(InvalidKey):
        await bucket.put(key, b"v")


async def test_bucket_names_and_value_sizes_are_bounded(store: StateStore) -> None:
    for name in ("", "a.b", "a/b", "x" * 65):
        with pytest.raises(InvalidKey):
            await store.bucket(name)
    bucket = await store.bucket("sizes")
    await bucket.put("max", b"x" * MAX_VALUE_SIZE)
    with pytest.raises(ValueTooLarge):
        await bucket.put("over", b"x" * (MAX_VALUE_SIZE + 1))
    assert await bucket.keys() == ["max"]


async def test_what_was_written_survives_a_reopen(harness: StateHarness) -> None:
    store = await harness.open()
    bucket = await store.bucket("resources")
    await bucket.put("k", b"kept")
    await bucket.put("gone", b"x")
    await bucket.delete("gone")
    store = await harness.reopen(store)
    try:
        bucket = await store.bucket("resources")
        entry = await bucket.get("k")
        assert entry is not None and entry.value == b"kept"
        assert await bucket.get("gone") is None
        assert await bucket.revision() == 3
        assert await bucket.put("k", b"next") == 4  # revisions go on, never reused
    finally:
        await store.close()


async def test_a_watcher_sees_puts_and_deletes_from_now_on(bucket: Bucket) -> None:
    await bucket.put("before", b"old")
    async with contextlib.aclosing(bucket.watch()) as changes:
        waiting = asyncio.ensure_future(next_change(changes))
        await asyncio.sleep(0)  # the watcher is parked before the write
        await bucket.put("k", b"v1")
        put = await waiting
        assert (put.key, put.value, put.revision, put.operation) == ("k", b"v1", 2, "put")
        await bucket.delete("k")
        deleted = await next_change(changes)
        assert (deleted.key, deleted.deleted, deleted.value, deleted.revision) == (
            "k",
            True,
            b"",
            3,
        )


async def test_a_watcher_from_revision_zero_starts_with_everything(bucket: Bucket) -> None:
    await bucket.put("a", b"1")
    await bucket.put("b", b"2")
    await bucket.put("a", b"3")  # "a" is seen once, at its latest value
    async with contextlib.aclosing(bucket.watch(after=0)) as changes:
        seen = [await next_change(changes), await next_change(changes)]
        assert [(c.key, c.value, c.revision) for c in seen] == [("b", b"2", 2), ("a", b"3", 3)]
        await bucket.put("c", b"4")
        assert (await next_change(changes)).key == "c"


async def test_read_then_follow_loses_nothing(bucket: Bucket) -> None:
    await bucket.put("Broker/default/a", b"1")
    revision = await bucket.revision()
    known = {k: await bucket.get(k) for k in await bucket.keys()}
    await bucket.put("Broker/default/b", b"2")  # between the read and the watch
    async with contextlib.aclosing(bucket.watch(after=revision)) as changes:
        change = await next_change(changes)
    assert list(known) == ["Broker/default/a"] and change.key == "Broker/default/b"


async def test_a_watcher_sees_only_its_prefix(bucket: Bucket) -> None:
    async with contextlib.aclosing(bucket.watch("Trigger/")) as changes:
        await bucket.put("Broker/default/x", b"not this")
        await bucket.put("Trigger/default/t", b"this")
        change = await next_change(changes)
    assert change.key == "Trigger/default/t"


async def test_closing_the_store_ends_calls_and_waiting_watchers(store: StateStore) -> None:
    bucket = await store.bucket("b")
    changes = bucket.watch()
    waiting = asyncio.ensure_future(next_change(changes))
    await asyncio.sleep(0)
    await store.close()
    with pytest.raises(StateClosed):
        await waiting
    with pytest.raises(StateClosed):
        await bucket.put("k", b"v")
    with pytest.raises(StateClosed):
        await store.bucket("b")
    await store.close()  # idempotent
