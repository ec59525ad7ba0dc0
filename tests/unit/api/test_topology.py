"""GET /api/v1/topology: resources as nodes with roles and health, specs as edges."""

from __future__ import annotations

from headwater.api.topology import FAILING_FOR, LAGGING, _health
from tests.helpers import wait_until
from tests.unit.api.mesh import Mesh

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
---
apiVersion: sources.knative.dev/v1
kind: PingSource
metadata: {name: beat}
spec:
  schedule: "* * * * *"
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: show}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
  delivery:
    deadLetterSink: {uri: "http://127.0.0.1:9/dead"}
"""


async def test_the_mesh_as_a_graph(mesh: Mesh) -> None:
    await mesh.apply(MESH)
    await mesh.send("t-1", {"x": 1})
    status, body = await mesh.json("GET", "/api/v1/topology")
    assert status == 200
    nodes = {node["id"]: node for node in body["nodes"]}
    assert {n: nodes[n]["role"] for n in nodes} == {
        "Broker/default/default": "channel",
        "EventDisplay/default/display": "sink",
        "PingSource/default/beat": "source",
        "Trigger/default/show": "route",
        "uri:http://127.0.0.1:9/dead": "sink",
    }
    assert {(e["from"], e["to"], e["via"]) for e in body["edges"]} == {
        ("PingSource/default/beat", "Broker/default/default", "sink"),
        ("Broker/default/default", "Trigger/default/show", "broker"),
        ("Trigger/default/show", "EventDisplay/default/display", "subscriber"),
        ("Trigger/default/show", "uri:http://127.0.0.1:9/dead", "deadLetterSink"),
    }
    broker = nodes["Broker/default/default"]
    assert broker["counters"]["accepted"] == 1
    assert broker["ready"] == "True"
    assert broker["health"] == "ok"
    assert "delivered" in nodes["Trigger/default/show"]["counters"]
    assert isinstance(body["time"], float)


def test_health_verdicts() -> None:
    ready = {"status": "True"}
    now = 1000.0
    assert _health("Trigger", ready, {"lag": 0}, None, now) == "ok"
    assert _health("Trigger", ready, {"lag": LAGGING}, None, now) == "lagging"
    assert _health("Broker", ready, {"lag": LAGGING}, None, now) == "ok"
    assert _health("Trigger", {"status": "False"}, {"lag": 0}, None, now) == "not-ready"
    assert _health("Trigger", ready, {"lag": LAGGING}, now - 1, now) == "failing"
    assert _health("Trigger", ready, {"lag": 0}, now - FAILING_FOR, now) == "ok"


async def test_a_trigger_that_gives_events_up_is_failing(mesh: Mesh) -> None:
    await mesh.apply(
        """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: broken}
spec:
  broker: default
  subscriber: {uri: "http://127.0.0.1:9/"}
"""
    )
    _, before = await mesh.json("GET", "/api/v1/topology")
    assert {n["id"]: n["health"] for n in before["nodes"]}["Trigger/default/broken"] == "ok"
    await mesh.send("f-1", 1)

    async def failing() -> bool:
        _, body = await mesh.json("GET", "/api/v1/topology")
        return {n["id"]: n["health"] for n in body["nodes"]}["Trigger/default/broken"] == "failing"

    await wait_until(failing)


async def test_an_uplink_is_a_source_between_its_broker_and_the_other_tier(mesh: Mesh) -> None:
    await mesh.apply(
        MESH
        + """\
---
apiVersion: sources.headwater.dev/v1alpha1
kind: Uplink
metadata: {name: up}
spec:
  broker: default
  sink: {uri: "http://127.0.0.1:9/default/default"}
"""
    )
    _, body = await mesh.json("GET", "/api/v1/topology")
    nodes = {node["id"]: node for node in body["nodes"]}
    assert nodes["Uplink/default/up"]["role"] == "source"
    edges = {(e["from"], e["to"], e["via"]) for e in body["edges"]}
    assert ("Broker/default/default", "Uplink/default/up", "broker") in edges
    assert ("Uplink/default/up", "uri:http://127.0.0.1:9/default/default", "sink") in edges
