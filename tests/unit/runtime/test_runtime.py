"""The runtime reconciles resources into running Brokers, Triggers and sinks."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from headwater.cloudevents import CloudEvent
from headwater.eventing._http1 import Http1Client
from headwater.eventing.http_worker import HttpWorker
from headwater.runtime import Runtime
from tests.helpers import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.serving() as r:
        yield r


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    rt = Runtime()
    yield rt
    await rt.close()


def mesh(uri: str, event_type: str) -> str:
    # Ordered: events arrive in log order, so an event delivered twice shows.
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: t, annotations: {{headwater.dev/delivery-order: ordered}}}}
spec:
  broker: default
  filter: {{attributes: {{type: {event_type}}}}}
  subscriber: {{uri: "{uri}"}}
"""


def ids(events: list[CloudEvent]) -> list[str]:
    return [e.id for e in events]


def event(id_: str, type_: str) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": id_, "source": "/test", "type": type_})


async def test_updating_a_trigger_filter_keeps_its_cursor(
    runtime: Runtime, receiver: Receiver
) -> None:
    await runtime.apply_text(mesh(receiver.url, "a"), "m.yaml")
    broker = runtime.broker("default", "default")
    await broker.accept([event("a1", "a"), event("b1", "b")])
    assert ids(await receiver.wait_for(1)) == ["a1"]

    result = await runtime.apply_text(mesh(receiver.url, "b"), "m.yaml")
    assert result.updated == [("Trigger", "default", "t")]
    await broker.accept([event("a2", "a"), event("b2", "b")])
    # b1 was passed by the cursor before the change: it is not delivered again.
    assert ids(await receiver.wait_for(2)) == ["a1", "b2"]
    status = runtime.status(("Trigger", "default", "t"))
    assert status["conditions"][0]["status"] == "True"


@pytest.mark.parametrize("http_worker", [False, True], ids=["in-process", "worker"])
async def test_http_subscribers_are_reached_through_the_delivery_transport(
    receiver: Receiver, http_worker: bool
) -> None:
    # headwater up --no-http-worker: one Http1Client in process; the default: the worker.
    runtime = Runtime(delivery=HttpWorker() if http_worker else None)
    try:
        client = runtime.http.delivery
        assert type(client) is (HttpWorker if http_worker else Http1Client)
        assert runtime.http.delivery is client  # one per runtime
        await runtime.apply_text(mesh(receiver.url, "a"), "m.yaml")
        await runtime.broker("default", "default").accept([event("a1", "a")])
        assert ids(await receiver.wait_for(1)) == ["a1"]
    finally:
        await runtime.close()
    if isinstance(client, Http1Client):
        assert client.open_connections == 0  # closed with the runtime


async def test_a_trigger_added_later_starts_at_latest(runtime: Runtime, receiver: Receiver) -> None:
    await runtime.apply_text(mesh(receiver.url, "a").split("---")[0], "b.yaml")
    broker = runtime.broker("default", "default")
    await broker.accept([event("old", "a")])
    await runtime.apply_text(mesh(receiver.url, "a"), "m.yaml")
    await broker.accept([event("new", "a")])
    assert ids(await receiver.wait_for(1)) == ["new"]


async def test_replay_annotation_starts_at_earliest(runtime: Runtime, receiver: Receiver) -> None:
    await runtime.apply_text(mesh(receiver.url, "a").split("---")[0], "b.yaml")
    await runtime.broker("default", "default").accept([event("old", "a")])
    text = mesh(receiver.url, "a").replace(
        "annotations: {", "annotations: {headwater.dev/start: earliest, "
    )
    await runtime.apply_text(text, "m.yaml")
    assert ids(await receiver.wait_for(1)) == ["old"]


async def test_component_that_cannot_start_reports_why(runtime: Runtime) -> None:
    text = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t}
spec:
  broker: default
  subscriber:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
    uri: /extra/path
"""
    await runtime.apply_text(text, "m.yaml")
    (condition,) = runtime.status(("Trigger", "default", "t"))["conditions"]
    assert condition["status"] == "False"
    assert condition["reason"] == "UnresolvedDestination"
    assert "relative to the in-process Broker 'default'" in condition["message"]
    # The rest of the mesh keeps running.
    assert runtime.status(("Broker", "default", "default"))["conditions"][0]["status"] == "True"


async def test_deleting_stops_delivery(runtime: Runtime, receiver: Receiver) -> None:
    await runtime.apply_text(mesh(receiver.url, "a"), "m.yaml")
    broker = runtime.broker("default", "default")
    assert list(broker.dispatchers()) == ["trigger/default/t"]
    await runtime.delete([("Trigger", "default", "t")])
    # Nothing reads the stream for it any more: nothing can be delivered.
    assert broker.dispatchers() == {} and broker.triggers() == {}
    await broker.accept([event("a1", "a")])
    assert runtime.dispatcher(("Trigger", "default", "t")) is None
    assert receiver.requests == []
