"""Triggers and Subscriptions live in their Broker's or Channel's fan-out: what happens to
them when the fan-out is started anew, when they are deleted, and when an update fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from headwater.cloudevents import CloudEvent
from headwater.log import LogUnavailable, MemoryLog
from headwater.runtime import Runtime
from tests.helpers import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.serving() as serving:
        yield serving


def event(event_id: str) -> CloudEvent:
    return CloudEvent({"specversion": "1.0", "id": event_id, "source": "/t", "type": "t"})


def channel(uri: str, retry: int) -> str:
    return f"""\
apiVersion: messaging.knative.dev/v1
kind: Channel
metadata: {{name: orders}}
spec:
  channelTemplate: {{apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel}}
  delivery: {{retry: {retry}}}
---
apiVersion: messaging.knative.dev/v1
kind: Subscription
metadata: {{name: fulfil}}
spec:
  channel: {{apiVersion: messaging.knative.dev/v1, kind: Channel, name: orders}}
  subscriber: {{uri: "{uri}"}}
"""


def broker(age: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default, annotations: {{headwater.dev/retention-max-age: "{age}"}}}}
"""


def trigger(name: str, uri: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: {name}}}
spec:
  broker: default
  subscriber: {{uri: "{uri}"}}
"""


def ids(receiver: Receiver) -> list[str]:
    return [str(e["id"]) for e in receiver.accepted]


async def test_a_channel_made_anew_keeps_its_subscriptions(receiver: Receiver) -> None:
    runtime = Runtime()
    try:
        await runtime.apply_text(channel(receiver.url, 1), "c.yaml")
        await runtime.channel("Channel", "default", "orders").accept([event("e1")])
        await receiver.wait_for(1)
        # A Channel with a channelTemplate is made anew when it changes (its store may).
        await runtime.apply_text(channel(receiver.url, 2), "c.yaml")
        await runtime.channel("Channel", "default", "orders").accept([event("e2")])
        await receiver.wait_for(2)
        assert ids(receiver) == ["e1", "e2"]
    finally:
        await runtime.close()


async def test_a_trigger_made_again_after_a_delete_starts_at_the_latest(
    receiver: Receiver,
) -> None:
    runtime = Runtime()
    try:
        await runtime.apply_text(broker("PT1H") + "---\n" + trigger("t", receiver.url), "b.yaml")
        fanout = runtime.broker("default", "default")
        await fanout.accept([event("before")])
        await receiver.wait_for(1)
        await runtime.delete_applied([("Trigger", "default", "t")])
        assert (await runtime.log.info(fanout.stream)).consumers == ()  # its cursor went too
        await fanout.accept([event("while-none"), event("while-none-2")])
        await runtime.apply_text(trigger("t", receiver.url), "t.yaml")
        await fanout.accept([event("after")])
        await receiver.wait_for(2)
        assert ids(receiver) == ["before", "after"]
    finally:
        await runtime.close()


async def test_a_broker_whose_update_failed_is_made_again_and_so_are_its_triggers(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = MemoryLog()
    runtime = Runtime(log)
    try:
        await runtime.apply_text(broker("PT1H") + "---\n" + trigger("t", receiver.url), "b.yaml")
        create_stream = log.create_stream

        async def away(*args: Any, **kwargs: Any) -> None:
            raise LogUnavailable("the log is away for a moment")

        monkeypatch.setattr(log, "create_stream", away)
        changed = broker("PT2H") + "---\n" + trigger("t", receiver.url)
        await runtime.apply_text(changed, "b.yaml")  # no exception: reported as not Ready
        [ready] = runtime.status(("Broker", "default", "default"))["conditions"]
        assert ready["status"] == "False" and "away" in ready["message"]

        monkeypatch.setattr(log, "create_stream", create_stream)
        await runtime.apply_text(changed, "b.yaml")  # the same document again: tried again
        for key in (("Broker", "default", "default"), ("Trigger", "default", "t")):
            [ready] = runtime.status(key)["conditions"]
            assert ready["status"] == "True", (key, ready)
        fanout = runtime.broker("default", "default")
        assert fanout.retention.max_age == 7200
        await fanout.accept([event("e1")])
        await receiver.wait_for(1)
    finally:
        await runtime.close()


async def test_a_trigger_moved_to_another_broker_leaves_no_cursor_behind(
    receiver: Receiver,
) -> None:
    runtime = Runtime()
    other = broker("PT1H").replace("name: default", "name: other")
    try:
        await runtime.apply_text(
            broker("PT1H") + "---\n" + other + "---\n" + trigger("t", receiver.url), "b.yaml"
        )
        old = runtime.broker("default", "default")
        await old.accept([event("on-default")])
        await receiver.wait_for(1)
        moved = trigger("t", receiver.url).replace("broker: default", "broker: other")
        result = await runtime.apply_text(
            broker("PT1H") + "---\n" + other + "---\n" + moved, "b.yaml"
        )
        assert result.updated == [("Trigger", "default", "t")]
        assert (await runtime.log.info(old.stream)).consumers == ()  # the old cursor went
        await runtime.broker("default", "other").accept([event("on-other")])
        await receiver.wait_for(2)
        assert ids(receiver) == ["on-default", "on-other"]
    finally:
        await runtime.close()
