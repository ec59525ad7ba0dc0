"""Presence is written behind, in batches: a reconnect storm costs the store a few writes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import orjson
import pytest

from headwater.devices import presence as presence_module
from headwater.devices.presence import FLUSH_BATCH, Connection, Presence
from headwater.state import MemoryStore, StateError
from headwater.state.memory import MemoryBucket
from tests.helpers import wait_until


def connect(presence: Presence, device: str, protocol: str = "3.1.1") -> object:
    """A connection of ``device``; its ClientInfo stand-in (what ``disconnected`` takes)."""
    info = object()
    presence.connected(
        "default",
        device,
        Connection(info, None, f"token-{device}"),
        address="127.0.0.1:50000",
        protocol=protocol,
        client_id=device,
        listener="mqtt",
        broker="default/mqtt",
        credential=None,
    )
    return info


def count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the store's ``write_many`` calls, as they come."""
    writes: list[int] = []
    original = MemoryBucket.write_many

    async def counted(self: MemoryBucket, changes: Mapping[str, bytes | None]) -> None:
        writes.append(len(changes))
        await original(self, changes)

    monkeypatch.setattr(MemoryBucket, "write_many", counted)
    return writes


async def test_a_storm_is_written_in_a_few_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = count_writes(monkeypatch)
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


class SteppedSleep:
    """The flusher's sleep, held until the test releases it."""

    def __init__(self) -> None:
        self.sleeping = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.sleeping.set()
        await self.go.wait()
        self.go.clear()

    async def asleep(self) -> None:
        """Return once the flusher sleeps."""
        await self.sleeping.wait()
        self.sleeping.clear()

    def release(self) -> None:
        self.go.set()


async def test_a_storm_is_written_once_it_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    writes = count_writes(monkeypatch)
    sleep = SteppedSleep()
    monkeypatch.setattr(presence_module, "_sleep", sleep)
    presence = Presence(MemoryStore())
    await presence.start()
    # Devices keep connecting through ten flush delays: nothing is written meanwhile.
    connect(presence, "d-0")
    for n in range(1, 10):
        await sleep.asleep()
        connect(presence, f"d-{n}")
        sleep.release()
    await sleep.asleep()
    assert writes == []
    sleep.release()  # a delay without a change: all of it, in one write
    await wait_until(lambda: writes == [10], what="one write")
    await presence.close()


async def test_changes_that_never_pause_are_written_after_the_longest_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes = count_writes(monkeypatch)
    monkeypatch.setattr(presence_module, "FLUSH_MAX_DELAY", 0.0)
    sleep = SteppedSleep()
    monkeypatch.setattr(presence_module, "_sleep", sleep)
    presence = Presence(MemoryStore())
    await presence.start()
    connect(presence, "d-0")
    await sleep.asleep()
    connect(presence, "d-1")  # came during the delay: written anyway, the delay is up
    sleep.release()
    await wait_until(lambda: writes == [2], what="the write")
    await presence.close()


# -- a mesh: every node's Presence on one store ------------------------------------------


class Clock:
    """A clock every node shares, one second further at each look."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def on_node(store: MemoryStore, node: str, clock: Clock) -> Presence:
    return Presence(store, clock=clock, node=node)


async def two_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[MemoryStore, Clock, Presence, Presence]:
    """Two started nodes on one store, writing at once (no flush delay)."""
    monkeypatch.setattr(presence_module, "FLUSH_DELAY", 0.0)
    store, clock = MemoryStore(), Clock()
    n1, n2 = on_node(store, "n1", clock), on_node(store, "n2", clock)
    await n1.start()
    await n2.start()
    return store, clock, n1, n2


async def stored(store: MemoryStore, device: str) -> dict[str, object]:
    bucket = await store.bucket(presence_module.PRESENCE_BUCKET)
    entry = await bucket.get(f"default/{device}")
    assert entry is not None
    found: dict[str, object] = orjson.loads(entry.value)
    return found


async def test_every_node_sees_a_device_connected_to_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, _, n1, n2 = await two_nodes(monkeypatch)
    info = connect(n1, "pump-1", "5.0")
    await wait_until(lambda: n2.online("default", "pump-1"), what="online on n2")
    seen = n2.get("default", "pump-1")
    assert seen is not None and seen.node == "n1" and seen.protocol == "5.0"
    assert n2.connection("default", "pump-1") is None  # n2 cannot send it anything
    assert (n1.online_count(), n2.online_count()) == (1, 0)  # each node's own connections
    n1.disconnected("default", "pump-1", info)
    await wait_until(lambda: not n2.online("default", "pump-1"), what="offline on n2")
    after = n2.get("default", "pump-1")
    assert after is not None and after.disconnected_at is not None
    await n1.close()
    await n2.close()


async def test_the_node_a_device_left_writing_late_does_not_hide_where_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store, clock, n1, n2 = await two_nodes(monkeypatch)
    first = connect(n1, "gw-1")
    await wait_until(lambda: n2.online("default", "gw-1"), what="online on n2")
    # The device moves to n2; n1 hears of its connection's end only afterwards,
    # and writes it after n2 wrote the new connection.
    connect(n2, "gw-1")
    await n2._flush()
    n1._remote.clear()  # n1 has not seen n2's record yet
    n1.disconnected("default", "gw-1", first)
    await n1._flush()
    # n2 writes its live connection again; every node shows it online, on n2.
    await wait_until(
        lambda: n1.online("default", "gw-1") and n2.online("default", "gw-1"),
        what="online on both",
    )
    await wait_until(lambda: _node_of(store, "gw-1", "n2"), what="the store's record of n2")
    # A node starting now (n3, or n1 again) reads it online, and leaves it so.
    n3 = on_node(store, "n3", clock)
    await n3.start()
    assert n3.online("default", "gw-1")
    await n1.close()
    again = on_node(store, "n1", clock)
    await again.start()
    assert again.online("default", "gw-1")
    for presence in (n2, n3, again):
        await presence.close()
    assert (await stored(store, "gw-1"))["online"] is True


async def test_a_starting_node_marks_offline_only_its_own_records() -> None:
    store, clock = MemoryStore(), Clock()
    n1, n2 = on_node(store, "n1", clock), on_node(store, "n2", clock)
    await n1.start()
    await n2.start()
    for presence, device in ((n1, "a"), (n2, "b")):
        connect(presence, device)
        await presence._flush()
    restarted = on_node(store, "n1", clock)
    await restarted.start()
    await restarted.close()
    assert (await stored(store, "a"))["online"] is False  # n1's: no connection survives
    assert (await stored(store, "b"))["online"] is True  # n2's: n2 still holds it
    await n1.close()
    await n2.close()


async def _node_of(store: MemoryStore, device: str, node: str) -> bool:
    return (await stored(store, device)).get("node") == node


async def test_the_devices_of_a_node_that_died_go_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """n3 dies with a device online: every node shows it offline once n3 is gone
    from the mesh, the first live node writes it, and a device that connected
    again elsewhere meanwhile stays online."""
    store, clock, n1, n2 = await two_nodes(monkeypatch)
    n3 = on_node(store, "n3", clock)
    await n3.start()
    connect(n3, "pump-1")
    connect(n3, "gw-1")
    await n3._flush()
    for node in (n1, n2):
        await wait_until(
            lambda n=node: n.online("default", "pump-1") and n.online("default", "gw-1"),
            what="online",
        )
    n3._flusher.cancel()  # type: ignore[union-attr]  # n3 dies: it writes nothing more
    connect(n1, "gw-1")  # gw-1 reconnects to n1 before n3 is found gone
    await wait_until(
        lambda: getattr(n2.get("default", "gw-1"), "node", None) == "n1", what="gw-1 on n1"
    )

    told: dict[str, list[tuple[str, str, str | None]]] = {"n1": [], "n2": []}
    for presence in (n1, n2):
        presence.on_node_gone(
            lambda ns, device, record, to=told[str(presence.node)]: to.append(
                (ns, device, record.reason)
            )
        )
    assert await n2.nodes_gone({"n1", "n2"}) == 1
    shown = n2.get("default", "pump-1")
    assert shown is not None and not shown.online and shown.reason == "node n3 is gone"
    assert shown.disconnected_at is not None and shown.node == "n3"
    assert (await stored(store, "pump-1"))["online"] is True  # n2 is not the first node
    assert await n1.nodes_gone({"n1", "n2"}) == 1  # n1 is: it writes the records
    assert (await stored(store, "pump-1"))["reason"] == "node n3 is gone"
    # The node that wrote is the one told (its source records the disconnected event).
    assert told == {"n1": [("default", "pump-1", "node n3 is gone")], "n2": []}
    assert n1.online("default", "gw-1") and n2.online("default", "gw-1")
    assert await n2.nodes_gone({"n1", "n2"}) == 0  # nothing left to end

    starting = on_node(store, "n4", clock)
    await starting.start()
    assert not starting.online("default", "pump-1")
    for presence in (n1, n2, starting):
        await presence.close()


async def test_every_node_looks_at_the_mesh_s_nodes_by_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(presence_module, "FLUSH_DELAY", 0.0)
    monkeypatch.setattr(presence_module, "NODE_CHECK", 0.01)
    store, clock = MemoryStore(), Clock()
    live = {"n1", "n2"}
    looks = 0

    async def live_nodes() -> set[str]:
        nonlocal looks
        looks += 1
        if looks == 1:
            raise StateError("NATS is unreachable")  # asked again at the next look
        return set(live)

    n1 = Presence(store, clock=clock, node="n1", live_nodes=live_nodes)
    n2 = on_node(store, "n2", clock)
    await n1.start()
    await n2.start()
    connect(n2, "valve-7")
    await wait_until(lambda: n1.online("default", "valve-7"), what="online on n1")
    n2._flusher.cancel()  # type: ignore[union-attr]
    live.discard("n2")
    await wait_until(lambda: not n1.online("default", "valve-7"), what="offline on n1")
    await wait_until(lambda: _stored_offline(store, "valve-7"), what="the record stored")
    assert looks >= 2
    await n1.close()


async def _stored_offline(store: MemoryStore, device: str) -> bool:
    return (await stored(store, device))["online"] is False


async def test_a_node_taken_for_dead_writes_its_live_connections_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """n2's heartbeat came too late: n1 ended n2's connections in the store, and n2,
    which still holds them, writes them online again; every node shows them so."""
    store, _, n1, n2 = await two_nodes(monkeypatch)
    connect(n2, "pump-1")
    await wait_until(lambda: n1.online("default", "pump-1"), what="online on n1")
    assert await n1.nodes_gone({"n1"}) == 1
    assert not n1.online("default", "pump-1")
    await wait_until(lambda: n1.online("default", "pump-1"), what="online again on n1")
    assert (await stored(store, "pump-1"))["online"] is True
    for presence in (n1, n2):
        await presence.close()
