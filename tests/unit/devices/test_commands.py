"""Commands in a mesh: every node's Commands on one store, each following the queue.

A command is made on whichever node the API call reached and sent by the
node that holds its device's connection; an answer taken by any node
finishes it for all of them (and wakes whoever waits on another node); an
expiry or a device's deletion finishes it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from headwater.devices import presence as presence_module
from headwater.devices.commands import Command, Commands, Status
from headwater.devices.presence import Connection, Presence
from headwater.state import MemoryStore
from tests.helpers import wait_until


class Clock:
    """A clock every node shares, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Device:
    """What a device receives: the ids of the commands sent to it, in order."""

    def __init__(self) -> None:
        self.got: list[str] = []

    def send_command(self, command: Command, now: float) -> None:
        self.got.append(command.id)


class Node:
    """One node's Presence and Commands."""

    def __init__(self, store: MemoryStore, name: str, clock: Clock) -> None:
        self.name = name
        self.presence = Presence(store, clock=clock, node=name)
        self.commands = Commands(store, self.presence, clock=clock)
        self.finished: list[Command] = []
        self.commands.on_finished = self.finished.append
        self._tokens = 0

    async def start(self) -> None:
        await self.presence.start()
        await self.commands.start()

    async def close(self) -> None:
        await self.commands.close()
        await self.presence.close()

    def connect(self, device_id: str, device: Device) -> object:
        """``device_id`` connects here and subscribes to its commands; its ClientInfo."""
        info = object()
        self._tokens += 1
        connection = Connection(info, device, f"{self.name}-{self._tokens}", ready=True)
        self.presence.connected(
            "default",
            device_id,
            connection,
            address="127.0.0.1:50000",
            protocol="5.0",
            client_id=device_id,
            listener="mqtt",
            broker="default/mqtt",
            credential=None,
        )
        return info

    def disconnect(self, device_id: str, info: object) -> None:
        self.presence.disconnected("default", device_id, info)


@pytest.fixture
async def mesh(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Clock, Node, Node]]:
    monkeypatch.setattr(presence_module, "FLUSH_DELAY", 0.0)
    store, clock = MemoryStore(), Clock()
    n1, n2 = Node(store, "n1", clock), Node(store, "n2", clock)
    await n1.start()
    await n2.start()
    yield clock, n1, n2
    await n1.close()
    await n2.close()


async def status_on(node: Node, command_id: str) -> Status | None:
    command = await node.commands.get("default", "d1", command_id)
    return command.status if command is not None else None


async def answered(node: Node, command_id: str) -> bool:
    return await status_on(node, command_id) == Status.ANSWERED


async def test_a_command_made_on_one_node_is_sent_by_the_node_its_device_is_on(
    mesh: tuple[Clock, Node, Node],
) -> None:
    _, n1, n2 = mesh
    device = Device()
    n2.connect("d1", device)
    made = await n1.commands.create("default", "d1", b"on", "text/plain")
    assert made.status == Status.QUEUED  # n1 holds no connection of d1
    await wait_until(lambda: device.got == [made.id], what="the command sent by n2")
    # Whoever waits on n1 (the API's long poll) hears the answer n2 takes.
    waiting = asyncio.create_task(n1.commands.wait("default", "d1", made.id, 10))
    await asyncio.sleep(0)
    assert await n2.commands.answer("default", "d1", made.id, b"done", "text/plain", None)
    done = await asyncio.wait_for(waiting, 10)
    assert done is not None and done.status == Status.ANSWERED and done.response == b"done"
    assert (n1.commands.sent, n2.commands.sent) == (0, 1)
    assert await status_on(n2, made.id) == Status.ANSWERED
    assert (n1.commands.pending_count(), n2.commands.pending_count()) == (0, 0)
    # One node finished it: one `answered` event in the mesh.
    assert ([c.id for c in n1.finished], [c.id for c in n2.finished]) == ([], [made.id])
    assert device.got == [made.id]  # sent once


async def test_a_device_that_moves_is_sent_its_command_again_and_answers_on_the_new_node(
    mesh: tuple[Clock, Node, Node],
) -> None:
    _, n1, n2 = mesh
    on_n1, on_n2 = Device(), Device()
    first = n1.connect("d1", on_n1)
    made = await n1.commands.create("default", "d1", b"on", None)
    assert made.status == Status.SENT and on_n1.got == [made.id]
    await wait_until(lambda: n2.commands.pending_count() == 1, what="n2 knows of the command")
    # The load balancer sends d1 to n2: unanswered, the command goes again, same id.
    n1.disconnect("d1", first)
    n2.connect("d1", on_n2)
    await n2.commands.deliver("default", "d1")
    assert on_n2.got == [made.id]
    assert await n2.commands.answer("default", "d1", made.id, b"ok", None, None)
    assert n2.commands.duplicate_answers == 0
    await wait_until(lambda: answered(n1, made.id), what="answered on n1")
    assert n1.commands.pending_count() == 0
    # The same answer again, on either node: a duplicate, as on one node.
    assert not await n1.commands.answer("default", "d1", made.id, b"ok", None, None)
    assert n1.commands.duplicate_answers == 1


async def test_an_answer_to_a_command_this_node_has_not_seen_yet_is_taken(
    mesh: tuple[Clock, Node, Node],
) -> None:
    """n2's watcher lags: the answer reaches n2 before the command does."""
    _, n1, n2 = mesh
    device = Device()
    n1.connect("d1", device)
    for task in n2.commands._tasks:  # n2 follows the queue no more
        task.cancel()
    made = await n1.commands.create("default", "d1", b"on", None)
    assert device.got == [made.id]
    assert await n2.commands.answer("default", "d1", made.id, b"ok", None, 201)
    await wait_until(lambda: n1.commands.pending_count() == 0, what="finished on n1")
    assert await status_on(n1, made.id) == Status.ANSWERED


async def test_a_command_expires_once_in_the_mesh(mesh: tuple[Clock, Node, Node]) -> None:
    clock, n1, n2 = mesh
    device = Device()
    n2.connect("d1", device)
    made = await n1.commands.create("default", "d1", b"on", None, expiry=5)
    await wait_until(lambda: device.got == [made.id], what="sent by n2")
    clock.now += 10
    for node in (n1, n2):
        node.commands._expiry_changed.set()
    await wait_until(
        lambda: n1.commands.pending_count() == n2.commands.pending_count() == 0,
        what="expired on both nodes",
    )
    assert [c.status for c in n1.finished + n2.finished] == [Status.EXPIRED]
    assert n1.commands.expired + n2.commands.expired == 1
    # Answered after it expired, on the other node: the device did act on it.
    assert await n1.commands.answer("default", "d1", made.id, b"late", None, None)
    done = await n2.commands.get("default", "d1", made.id)
    assert done is not None and done.status == Status.ANSWERED
    assert done.reason == "answered after it expired"


async def test_a_deleted_device_s_commands_fail_once_in_the_mesh(
    mesh: tuple[Clock, Node, Node],
) -> None:
    _, n1, n2 = mesh
    made = await n1.commands.create("default", "d1", b"on", None)
    await wait_until(lambda: n2.commands.pending_count() == 1, what="n2 knows of it")
    # Every node hears of the deletion from the registry and fails what is waiting.
    counts = await asyncio.gather(
        n1.commands.fail_device("default", "d1", "the device was deleted"),
        n2.commands.fail_device("default", "d1", "the device was deleted"),
    )
    assert sum(counts) >= 1
    assert [c.id for c in n1.finished + n2.finished] == [made.id]
    for node in (n1, n2):
        assert await status_on(node, made.id) == Status.FAILED
        assert node.commands.pending_count() == 0


async def test_a_command_repeated_on_two_nodes_is_one_command(
    mesh: tuple[Clock, Node, Node],
) -> None:
    """A DeviceSink's redelivered event, taken by two nodes: the same id, one command."""
    _, n1, n2 = mesh
    first, second = await asyncio.gather(
        n1.commands.create("default", "d1", b"on", None, command_id="00000000abcd1234"),
        n2.commands.create("default", "d1", b"on", None, command_id="00000000abcd1234"),
    )
    assert first.id == second.id == "00000000abcd1234"
    await wait_until(
        lambda: n1.commands.pending_count() == n2.commands.pending_count() == 1,
        what="one command on both nodes",
    )


async def test_a_late_record_of_a_send_on_the_previous_connection_sends_nothing_again(
    mesh: tuple[Clock, Node, Node],
) -> None:
    """n1's record of its send on d1's previous connection reaches the store after
    n2 sent the command on d1's connection there: n2 does not send it again."""
    _, n1, n2 = mesh
    device = Device()
    n2.connect("d1", device)
    made = await n1.commands.create("default", "d1", b"on", None)
    await wait_until(lambda: device.got == [made.id], what="sent by n2")
    await wait_until(lambda: n1.commands.pending_count() == 1, what="n1 knows of it")
    bucket = await n1.commands.state.bucket("device-commands")
    entry = await bucket.get(made.key)
    assert entry is not None
    stale = Command.load(made.key, entry.value)
    revision = await bucket.put(made.key, replace(stale, connection="n1-gone", attempts=1).stored())
    await wait_until(
        lambda: n2.commands._revisions.get(made.key, 0) >= revision, what="n2's watcher saw it"
    )
    assert await n2.commands.deliver("default", "d1") == 0
    assert device.got == [made.id]
    # The store has n2's send again once n2 writes it; an answer on n2 finishes it.
    assert await n2.commands.answer("default", "d1", made.id, b"ok", None, None)
    await wait_until(lambda: answered(n1, made.id), what="answered on n1")
