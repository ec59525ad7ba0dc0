"""/metrics renders the data plane's counters in the Prometheus text format."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from headwater.api import create_app
from headwater.cloudevents import CloudEvent
from headwater.runtime import Runtime
from tests.helpers import wait_until

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: EventDisplay
metadata: {name: display}
spec: {format: json}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: only-a}
spec:
  broker: default
  filter: {attributes: {type: a}}
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: EventDisplay, name: display}
"""


def _event(i: int, type_: str) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": str(i), "source": "/t", "type": type_})


async def test_metrics_reflect_deliveries() -> None:
    runtime = Runtime()
    await runtime.apply_text(MESH, "mesh.yaml")
    broker = runtime.broker("default", "default")
    stale = _event(4, "a").evolve({"expiresat": "2020-01-01T00:00:00Z"})
    await broker.accept([_event(1, "a"), _event(2, "b"), _event(3, "a"), stale])
    trigger = runtime.reconciler.component(("Trigger", "default", "only-a"))
    key = ("Trigger", "default", "only-a")
    await wait_until(
        lambda: runtime.status(key)["delivered"] == 2 and runtime.status(key)["expired"] == 1
    )
    assert trigger is not None
    async with TestClient(TestServer(create_app(runtime))) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    await runtime.close()
    samples = {
        (s.name, s.labels.get("name"), s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("headwater_events_accepted_total", "default", None)] == 4
    assert samples[("headwater_delivery_delivered_total", "only-a", None)] == 2
    assert samples[("headwater_delivery_filtered_total", "only-a", None)] == 1
    assert samples[("headwater_delivery_expired_total", "only-a", None)] == 1
    assert samples[("headwater_delivery_latency_seconds_count", "only-a", None)] == 2
    assert samples[("headwater_delivery_latency_seconds_bucket", "only-a", "+Inf")] == 2
    assert samples[("headwater_log_events", None, None)] == 4
