"""The simulator as registered devices: commands answered by convention, twins followed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from headwater.cli.devices import register_simulated as register
from headwater.mqtt.packets import ProtocolVersion
from headwater.sources.simulator import Fleet, FleetConfig
from tests.helpers import wait_until_blocking as wait_until
from tests.integration.devices.conftest import Node

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", [ProtocolVersion.MQTT311, ProtocolVersion.MQTT5])
def test_registered_simulated_devices(node: Node, version: ProtocolVersion) -> None:
    secrets = register(node.url, None, ["gh-0", "gh-1"])
    assert sorted(secrets) == ["gh-0", "gh-1"]
    # Registering again gives them new secrets (the old ones were shown once, and are gone).
    secrets = register(node.url, None, ["gh-0", "gh-1"])
    fleet = Fleet(
        FleetConfig(
            port=node.port, devices=2, rate=20, prefix="gh", version=version, secrets=secrets
        )
    )
    started: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def run() -> None:
        stop = asyncio.Event()
        started.append((asyncio.get_running_loop(), stop))
        task = asyncio.create_task(fleet.run())
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    runner = threading.Thread(target=asyncio.run, args=(run(),))
    runner.start()
    wait_until(lambda: bool(started))
    try:
        wait_until(lambda: node.ok("GET", "/api/v1/devices/gh-1")["presence"]["online"])
        command = node.ok("POST", "/api/v1/devices/gh-1/commands", {"data": {"setpoint": 18}})
        done = node.ok("GET", f"/api/v1/devices/gh-1/commands/{command['id']}?wait=10")
        assert done["status"] == "answered"
        assert done["response"]["data"] == {"ok": True, "device": "gh-1", "setpoint": 18.0}
        node.ok("PATCH", "/api/v1/devices/gh-0/twin/desired", {"state": {"setpoint": 24.5}})
        wait_until(
            lambda: (
                node.ok("GET", "/api/v1/devices/gh-0/twin")["reported"]["state"]
                == {"setpoint": 24.5}
            ),
            10,
        )
        assert node.ok("GET", "/api/v1/devices/gh-0/twin")["delta"] == {}
        assert fleet.stats.reconnects == 0
    finally:
        loop, stop = started[0]
        loop.call_soon_threadsafe(stop.set)
        runner.join(30)
