"""Presence is written behind, in batches: a reconnect storm costs the store a few writes."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import pytest

from headwater.devices import presence as presence_module
from headwater.devices.presence import FLUSH_BATCH, Connection, Presence
from headwater.state import MemoryStore, StateError
from headwater.state.memory import MemoryBucket


def connect(presence: Presence, device: str) -> None:
    info = object()
    presence.connected(
        "default",
        device,
        Connection(info, None, f"token-{device}"),
        address="127.0.0.1:50000",
        protocol="3.1.1",
        client_id=device,
        listener="mqtt",
        broker="default/mqtt",
        credential=None,
    )


async def test_a_storm_is_written_in_a_few_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[int] = []
    original = MemoryBucket.write_many

    async def counted(self: MemoryBucket, changes: Mapping[str, bytes | None]) -> None:
        writes.append(len(changes))
        await original(self, changes)

    monkeypatch.setattr(MemoryBucket, "write_many", counted)
    store = MemoryStore()
    presence = Presence(store)
    await presence.start()
    devices = 2 * FLUSH_BATCH + 500
    for n in range(devices):
        connect(presence, f"d-{n}")
    await presence.close()  # writes what is left
    assert writes == [FLUSH_BATCH, FLUSH_BATCH, 500]
    bucket = await store.bucket(presence_module.PRESENCE_BUCKET)
    assert len(await bucket.keys()) == devices
    entry = await bucket.get("default/d-7")
    assert entry is not None and orjson.loads(entry.value)["online"] is True


async def test_what_the_store_refused_stays_to_be_written(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    presence = Presence(store)
    await presence.start()
    for n in range(3):
        connect(presence, f"d-{n}")

    async def refused(self: MemoryBucket, changes: Mapping[str, bytes | None]) -> None:
        raise StateError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(MemoryBucket, "write_many", refused)
        with pytest.raises(StateError):
            await presence._flush()
    await presence.close()
    bucket = await store.bucket(presence_module.PRESENCE_BUCKET)
    assert await bucket.keys() == ["default/d-0", "default/d-1", "default/d-2"]
