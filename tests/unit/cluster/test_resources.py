"""What a mesh node runs at start when other nodes start with it (cluster.resources).

Nodes started together without ``-f`` each find the ``resources`` bucket
empty or half seeded by another: each must end up running every embedded
default (a node that ran the half it saw came up without its MQTT listener,
and its start failed). A bucket that holds anything else is the mesh's and
is run as it is.
"""

from __future__ import annotations

import asyncio
from typing import Any

from headwater.api.server import UpOptions, embedded_defaults
from headwater.cluster.connection import NatsOptions
from headwater.cluster.resources import MeshResources
from headwater.resources import Loaded, LoadResult, collect_text
from headwater.runtime.applied import EMBEDDED_DEFAULTS, ResourceStore
from headwater.runtime.reconciler import Reconciler
from headwater.state.memory import MemoryStore

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders}
"""


class Running:
    """A component that only says it runs."""

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def update(self, resource: Any) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {}


async def _build(resource: Any) -> Running:
    return Running()


MESH = UpOptions(nats=NatsOptions(("nats://127.0.0.1:4222",)))


def files() -> LoadResult:
    """What a node of a mesh started without ``-f`` loads: the embedded defaults."""
    return collect_text(embedded_defaults(MESH), EMBEDDED_DEFAULTS)


def defaults() -> list[Loaded]:
    return files().result()


def node(state: MemoryStore, name: str) -> MeshResources:
    kinds = {item.resource.kind for item in defaults()}
    reconciler = Reconciler(dict.fromkeys(kinds, _build), {})
    return MeshResources(reconciler, state, name, files_given=False)


def running(resources: MeshResources) -> set[tuple[str, str, str]]:
    return {r.key for r in resources.reconciler.resources()}


async def test_a_node_finding_the_defaults_half_seeded_runs_all_of_them() -> None:
    state = MemoryStore()
    seeded = defaults()
    store = ResourceStore(await state.bucket("resources"), "n1")
    await store.save(seeded[0], source="file")  # n1 has written one so far
    revision = await store.bucket.revision()

    n2 = node(state, "n2")
    await n2.start(files())
    try:
        assert running(n2) == {item.resource.key for item in seeded}
        first = await store.bucket.get(next(iter(await store.bucket.keys())))
        assert first is not None and first.revision <= revision  # n1's copy not rewritten
    finally:
        await n2.close()


async def test_nodes_started_together_all_run_every_default() -> None:
    state = MemoryStore()
    nodes = [node(state, f"n{i}") for i in (1, 2, 3)]
    try:
        await asyncio.gather(*(n.start(files()) for n in nodes))
        wanted = {item.resource.key for item in defaults()}
        assert all(running(n) == wanted for n in nodes)
    finally:
        for n in nodes:
            await n.close()


async def test_a_bucket_holding_more_than_the_defaults_is_run_as_it_is() -> None:
    state = MemoryStore()
    store = ResourceStore(await state.bucket("resources"), "n1")
    [orders] = collect_text(BROKER, "mesh.yaml").result()
    await store.save(orders, source="file")

    n2 = node(state, "n2")
    await n2.start(files())
    try:
        assert running(n2) == {orders.resource.key}
    finally:
        await n2.close()
