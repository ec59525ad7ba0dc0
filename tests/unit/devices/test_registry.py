"""The registry over a state store: compare-and-set, ownership, and two nodes on one store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from headwater.devices import (
    DeviceConflict,
    DeviceExists,
    DeviceNotFound,
    InvalidDevice,
    OwnedByResource,
    Registry,
)
from headwater.devices.imports import parse_rows
from headwater.devices.model import MAX_CREDENTIALS, Credential, Device
from headwater.state import MemoryStore, SqliteStore, StateError
from tests.unit.devices.conftest import TOO_BIG


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


# -- password hashes: read, never computed on the event loop ---------------------------------


async def test_a_hash_too_costly_to_check_is_invalid(registry: Registry) -> None:
    with pytest.raises(InvalidDevice, match="memory"):
        await registry.create("default", "d", credentials=[{"type": "password", "hash": TOO_BIG}])
    assert registry.get("default", "d") is None
    await registry.create("default", "d")
    with pytest.raises(InvalidDevice, match="memory"):
        await registry.update("default", "d", add=[{"type": "password", "hash": TOO_BIG}])


async def test_a_stored_hash_scrypt_refuses_lets_nobody_in(registry: Registry) -> None:
    """Stored before hashes were checked this way (or by an older node): a refusal."""
    device = Device("default", "d", credentials=(Credential("c1", "password", 0.0, hash=TOO_BIG),))
    assert await registry.check_password(device, b"anything") is None


async def test_an_import_of_many_hashes_runs_no_scrypt(registry: Registry, no_scrypt: None) -> None:
    hashed = "$scrypt$n=16384,r=8,p=1$c2FsdA==$a2V5"
    text = "id,password_hash\n" + "".join(f'd{n:04d},"{hashed}"\n' for n in range(2000))
    result = await registry.import_devices("default", parse_rows(text, "csv"))
    assert len(result.created) == 2000 and result.failed == []
    created, _ = await registry.create(
        "default", "one", credentials=[{"type": "password", "hash": hashed}]
    )
    assert created.credentials[0].hash == hashed


# -- one certificate, one device ----------------------------------------------------------------

FINGERPRINT = "ab" * 32


@pytest.fixture
async def sqlite_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    """A registry whose writes really wait (SQLite's writer thread): creates interleave."""
    store = await SqliteStore.open(tmp_path / "state.db")
    registry = Registry(store)
    await registry.start()
    yield registry
    await registry.close()
    await store.close()


CERTIFICATES = [
    pytest.param({"type": "x509", "fingerprint": FINGERPRINT}, id="fingerprint"),
    pytest.param({"type": "x509", "subject": "CN=shared"}, id="subject"),
]


@pytest.mark.parametrize("credential", CERTIFICATES)
async def test_concurrent_creates_cannot_share_a_certificate(
    sqlite_registry: Registry, credential: dict[str, str]
) -> None:
    registry = sqlite_registry
    results = await asyncio.gather(
        registry.create("default", "a", credentials=[credential]),
        registry.create("default", "b", credentials=[credential]),
        return_exceptions=True,
    )
    assert isinstance(results[0], tuple), results
    assert isinstance(results[1], DeviceExists) and "device 'a'" in str(results[1]), results
    assert registry.get("default", "b") is None
    holder = registry.by_certificate("default", FINGERPRINT, "CN=shared")
    assert holder is not None and holder.id == "a"
    # The claim was given back: once a is gone, b may have it.
    await registry.delete("default", "a")
    await registry.create("default", "b", credentials=[credential])


@pytest.mark.parametrize("credential", CERTIFICATES)
async def test_concurrent_updates_cannot_share_a_certificate(
    sqlite_registry: Registry, credential: dict[str, str]
) -> None:
    registry = sqlite_registry
    await registry.create("default", "a", credentials=[])
    await registry.create("default", "b", credentials=[])
    results = await asyncio.gather(
        registry.update("default", "a", add=[credential]),
        registry.update("default", "b", add=[credential]),
        registry.create("default", "c", credentials=[credential]),
        return_exceptions=True,
    )
    assert isinstance(results[0], tuple), results
    assert [type(r) for r in results[1:]] == [DeviceExists, DeviceExists], results
    assert registry.get("default", "b").credentials == ()  # type: ignore[union-attr]
    assert registry.get("default", "c") is None


async def test_an_import_registers_a_certificate_once(sqlite_registry: Registry) -> None:
    """Rows the file check did not catch (another import at the same time, say)."""
    registry = sqlite_registry
    rows = [
        {"id": f"d{n}", "credentials": [{"type": "x509", "fingerprint": FINGERPRINT}]}
        for n in range(10)
    ]
    result = await registry.import_devices("default", rows)
    assert [d.id for d in result.created] == ["d0"]
    assert [d for d, _ in result.failed] == [f"d{n}" for n in range(1, 10)]


async def test_a_failed_write_gives_its_certificates_back(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = registry._store()

    async def refuse(key: str, value: bytes) -> int:
        raise StateError("the disk is full")

    credential = {"type": "x509", "fingerprint": FINGERPRINT}
    with monkeypatch.context() as patch:
        patch.setattr(bucket, "create", refuse)
        with pytest.raises(StateError):
            await registry.create("default", "a", credentials=[credential])
    await registry.create("default", "b", credentials=[credential])


async def test_a_certificate_two_devices_hold_stays_with_the_one_left(
    registry: Registry,
) -> None:
    """Two nodes that registered one certificate at once (each registry claims only what it
    writes itself): whichever device lets go of it, the index keeps the one that holds it."""
    bucket = await registry.state.bucket("devices")

    def holding(device_id: str, *fingerprints: str) -> bytes:
        credentials = tuple(
            Credential(f"c{n}", "x509", 0.0, fingerprint=f) for n, f in enumerate(fingerprints)
        )
        return orjson.dumps(Device("default", device_id, credentials=credentials).to_json())

    def holder(fingerprint: str) -> str | None:
        device = registry.by_certificate("default", fingerprint, None)
        return device.id if device is not None else None

    # Another node's writes, seen through the watch: b, then a, with the same certificate.
    b = await bucket.create("default/b", holding("b", FINGERPRINT))
    await bucket.create("default/a", holding("a", FINGERPRINT))
    await until(lambda: registry.get("default", "a") is not None)
    assert holder(FINGERPRINT) == "a"
    # b lets go of it (its credential removed): a still holds it.
    await bucket.update("default/b", holding("b"), b)
    await until(lambda: registry.get("default", "b").credentials == ())  # type: ignore[union-attr]
    assert holder(FINGERPRINT) == "a"
    # This registry's own delete of one of two holders.
    other = "cd" * 32
    await registry.create("default", "c", credentials=[{"type": "x509", "fingerprint": other}])
    await bucket.create("default/d", holding("d", other))
    await until(lambda: registry.get("default", "d") is not None)
    await registry.delete("default", "c")
    assert holder(other) == "d"
