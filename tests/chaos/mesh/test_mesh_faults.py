"""Faults under QoS 1 load on a mesh of three nodes and three NATS servers (R3 streams).

Each test: devices spread over the nodes publish QoS 1 readings; a fault
strikes; the devices carry on; then every reading that got a PUBACK must be
in the Broker's stream (0 acknowledged events lost), and the extra copies are
counted (at least once: a device resends what it got no PUBACK for).

- SIGKILL of a Headwater node: its devices move to the other nodes and resume
  their sessions there.
- SIGKILL of one NATS server of three: the streams keep a quorum.
- Every Headwater node killed at once, then started again.
- A node cut off from NATS (a silent partition): it stops acknowledging
  (MQTT and HTTP), and acknowledges again once NATS is back.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.mesh._fleet import MESH, Blackhole, Fleet, report, stored
from tests.mesh.nodes import Node
from tests.servers import NatsCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration]

DEVICES = 9
LOAD = 3.0
"""Seconds of load before and after a fault."""


@pytest.fixture
def files(tmp_path: Path) -> Path:
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH)
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(tmp_path / "nats") as nats:
        yield nats


def start_nodes(cluster: NatsCluster, tmp_path: Path, files: Path, count: int = 3) -> list[Node]:
    nodes = [
        Node(f"n{i + 1}", cluster.url, tmp_path / f"n{i + 1}", files=[files]) for i in range(count)
    ]
    for node in nodes:
        node.start()
    return nodes


async def until_all_acking(fleet: Fleet, within: float = 60.0) -> None:
    """Until every device has had a PUBACK again since now (they all recovered)."""
    since = time.monotonic()
    deadline = since + within
    while not all(fleet.last_ack.get(i, 0.0) > since for i in range(fleet.count)):
        assert time.monotonic() < deadline, f"devices did not recover: {fleet.connected}"
        await asyncio.sleep(0.1)


def test_sigkill_of_a_node_loses_no_acknowledged_reading(
    cluster: NatsCluster, tmp_path: Path, files: Path
) -> None:
    nodes = start_nodes(cluster, tmp_path, files)
    try:

        async def run() -> Fleet:
            fleet = Fleet([n.mqtt_port for n in nodes], DEVICES)
            fleet.start()
            await asyncio.sleep(LOAD)
            victim = nodes[1]
            on_victim = {d for d, n in fleet.connected.items() if n == 1}
            assert on_victim, "no device on the node to kill"
            victim.kill()
            await asyncio.sleep(LOAD)
            await until_all_acking(fleet)
            moved = {d: fleet.connected[d] for d in on_victim}
            assert all(n != 1 for n in moved.values()), moved
            await fleet.stop()
            return fleet

        fleet = asyncio.run(run())
        assert fleet.resumed >= 1, "no device resumed its session on another node"
        lost, _ = report(fleet, asyncio.run(stored(cluster.urls)))
        assert lost == 0
    finally:
        for node in nodes:
            node.stop()


def test_sigkill_of_one_nats_server_of_three_loses_no_acknowledged_reading(
    cluster: NatsCluster, tmp_path: Path, files: Path
) -> None:
    nodes = start_nodes(cluster, tmp_path, files)
    try:

        async def run() -> Fleet:
            fleet = Fleet([n.mqtt_port for n in nodes], DEVICES)
            fleet.start()
            await asyncio.sleep(LOAD)
            await asyncio.to_thread(cluster.kill, 1)
            await asyncio.sleep(LOAD)
            await until_all_acking(fleet)
            await asyncio.to_thread(cluster.start_server, 1)
            await asyncio.sleep(1.0)
            await until_all_acking(fleet)
            await fleet.stop()
            return fleet

        fleet = asyncio.run(run())
        lost, _ = report(fleet, asyncio.run(stored(cluster.urls)))
        assert lost == 0
    finally:
        for node in nodes:
            node.stop()


def test_every_node_killed_at_once_and_started_again_loses_nothing_acknowledged(
    cluster: NatsCluster, tmp_path: Path, files: Path
) -> None:
    nodes = start_nodes(cluster, tmp_path, files)
    try:

        async def run() -> Fleet:
            fleet = Fleet([n.mqtt_port for n in nodes], DEVICES)
            fleet.start()
            await asyncio.sleep(LOAD)
            for node in nodes:
                node.kill()
            for node in nodes:
                await asyncio.to_thread(node.start)  # the same ports and data
            await until_all_acking(fleet)
            await asyncio.sleep(LOAD)
            await fleet.stop()
            return fleet

        fleet = asyncio.run(run())
        assert fleet.resumed >= DEVICES // 2, "sessions did not survive the restart"
        lost, _ = report(fleet, asyncio.run(stored(cluster.urls)))
        assert lost == 0
    finally:
        for node in nodes:
            node.stop()


def post(node: Node, event_id: str) -> int:
    request = urllib.request.Request(
        f"{node.url}/default/telemetry",
        data=b'{"d": -1, "n": 0}',
        method="POST",
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/partition",
            "ce-type": "t",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def probe(node: Node) -> int:
    """What ``/api/v1/health`` (a Kubernetes probe's URL) answers."""
    try:
        with urllib.request.urlopen(f"{node.url}/api/v1/health", timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_node_cut_off_from_nats_stops_acknowledging(tmp_path: Path, files: Path) -> None:
    with NatsCluster(tmp_path / "nats", no_advertise=True) as cluster:
        proxies = [Blackhole(server.port) for server in cluster.servers]
        cut_url = ",".join(p.url for p in proxies)
        nodes = [
            Node("n1", cluster.url, tmp_path / "n1", files=[files], extra=["--nats-replicas", "3"]),
            Node("n2", cut_url, tmp_path / "n2", files=[files], extra=["--nats-replicas", "3"]),
        ]
        try:
            for node in nodes:
                node.start()

            async def run() -> tuple[Fleet, int, int]:
                fleet = Fleet([nodes[1].mqtt_port], 3)  # all on the node to cut off
                fleet.start()
                await asyncio.sleep(LOAD)
                for proxy in proxies:
                    proxy.cut()
                # What was under way when the link went may still get its PubAck... no:
                # nothing crosses a cut link. Acks from before the cut are counted out.
                cut_at = time.monotonic() + 0.5
                await asyncio.sleep(12.0)  # past nats-py's ping timeout and our request timeout
                during = sum(1 for node, t in fleet.ack_times if t > cut_at)
                status = await asyncio.to_thread(post, nodes[1], "during-the-cut")
                health = await asyncio.to_thread(probe, nodes[1])
                for proxy in proxies:
                    proxy.heal()
                await until_all_acking(fleet, within=90)
                await fleet.stop()
                return fleet, during, status, health

            fleet, during, status, health = asyncio.run(run())
            assert during == 0, f"{during} readings acknowledged while cut off from NATS"
            assert status == 503, f"the ingress answered {status} while cut off"
            assert health == 503, "the node said it was healthy while cut off"
            assert probe(nodes[1]) == 200, "healthy again once NATS is back"
            assert fleet.refused > 0
            lost, _ = report(fleet, asyncio.run(stored(cluster.urls)))
            assert lost == 0
        finally:
            for node in nodes:
                node.stop()
            for proxy in proxies:
                proxy.close()
