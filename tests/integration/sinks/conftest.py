"""Real servers for the sink integration tests: Debian's influxd and prometheus."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestServer

from headwater.api import create_app
from headwater.runtime import Runtime
from tests.servers import LOOPBACK, InfluxServer


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd per test module (it takes about a second to start); tests use own databases."""
    with InfluxServer(tmp_path_factory.mktemp("influxd")) as server:
        yield server


@pytest.fixture
async def headwater() -> AsyncIterator[tuple[Runtime, str]]:
    """A running Headwater (runtime + HTTP API) on an ephemeral port: (runtime, host:port)."""
    runtime = Runtime()
    async with TestServer(create_app(runtime), host=LOOPBACK) as server:
        yield runtime, f"{LOOPBACK}:{server.port}"
    await runtime.close()
