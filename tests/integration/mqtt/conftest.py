"""Fixtures for the MQTT broker integration tests: brokers on ephemeral ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.mqtt.broker import BrokerConfig, Listener
from tests.integration.mqtt._clients import BrokerThread, close_all, make_certificates

MakeBroker = Callable[..., BrokerThread]


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_all()


@pytest.fixture
def make_broker() -> Iterator[MakeBroker]:
    """Start brokers with a config (listeners default to one loopback TCP port 0)."""
    started: list[BrokerThread] = []

    def make(config: BrokerConfig | None = None, **hooks: Any) -> BrokerThread:
        config = config or BrokerConfig(listeners=(Listener(port=0),))
        broker = BrokerThread(config, **hooks).start()
        started.append(broker)
        return broker

    yield make
    # Clients first (this runs before the autouse _close_clients teardown): a
    # broker stopped under a TLS WebSocket client ends its loop while the TLS
    # close is still under way, leaving that socket to the garbage collector.
    close_all()
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(make_broker: MakeBroker) -> BrokerThread:
    return make_broker()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("certs"))
