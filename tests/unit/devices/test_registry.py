"""The registry over a state store: compare-and-set, ownership, and two nodes on one store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from headwater.devices import (
    DeviceConflict,
    DeviceExists,
    DeviceNotFound,
    InvalidDevice,
    OwnedByResource,
    Registry,
)
from headwater.devices.model import MAX_CREDENTIALS, Device
from headwater.state import MemoryStore, SqliteStore


async def until(check: Callable[[], bool]) -> None:
    """Until the other registry's watch has seen the change (it polls the file)."""
    async with asyncio.timeout(5):
        while not check():  # noqa: ASYNC110 - the watch runs on this loop; nothing to await
            await asyncio.sleep(0.01)


@pytest.fixture
async def registry() -> AsyncIterator[Registry]:
    store = MemoryStore()
    registry = Registry(store)
    await registry.start()
    yield registry
    await registry.close()
    await store.close()


async def test_create_get_update_delete(registry: Registry) -> None:
    device, [secret] = await registry.create("default", "pump-1", labels={"site": "a"})
    assert registry.get("default", "pump-1") == device and device.revision > 0
    assert registry.check_secret(device, secret.secret.encode()) is not None
    assert registry.check_secret(device, b"nope") is None
    with pytest.raises(DeviceExists):
        await registry.create("default", "pump-1")
    changed, _ = await registry.update("default", "pump-1", enabled=False, revision=device.revision)
    assert not changed.enabled and changed.labels == {"site": "a"}
    with pytest.raises(DeviceConflict, match="changed meanwhile"):
        await registry.update("default", "pump-1", enabled=True, revision=device.revision)
    with pytest.raises(DeviceConflict):
        await registry.delete("default", "pump-1", revision=device.revision)
    await registry.delete("default", "pump-1", revision=changed.revision)
    assert registry.get("default", "pump-1") is None
    with pytest.raises(DeviceNotFound):
        await registry.update("default", "pump-1", enabled=True)


async def test_namespaces_are_apart(registry: Registry) -> None:
    await registry.create("default", "d")
    await registry.create("team-b", "d")
    assert [x.namespace for x in registry.find()] == ["default", "team-b"]
    assert [x.id for x in registry.find("team-b")] == ["d"]


async def test_credential_rules(registry: Registry) -> None:
    with pytest.raises(InvalidDevice, match="at most"):
        await registry.create(
            "default", "d", credentials=[{"type": "secret"}] * (MAX_CREDENTIALS + 1)
        )
    with pytest.raises(InvalidDevice, match="8 characters"):
        await registry.create(
            "default", "d", credentials=[{"type": "password", "password": "short"}]
        )
    with pytest.raises(InvalidDevice, match="not one of"):
        await registry.create("default", "d", credentials=[{"type": "token"}])
    with pytest.raises(InvalidDevice, match="unknown field"):
        await registry.create("default", "d", credentials=[{"type": "secret", "value": "x"}])
    await registry.create("default", "a", credentials=[{"type": "x509", "subject": "CN=a"}])
    with pytest.raises(DeviceExists, match="credential of device 'a'"):
        await registry.create("default", "b", credentials=[{"type": "x509", "subject": "CN=a"}])
    assert registry.get("default", "b") is None  # nothing was written
    device, _ = await registry.create("default", "c", credentials=[])
    assert device.credentials == ()  # no way in until a credential is added
    rotated, [fresh] = await registry.update("default", "c", add=[{"type": "secret"}])
    kept, [newer] = await registry.update(
        "default", "c", add=[{"type": "secret"}], replace_secrets=True
    )
    assert [c.id for c in kept.credentials] == [newer.credential]
    assert registry.check_secret(kept, fresh.secret.encode()) is None
    assert rotated


async def test_a_device_a_resource_owns_is_changed_there_only(registry: Registry) -> None:
    [credential] = await registry.build_credentials("d", [{"type": "x509", "subject": "CN=d"}], 0.0)
    await registry.put_owned(
        "default",
        "d",
        labels={},
        enabled=True,
        credentials=[credential],
        owner="Device/default/d",
    )
    with pytest.raises(OwnedByResource, match=r"defined by Device/default/d: change it there"):
        await registry.update("default", "d", enabled=False)
    with pytest.raises(OwnedByResource):
        await registry.delete("default", "d")
    with pytest.raises(InvalidDevice, match="generated secret"):
        await registry.build_credentials("d", [{"type": "secret"}], 0.0)


async def test_two_registries_on_one_store_follow_each_other(tmp_path: Path) -> None:
    """What two nodes of a cluster on one KV bucket see (here: two processes' worth of
    objects on one SQLite file, the other's writes seen through the watch)."""
    one_store = await SqliteStore.open(tmp_path / "state.db", poll_interval=0.05)
    other_store = await SqliteStore.open(tmp_path / "state.db", poll_interval=0.05)
    one, other = Registry(one_store), Registry(other_store)
    await one.start()
    await other.start()
    seen: list[tuple[Device | None, Device | None]] = []
    other.on_change(lambda old, new: seen.append((old, new)))
    try:
        device, [secret] = await one.create("default", "pump-1")
        await until(lambda: other.get("default", "pump-1") is not None)
        # Both nodes share the HMAC key: the secret works on either.
        assert other.check_secret(other.get("default", "pump-1"), secret.secret.encode())  # type: ignore[arg-type]
        await other.update("default", "pump-1", enabled=False)
        await until(lambda: not one.get("default", "pump-1").enabled)  # type: ignore[union-attr]
        await one.delete("default", "pump-1")
        await until(lambda: other.get("default", "pump-1") is None)
        assert [new is None for _, new in seen] == [False, False, True]
        assert device.id == "pump-1"
    finally:
        await one.close()
        await other.close()
        await one_store.close()
        await other_store.close()


async def test_import_skips_what_exists(registry: Registry) -> None:
    await registry.create("default", "a")
    result = await registry.import_devices("default", [{"id": "a"}, {"id": "b"}, {"id": "c"}])
    assert [d.id for d in result.created] == ["b", "c"]
    assert result.existing == ["a"] and [s.device for s in result.secrets] == ["b", "c"]
