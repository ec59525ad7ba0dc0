"""Real servers for the sink integration tests: Debian's influxd and prometheus."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import InfluxServer


@pytest.fixture(scope="module")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    """One influxd per test module (it takes about a second to start); tests use own databases."""
    with InfluxServer(tmp_path_factory.mktemp("influxd")) as server:
        yield server
