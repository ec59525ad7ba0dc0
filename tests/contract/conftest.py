"""The contract suite's fixtures: one ``harness`` per event-log backend."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from headwater.log import EventLog

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.contract.log_harness import (  # noqa: E402
    Harness,
    JetStreamHarness,
    MemoryHarness,
    SqliteHarness,
)
from tests.servers import NatsServer  # noqa: E402


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    with NatsServer(tmp_path_factory.mktemp("nats")) as server:
        yield server


@pytest.fixture(
    params=[
        "memory",
        "sqlite",  # durability `normal`: group commits on the event loop (LoopWriter)
        "sqlite-fsync",  # group commits on the writer thread (Writer)
        pytest.param("jetstream", marks=pytest.mark.integration),
    ]
)
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    made: Harness
    if request.param == "memory":
        made = MemoryHarness()
    elif request.param == "sqlite":
        made = SqliteHarness(tmp_path)
    elif request.param == "sqlite-fsync":
        made = SqliteHarness(tmp_path, "fsync")
    elif request.param == "jetstream":
        server: NatsServer = request.getfixturevalue("nats_server")
        made = JetStreamHarness(server.url, f"t{uuid.uuid4().hex[:12]}")
    else:
        raise AssertionError(request.param)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def log(harness: Harness) -> EventLog:
    return await harness.open()
