"""LeasedComponent: what a deleted resource's component keeps goes on every node."""

from __future__ import annotations

from typing import Any

from headwater.cluster.leases import LEASES_BUCKET, Lease, LeasedComponent
from headwater.runtime.capabilities import Removable
from headwater.state.memory import MemoryStore
from tests.helpers import wait_until


class Inner:
    def __init__(self) -> None:
        self.started = 0
        self.stopped = 0
        self.forgotten = 0

    async def start(self) -> None:
        self.started += 1

    async def stop(self) -> None:
        self.stopped += 1

    async def removed(self) -> None:
        self.forgotten += 1

    def status(self) -> dict[str, Any]:
        return {}


class Plain:
    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}


async def test_a_deleted_resource_s_inner_component_forgets_on_every_node() -> None:
    bucket = await MemoryStore().bucket(LEASES_BUCKET)
    running, standing_by = Inner(), Inner()
    n1 = LeasedComponent(running, Lease(bucket, "trigger/default/t", "n1", "a"))
    n2 = LeasedComponent(standing_by, Lease(bucket, "trigger/default/t", "n2", "b"))
    await n1.start()
    await wait_until(lambda: n1.active, what="n1 runs it")
    await n2.start()
    assert not n2.active  # n1 holds the lease
    for component in (n1, n2):  # what the reconciler does with a deleted resource's
        await component.stop()
        assert isinstance(component, Removable)
        await component.removed()
    assert (running.started, running.stopped, running.forgotten) == (1, 1, 1)
    assert (standing_by.started, standing_by.forgotten) == (0, 1)


async def test_an_inner_component_that_keeps_nothing_is_left_alone() -> None:
    bucket = await MemoryStore().bucket(LEASES_BUCKET)
    leased = LeasedComponent(Plain(), Lease(bucket, "pingsource/default/p", "n1", "a"))
    await leased.start()
    await wait_until(lambda: leased.active, what="it runs")
    await leased.stop()
    await leased.removed()  # no AttributeError: Plain has no removed()
