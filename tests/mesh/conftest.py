"""Fixtures for the mesh tests: a three-server NATS JetStream cluster of each test's own,
and `headwater up --nats` nodes on it (stopped after the test)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.mesh.nodes import Node  # noqa: E402
from tests.servers import NatsCluster  # noqa: E402


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats") as cluster:
        yield cluster


@pytest.fixture
def mesh_node(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[Callable[..., Node]]:
    """``mesh_node(name, files=..., extra=...)``: a started node of the cluster's mesh."""
    started: list[Node] = []

    def start(name: str, *, start: bool = True, **kwargs: object) -> Node:
        node = Node(name, nats_cluster.url, tmp_path / name, **kwargs)  # type: ignore[arg-type]
        started.append(node)
        if start:
            node.start()
        return node

    yield start
    for node in started:
        node.stop()
