"""The runtime's seams: what builders get, when kinds start, what components declare."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from headwater.cloudevents import CloudEvent
from headwater.eventing import DeliveryError, RecordingSink, Sink
from headwater.resources import load_text
from headwater.runtime import Context, Runtime
from headwater.runtime.context import Stage
from headwater.runtime.destinations import RefSink
from headwater.runtime.jobs import Job, JobState
from headwater.runtime.metrics import merge
from headwater.runtime.reconciler import Component, Key, Reconciler
from headwater.runtime.runtime import KINDS

EVENT = CloudEvent({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"})


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_builder_takes_the_context_not_the_runtime(kind: str) -> None:
    build = KINDS[kind].build
    first = next(iter(inspect.signature(build).parameters.values()))
    assert first.annotation in ("Context", Context), f"{kind} is built from {first.annotation}"


@pytest.mark.parametrize(
    ("receiver", "sender"),
    [
        pytest.param("Broker", "Trigger", id="broker-before-trigger"),
        pytest.param("InMemoryChannel", "Subscription", id="channel-before-subscription"),
        pytest.param("EventDisplay", "Trigger", id="subscriber-before-trigger"),
        pytest.param("HttpSink", "PingSource", id="sink-before-source"),
        pytest.param("Broker", "MqttBrokerSource", id="broker-before-mqtt"),
        pytest.param("MqttSink", "Trigger", id="mqtt-sink-before-trigger"),
    ],
)
def test_receivers_start_before_senders(receiver: str, sender: str) -> None:
    assert KINDS[receiver].stage < KINDS[sender].stage


class Recorded:
    def __init__(self, key: Key, log: list[str]) -> None:
        self.key, self.log = key, log

    async def start(self) -> None:
        self.log.append(f"start {self.key[0]}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.key[0]}")

    async def update(self, resource: Any) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {}


async def test_the_reconciler_starts_by_stage_and_stops_the_other_way() -> None:
    log: list[str] = []

    async def build(resource: Any) -> Component:
        return Recorded(resource.key, log)

    kinds = ("PingSource", "Trigger", "Broker", "EventDisplay")
    reconciler = Reconciler(
        dict.fromkeys(kinds, build),
        {"EventDisplay": Stage.SINK, "Broker": Stage.FANOUT, "Trigger": Stage.MEMBER},
    )
    await reconciler.apply(
        load_text(
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata: {name: p}\n"
            "spec: {schedule: '* * * * *', sink: {ref: {apiVersion: eventing.knative.dev/v1,"
            " kind: Broker, name: b}}}\n---\n"
            "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n"
            "spec: {broker: b, subscriber: {ref: {apiVersion: sinks.headwater.dev/v1alpha1,"
            " kind: EventDisplay, name: d}}}\n---\n"
            "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\n"
            "apiVersion: sinks.headwater.dev/v1alpha1\nkind: EventDisplay\nmetadata: {name: d}\n",
            "m.yaml",
        )
    )
    await reconciler.close()
    # A kind without a stage (PingSource here) starts after every ranked one.
    assert log == [
        "start EventDisplay",
        "start Broker",
        "start Trigger",
        "start PingSource",
        "stop PingSource",
        "stop Trigger",
        "stop Broker",
        "stop EventDisplay",
    ]


class Addressed:
    """A running component with a sink (Addressable)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink


async def test_a_ref_finds_a_recreated_receiver_and_fails_retryably_without_one() -> None:
    running: dict[Key, Any] = {}
    ref = RefSink(running.get, ("EventDisplay", "default", "d"))
    with pytest.raises(DeliveryError) as info:
        await ref.deliver(EVENT)
    assert info.value.retryable and "not ready" in str(info.value)

    first, second = RecordingSink(), RecordingSink()
    running[ref.key] = Addressed(first)
    await ref.deliver(EVENT)
    running[ref.key] = Addressed(second)  # recreated: another component
    await ref.deliver(EVENT)
    assert (len(first.events), len(second.events)) == (1, 1)

    running[ref.key] = object()  # running, but nothing to deliver to
    with pytest.raises(DeliveryError):
        await ref.deliver(EVENT)


def test_families_of_one_name_are_merged_and_a_conflicting_type_is_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = CounterMetricFamily("events", "Events.", labels=["name"])
    first.add_metric(["a"], 1)
    second = CounterMetricFamily("events", "Events.", labels=["name"])
    second.add_metric(["b"], 2)
    clash = GaugeMetricFamily("events", "Not a counter.", labels=["name"])
    clash.add_metric(["c"], 3)
    with caplog.at_level(logging.WARNING):
        (merged,) = merge([first, second, clash])
    assert [s.labels["name"] for s in merged.samples] == ["a", "b"]
    assert "events is published as a counter and as a gauge" in caplog.text


async def test_two_prometheus_sinks_of_one_metric_make_one_family_in_metrics() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from headwater.api.metrics import render

    sink = (
        "apiVersion: sinks.headwater.dev/v1alpha1\nkind: PrometheusSink\nmetadata: {{name: {}}}\n"
        "spec: {{metrics: [{{name: temperature, value: t, labels: {{site: source}}}}]}}\n"
    )
    runtime = Runtime()
    try:
        await runtime.apply_text(sink.format("north") + "---\n" + sink.format("south"), "p.yaml")
        for name, site in (("north", "/n"), ("south", "/s")):
            component: Any = runtime.reconciler.component(("PrometheusSink", "default", name))
            event = CloudEvent({**EVENT.attributes, "source": site}, {"t": 20})
            await component.sink.deliver(event)
        text = (await render(runtime)).decode()
    finally:
        await runtime.close()
    families = [f for f in text_string_to_metric_families(text) if f.name == "temperature"]
    assert len(families) == 1  # one HELP/TYPE: a scrape Prometheus accepts
    assert sorted(s.labels["site"] for s in families[0].samples) == ["/n", "/s"]


async def test_closing_the_runtime_cancels_its_jobs() -> None:
    runtime = Runtime()
    job = runtime.replays.start(Job("replay"), asyncio.Event().wait())
    await asyncio.sleep(0)  # the job runs
    await runtime.close()
    assert job.state is JobState.CANCELLED
