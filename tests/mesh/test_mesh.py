"""Several `headwater up --nats` nodes on a three-server JetStream cluster: one mesh.

Resources applied on one node run on every node and survive a restart of
all of them; events taken by one node's ingress are delivered by every
node's share of the Trigger's consumer, each once; ``describe`` sums the
nodes' counters; ``get nodes`` lists the nodes; a Broker's stream has the
replicas its annotation asks for (three by default on three servers); dead
letters, devices, live events and replays are the same on every node.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from headwater.log.jetstream import nats_token
from tests.mesh.nodes import Node, http_error, receiving, wait_for
from tests.servers import NatsCluster

pytestmark = pytest.mark.integration

BROKER = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: orders}
"""


def trigger(name: str, url: str, **annotations: str) -> str:
    notes = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in annotations.items())
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {name}
  annotations:
    headwater.dev/start: earliest{notes}
spec:
  broker: orders
  subscriber: {{uri: {json.dumps(url)}}}
"""


def post_event(node: Node, event_id: str, broker: str = "orders") -> int:
    request = urllib.request.Request(
        f"{node.url}/default/{broker}",
        data=json.dumps({"n": event_id}).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-source": "/mesh-test",
            "ce-type": "mesh.test",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


def names(node: Node, kind: str) -> set[str]:
    items = node.api(path=f"/api/v1/resources/{kind}")["items"]
    return {i["metadata"]["name"] for i in items if _ready(i)}


def _ready(item: dict[str, object]) -> bool:
    conditions = item.get("status", {}).get("conditions", [])  # type: ignore[union-attr]
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_apply_on_one_node_changes_every_node_and_survives_a_restart_of_all(
    mesh_node: Callable[..., Node],
) -> None:
    n1, n2, n3 = (mesh_node(name) for name in ("n1", "n2", "n3"))
    n1.apply(BROKER)
    for node in (n2, n3):
        wait_for(f"the Broker on {node.name}", lambda node=node: "orders" in names(node, "brokers"))
    described = n3.api(path="/api/v1/resources/Broker/default/orders")
    assert described["status"]["origin"] == {
        "source": "api",
        "file": "request",
        "line": 1,
        "resourceVersion": described["metadata"]["resourceVersion"],
        "applied": described["status"]["origin"]["applied"],
        "node": "n1",
    }

    # A change on n3 reaches n1; a delete on n2 reaches all.
    n3.apply(BROKER.replace("name: orders", "name: audit"))
    wait_for("the second Broker on n1", lambda: "audit" in names(n1, "brokers"))
    assert n2.cli("delete", "broker", "audit").returncode == 0
    wait_for("the delete on n1", lambda: "audit" not in names(n1, "brokers"))
    wait_for("the delete on n3", lambda: "audit" not in names(n3, "brokers"))

    for node in (n1, n2, n3):
        node.stop()
    for node in (n1, n2, n3):
        node.start()
    # Ready says started: what the mesh holds runs before `ready`.
    assert {"orders", "default"} <= names(n2, "brokers")
    assert "audit" not in names(n2, "brokers")


def test_events_from_one_ingress_are_delivered_by_every_node_once(
    mesh_node: Callable[..., Node],
) -> None:
    n1, n2, n3 = (mesh_node(name) for name in ("n1", "n2", "n3"))
    # A slow subscriber, so that one node cannot take everything.
    with receiving(delay=0.02) as receiver:
        n2.apply(
            BROKER + "---\n" + trigger("all", receiver.url, **{"headwater.dev/max-inflight": "1"})
        )
        for node in (n1, n2, n3):
            wait_for(
                f"the Trigger on {node.name}", lambda node=node: "all" in names(node, "triggers")
            )
        sent = [f"e{i}" for i in range(60)]
        for event_id in sent:
            assert post_event(n1, event_id) == 202
        receiver.wait_for_requests(len(sent))

        def settled() -> dict[str, object] | None:
            status = n3.api(path="/api/v1/resources/Trigger/default/all")["status"]
            return status if status["delivered"] == len(sent) else None

        status = wait_for("the deliveries counted", settled)
    assert sorted(receiver.ids) == sorted(sent), "an event was lost or delivered twice"
    per_node = {name: s["delivered"] for name, s in status["nodes"].items()}
    assert set(per_node) == {"n1", "n2", "n3"}
    assert sum(per_node.values()) == len(sent)
    assert sum(1 for count in per_node.values() if count) >= 2, per_node

    described = n1.cli("describe", "trigger", "all")
    assert described.returncode == 0, described.stderr
    assert "Nodes (the counters above are their sum):" in described.stdout
    assert f"delivered:            {len(sent)}" in described.stdout or (
        f"delivered: {len(sent)}" in " ".join(described.stdout.split())
    )


def test_get_nodes_lists_every_live_node(mesh_node: Callable[..., Node]) -> None:
    n1, n2 = mesh_node("n1"), mesh_node("n2")
    listed = wait_for(
        "both nodes with their addresses",
        lambda: (
            items
            if len(items := n1.api(path="/api/v1/nodes")["items"]) == 2
            and all("http" in i["addresses"] for i in items)
            else None
        ),
    )
    assert [i["name"] for i in listed] == ["n1", "n2"]
    assert {i["addresses"]["http"] for i in listed} == {n1.url, n2.url}
    table = n2.cli("get", "nodes")
    assert table.returncode == 0, table.stderr
    assert "n2 (this)" in table.stdout and n1.url in table.stdout
    n2.stop()
    wait_for(
        "n2 gone from the list",
        lambda: [i["name"] for i in n1.api(path="/api/v1/nodes")["items"]] == ["n1"],
    )


def test_files_are_the_mesh_files_of_the_node_that_started_last(
    mesh_node: Callable[..., Node], tmp_path: Path
) -> None:
    first = tmp_path / "first.yaml"
    first.write_text(BROKER + "---\n" + BROKER.replace("orders", "old"))
    n1 = mesh_node("n1", files=[first])
    n2 = mesh_node("n2")  # no files: runs what the mesh holds
    assert {"orders", "old"} <= names(n2, "brokers")
    refused = n2.cli("delete", "broker", "orders")
    assert refused.returncode != 0 and "first.yaml" in refused.stderr  # a file owns it

    second = tmp_path / "second.yaml"
    second.write_text(BROKER)
    n3 = mesh_node("n3", files=[second])
    assert names(n3, "brokers") >= {"orders"} and "old" not in names(n3, "brokers")
    wait_for("the dropped Broker gone from n1", lambda: "old" not in names(n1, "brokers"))


def test_devices_dead_letters_and_live_events_are_the_same_on_every_node(
    mesh_node: Callable[..., Node],
) -> None:
    n1, n2, n3 = (mesh_node(name) for name in ("n1", "n2", "n3"))
    # The subscriber fails: every event becomes a dead letter.
    with receiving(status=500) as receiver:
        failing = trigger("failing", receiver.url).replace(
            "spec:\n", "spec:\n  delivery: {retry: 0}\n"
        )
        n1.apply(BROKER + "---\n" + failing)
        for node in (n2, n3):
            wait_for(
                f"the Trigger on {node.name}",
                lambda node=node: "failing" in names(node, "triggers"),
            )
            node.api(path="/api/v1/telemetry")  # its dashboard follows the Broker from now on
        for i in range(6):
            request = urllib.request.Request(
                f"{n1.url}/default/orders",
                data=json.dumps({"temperature": 20 + i}).encode(),
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "ce-specversion": "1.0",
                    "ce-id": f"reading-{i}",
                    "ce-source": "/sensors",
                    "ce-type": "reading",
                    "ce-subject": f"sensor-{i}",
                },
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert answer.status == 202
        everyone = {f"sensor-{i}" for i in range(6)}
        for node in (n2, n3):
            # Each node's dashboard reads every event (a cursor of its own), not a share.
            wait_for(
                f"every device on {node.name}",
                lambda node=node: (
                    {d["device"] for d in node.api(path="/api/v1/telemetry")["devices"]} == everyone
                ),
            )
        for node in (n1, n3):
            wait_for(
                f"every dead letter on {node.name}",
                lambda node=node: len(node.api(path="/api/v1/deadletters?limit=100")["items"]) == 6,
            )
    tail = urllib.request.urlopen(
        f"{n3.url}/api/v1/brokers/default/orders/events?start=earliest", timeout=10
    )
    try:
        seen = set()
        while len(seen) < 6:
            line = tail.readline().decode()
            if line.startswith("data: "):
                seen.add(json.loads(line[6:])["id"])
        assert seen == {f"reading-{i}" for i in range(6)}
    finally:
        tail.close()


def stream_replicas(cluster: NatsCluster, stream: str) -> int:
    """The replicas JetStream keeps of a Headwater stream of the mesh."""
    import asyncio

    import nats

    async def ask() -> int:
        nc = await nats.connect(cluster.url.split(","))
        try:
            info = await nc.jetstream().stream_info(f"headwater_{nats_token(stream)}")
            return int(info.config.num_replicas)
        finally:
            await nc.close()

    return asyncio.run(ask())


def annotated_broker(name: str, replicas: str) -> str:
    return BROKER.replace(
        "{name: orders}", f"{{name: {name}, annotations: {{headwater.dev/replicas: '{replicas}'}}}}"
    )


def test_a_brokers_stream_has_the_replicas_its_annotation_asks_for(
    mesh_node: Callable[..., Node], nats_cluster: NatsCluster
) -> None:
    n1 = mesh_node("n1")
    n1.apply(
        BROKER
        + "---\n"
        + BROKER.replace(
            "{name: orders}", "{name: few, annotations: {headwater.dev/replicas: '1'}}"
        )
    )
    wait_for("both Brokers", lambda: {"orders", "few"} <= names(n1, "brokers"))
    assert post_event(n1, "e1") == 202 and post_event(n1, "e2", broker="few") == 202
    # Three servers: three copies by default; the annotation asks for one.
    assert stream_replicas(nats_cluster, "broker/default/orders") == 3
    assert stream_replicas(nats_cluster, "broker/default/few") == 1
    refused = http_error(
        lambda: n1.apply(
            BROKER.replace(
                "{name: orders}", "{name: bad, annotations: {headwater.dev/replicas: '7'}}"
            )
        )
    )
    assert refused.code == 422 and "headwater.dev/replicas" in refused.read().decode()


def test_a_replay_asked_of_any_node_reads_the_shared_stream(
    mesh_node: Callable[..., Node],
) -> None:
    n1, n2 = mesh_node("n1"), mesh_node("n2")
    n1.apply(BROKER)
    wait_for("the Broker on n2", lambda: "orders" in names(n2, "brokers"))
    sent = [f"r{i}" for i in range(5)]
    for event_id in sent:
        assert post_event(n1, event_id) == 202
    with receiving() as receiver:
        job = n2.api(
            "POST",
            "/api/v1/replays",
            {"broker": "orders", "start": "earliest", "destination": {"uri": receiver.url}},
        )
        done = wait_for(
            "the replay done",
            lambda: (j := n2.api(path=f"/api/v1/replays/{job['id']}"))["done"] and j,
        )
        assert done["state"] == "done" and done["delivered"] == len(sent)
        assert receiver.wait_for_requests(len(sent)) == sent
