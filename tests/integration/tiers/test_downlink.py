"""Commands down to an edge: a cloud Edge queue, pulled by the edge's Downlink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from headwater.cloudevents import CloudEvent, from_http
from headwater.eventing import RecordingSink
from headwater.log import LogUnavailable
from headwater.runtime.tiers import DownlinkComponent, EdgeComponent
from headwater.tiers.edgequeue import EdgeQueue
from tests.integration.tiers.harness import BROKER, Tier, until

pytestmark = pytest.mark.integration

TOKEN = "site-7-secret"

CLOUD = (
    BROKER
    + """\
---
apiVersion: sinks.headwater.dev/v1alpha1
kind: Edge
metadata: {name: site-7}
spec: {tokenEnv: SITE7_TOKEN}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: to-site-7}
spec:
  broker: default
  filter: {attributes: {type: dev.headwater.command, site: site-7}}
  subscriber:
    ref: {apiVersion: sinks.headwater.dev/v1alpha1, kind: Edge, name: site-7}
"""
)


def downlink_yaml(url: str, token_env: str = "SITE7_TOKEN") -> str:
    return f"""\
apiVersion: sources.headwater.dev/v1alpha1
kind: Downlink
metadata: {{name: from-cloud}}
spec:
  url: {url}
  tokenEnv: {token_env}
  wait: PT2S
  backoffDelay: PT0.05S
  backoffMax: PT0.2S
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""


def command(i: int, expires_in: float | None = 3600.0, site: str = "site-7") -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": f"cmd-{i}",
        "source": "/cloud/operator",
        "type": "dev.headwater.command",
        "subject": f"valve-{i % 3}",
        "site": site,
    }
    if expires_in is not None:
        attributes["expiresat"] = (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat()
    return CloudEvent(attributes, {"open": i % 2 == 0, "seq": i})


@pytest.fixture
async def cloud(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Tier]:
    monkeypatch.setenv("SITE7_TOKEN", TOKEN)
    tier = Tier()
    await tier.serve()
    await tier.apply(CLOUD)
    yield tier
    await tier.close()


@pytest.fixture
async def edge() -> AsyncIterator[Tier]:
    tier = Tier()
    await tier.apply(BROKER)
    yield tier
    await tier.close()


def edge_queue(cloud: Tier) -> EdgeQueue:
    component = cloud.runtime.reconciler.component(("Edge", "default", "site-7"))
    assert isinstance(component, EdgeComponent)
    return component.queue


def address(cloud: Tier) -> str:
    url = cloud.status("Edge", "site-7")["address"]
    assert url == f"{cloud.url}/edges/default/site-7"
    return str(url)


async def send(cloud: Tier, events: list[CloudEvent]) -> None:
    await cloud.runtime.broker("default", "default").accept(events)


async def test_commands_queued_while_the_edge_is_away_arrive_expired_ones_do_not(
    cloud: Tier, edge: Tier
) -> None:
    await send(cloud, [command(i) for i in range(20)])
    await send(cloud, [command(i, expires_in=0.2) for i in range(20, 25)])
    await send(cloud, [command(i, site="site-8") for i in range(25, 30)])  # not this edge
    await until(lambda: cloud.status("Edge", "site-7")["queued"] == 25)
    await asyncio.sleep(0.3)  # the short-lived five expire while the edge is away
    await edge.apply(downlink_yaml(address(cloud)))
    await until(lambda: edge.status("Downlink", "from-cloud")["stored"] == 20)
    await until(lambda: cloud.status("Edge", "site-7")["backlog"] == 0)
    stored = await edge.events()
    assert [e.id for e in stored] == [f"cmd-{i}" for i in range(20)]
    assert {e.get("knativebrokerttl") for e in stored} == {254}
    status = cloud.status("Edge", "site-7")
    assert status["expired"] == 5
    assert status["delivered"] == 20
    assert status["connected"] is True
    # Live: a command sent now reaches the waiting edge without waiting out a poll.
    await send(cloud, [command(99)])
    await until(lambda: edge.status("Downlink", "from-cloud")["stored"] == 21, within=1.5)


async def test_an_expired_command_is_not_queued(cloud: Tier) -> None:
    await send(cloud, [command(1, expires_in=-1)])
    await until(lambda: cloud.status("Trigger", "to-site-7").get("expired") == 1)
    assert cloud.status("Edge", "site-7")["queued"] == 0


async def test_nothing_is_acknowledged_before_the_edge_stored_it(cloud: Tier, edge: Tier) -> None:
    await edge.apply(downlink_yaml(address(cloud)))
    component = edge.runtime.reconciler.component(("Downlink", "default", "from-cloud"))
    assert isinstance(component, DownlinkComponent)
    store = component.downlink._store
    broken = True

    async def failing(events: list[CloudEvent]) -> None:
        if broken:
            raise LogUnavailable("the disk is full")
        await store(events)

    component.downlink._store = failing
    await send(cloud, [command(i) for i in range(5)])
    await until(lambda: edge.status("Downlink", "from-cloud")["failedAttempts"] >= 3)
    assert "the disk is full" in edge.status("Downlink", "from-cloud")["lastError"]
    assert edge.status("Downlink", "from-cloud")["stored"] == 0
    await until(lambda: cloud.status("Edge", "site-7")["backlog"] == 5)
    assert cloud.status("Edge", "site-7")["delivered"] == 0
    broken = False
    await until(lambda: edge.status("Downlink", "from-cloud")["stored"] == 5)
    await until(lambda: cloud.status("Edge", "site-7")["delivered"] == 5)
    assert [e.id for e in await edge.events()] == [f"cmd-{i}" for i in range(5)]


async def test_a_wrong_token_is_refused_and_retried(
    cloud: Tier, edge: Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRONG_TOKEN", "guess")
    await edge.apply(downlink_yaml(address(cloud), token_env="WRONG_TOKEN"))
    await until(lambda: edge.status("Downlink", "from-cloud")["failedAttempts"] >= 2)
    status = edge.status("Downlink", "from-cloud")
    assert "401" in status["lastError"]
    assert status["connected"] is True  # the cloud answers; it refuses the credential


async def pull(
    http: aiohttp.ClientSession, url: str, **query: str
) -> tuple[int, list[CloudEvent], str | None]:
    async with http.post(url, params=query, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        body = await r.read()
        if r.status != 200:
            return r.status, [], None
        events = from_http(r.headers.items(), body)
        assert isinstance(events, list)
        return r.status, events, r.headers["Headwater-Last-Offset"]


async def test_a_lost_answer_is_sent_again_and_a_new_pull_supersedes(cloud: Tier) -> None:
    url = address(cloud)
    async with aiohttp.ClientSession() as http:
        assert (await pull(http, url, wait="0"))[0] == 204
        await send(cloud, [command(i) for i in range(3)])
        await until(lambda: cloud.status("Edge", "site-7")["queued"] == 3)
        status, first, last = await pull(http, url, wait="1")
        assert status == 200 and [e.id for e in first] == ["cmd-0", "cmd-1", "cmd-2"]
        # The edge never stored them (say it was killed): it pulls without an ack.
        status, again, last_again = await pull(http, url, wait="1")
        assert [e.id for e in again] == ["cmd-0", "cmd-1", "cmd-2"] and last_again == last
        assert last is not None
        assert (await pull(http, url, wait="0", ack=last))[0] == 204
        # A waiting pull is answered 204 as soon as a newer one arrives.
        queue = edge_queue(cloud)
        waiting = asyncio.ensure_future(pull(http, url, wait="30"))
        await until(lambda: queue.stats.waiting == 1)
        newer = asyncio.ensure_future(pull(http, url, wait="30"))
        assert (await waiting)[0] == 204
        await send(cloud, [command(7)])
        status, events, _ = await newer
        assert status == 200 and [e.id for e in events] == ["cmd-7"]
        assert queue.stats.superseded == 0  # it was waiting, not queued behind the lock


async def test_bad_requests(cloud: Tier) -> None:
    url = address(cloud)
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as r:
            assert r.status == 401
        async with http.post(url.replace("site-7", "site-9")) as r:
            assert r.status == 404
        for query in ({"ack": "x"}, {"wait": "-1"}, {"ack": "1.5"}, {"max": "nan"}):
            status, _, _ = await pull(http, url, **query)
            assert status == 400, query


async def test_an_edge_trigger_does_not_deliver_a_command_that_expired_locally(
    edge: Tier,
) -> None:
    sink = RecordingSink()
    from headwater.eventing import Trigger

    await edge.runtime.broker("default", "default").add_trigger(Trigger("valves", sink))
    broker = edge.runtime.broker("default", "default")
    await broker.accept([command(1, expires_in=-5), command(2), command(3)])
    await sink.wait_for(2)
    assert sorted(sink.ids()) == ["cmd-2", "cmd-3"]
    await until(lambda: broker.triggers()["valves"].stats.expired == 1)
