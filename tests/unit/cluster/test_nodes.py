"""The node registry's answer to "which nodes are alive", across an outage of NATS."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import orjson
import pytest

from headwater.cluster.nodes import NodeInfo, NodeRegistry
from headwater.state import Bucket, StateError, StateUnavailable
from headwater.state.memory import MemoryStore

TTL = 10.0


class _Outage:
    """A bucket that can be cut off, as the registry's is during an outage of NATS."""

    def __init__(self, inner: Bucket) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def keys(self, prefix: str = "") -> list[str]:
        if self.down:
            raise StateUnavailable("NATS is away")
        return await self.inner.keys(prefix)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _beat(bucket: Bucket, name: str) -> None:
    await bucket.put(name, orjson.dumps(asdict(NodeInfo(name, heartbeat=time.time()))))


async def _registry() -> tuple[NodeRegistry, _Outage, _Clock]:
    bucket = _Outage(await MemoryStore().bucket("nodes"))
    registry = NodeRegistry(bucket, "n1", "i1", ttl=TTL)  # type: ignore[arg-type]
    clock = registry.clock = _Clock()
    return registry, bucket, clock


async def test_after_an_outage_a_node_is_not_gone_before_it_had_a_ttl_to_heartbeat() -> None:
    registry, bucket, clock = await _registry()
    for name in ("n1", "n2", "n3"):
        await _beat(bucket, name)
    assert await registry.live() == {"n1", "n2", "n3"}

    bucket.down = True  # NATS away for longer than the TTL: every entry expires
    clock.now += 3 * TTL
    with pytest.raises(StateError):
        await registry.live()
    for name in ("n2", "n3"):
        await bucket.delete(name)
    bucket.down = False
    await _beat(bucket, "n1")  # this node is back first

    assert await registry.live() == {"n1", "n2", "n3"}  # the others may still be on their way
    clock.now += TTL / 2
    await _beat(bucket, "n2")
    assert await registry.live() == {"n1", "n2", "n3"}
    clock.now += TTL / 2
    assert await registry.live() == {"n1", "n2"}  # n3 had a whole TTL: gone


async def test_a_node_that_dies_is_gone_when_its_heartbeat_is_a_ttl_old() -> None:
    registry, bucket, clock = await _registry()
    await _beat(bucket, "n1")
    await _beat(bucket, "n2")
    assert await registry.live() == {"n1", "n2"}
    clock.now += 1.0
    await bucket.delete("n2")  # its entry expired (the bucket's max age is the TTL)
    clock.now += TTL - 1.0
    await _beat(bucket, "n1")
    assert await registry.live() == {"n1"}  # no longer than before this change
