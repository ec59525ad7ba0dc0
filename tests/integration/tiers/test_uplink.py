"""The Uplink kind between two Headwater runtimes, and against receivers that misbehave."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from headwater.cloudevents import BATCH_CONTENT_TYPE, CloudEvent
from tests.certs import self_signed
from tests.integration.tiers.harness import (
    BROKER,
    Receiver,
    Tier,
    check_order,
    reading,
    receiving,
    sqlite_tier,
    until,
    uplink_yaml,
)

pytestmark = pytest.mark.integration

DEVICES = ("d1", "d2", "d3", "d4", "d5")


def readings(n: int) -> list[CloudEvent]:
    return [reading(i, DEVICES[i % len(DEVICES)]) for i in range(n)]


@pytest.fixture
async def edge() -> AsyncIterator[Tier]:
    tier = Tier()
    await tier.serve()
    await tier.apply(BROKER)
    yield tier
    await tier.close()


@pytest.fixture
async def cloud() -> AsyncIterator[Tier]:
    tier = Tier()
    await tier.serve()
    await tier.apply(BROKER)
    yield tier
    await tier.close()


async def accept(tier: Tier, events: list[CloudEvent]) -> None:
    await tier.runtime.broker("default", "default").accept(events)


async def test_edge_to_cloud_in_gzipped_batches_in_order(edge: Tier, cloud: Tier) -> None:
    await edge.apply(uplink_yaml(f"{cloud.url}/default/default"))
    await accept(edge, readings(3000))
    await until(lambda: edge.status("Uplink", "up").get("sent") == 3000)
    received = await cloud.events()
    assert sorted(e.id for e in received) == sorted(e.id for e in readings(3000))
    assert not check_order(received)
    status = edge.status("Uplink", "up")
    assert status["mode"] == "batch" and status["compression"] == "gzip"
    assert status["requests"] < 100  # batches, not one request per event
    assert status["wireBytes"] < status["rawBytes"] / 3
    # Up, the loop guard is left as it is (the Downlink counts a tier hop).
    assert {e.get("knativebrokerttl") for e in received} == {255}


async def test_cloud_away_then_back_nothing_lost(edge: Tier, tmp_path: Path) -> None:
    cloud = await sqlite_tier(tmp_path / "cloud.db")
    await cloud.serve()
    await cloud.apply(BROKER)
    try:
        await edge.apply(uplink_yaml(f"{cloud.url}/default/default"))
        await accept(edge, readings(500))
        await until(lambda: edge.status("Uplink", "up").get("sent") == 500)
        await cloud.unserve()  # the cloud is gone; the edge keeps accepting
        await accept(edge, [reading(i, "d9") for i in range(500, 1500)])
        await until(lambda: edge.status("Uplink", "up")["link"] == "down")
        status = edge.status("Uplink", "up")
        assert status["deadLettered"] == 0 and status["failedAttempts"] > 0
        await cloud.serve()  # back on the same port
        await until(lambda: edge.status("Uplink", "up").get("sent") == 1500)
        received = await cloud.events()
        assert len({e.id for e in received}) == 1500
        assert not check_order(received)
    finally:
        await cloud.close()


async def test_a_refused_event_is_dead_lettered_and_the_rest_go_on(edge: Tier) -> None:
    def refuse_bad(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        if any(e.id == "d3-12" for e in events):
            return web.Response(status=400, text="temperature out of range")
        return None

    async with receiving(Receiver(script=refuse_bad)) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        events = readings(200)
        await accept(edge, events)
        await until(lambda: edge.status("Uplink", "up").get("deadLettered") == 1)
        await until(lambda: len(receiver.accepted) == 199)
        assert "d3-12" not in receiver.ids()
        assert not check_order(receiver.accepted)
        [letter] = await edge.runtime.dead_letters.list(10)
        assert letter.event.id == "d3-12"
        assert letter.origin == ("Uplink", "default", "up")
        assert letter.event.get("knativeerrorcode") == "400"
        # The receiver takes batches: refusing one event did not switch it off them.
        assert edge.status("Uplink", "up")["mode"] == "batch"


async def test_connectivity_answers_are_retried_never_dead_lettered(edge: Tier) -> None:
    answers = iter([503, 429, 500, 404, 401, 502, 408])

    def flaky(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        status = next(answers, None)
        return None if status is None else web.Response(status=status, headers={"Retry-After": "0"})

    async with receiving(Receiver(script=flaky)) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        await accept(edge, readings(50))
        await until(lambda: len(receiver.accepted) == 50)
        status = edge.status("Uplink", "up")
        assert status["deadLettered"] == 0
        assert status["failedAttempts"] == 7


async def test_too_large_batches_are_split_and_the_limit_lowered(edge: Tier) -> None:
    def small_only(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        if request.content_length and request.content_length > 20_000:
            return web.Response(status=413)
        return None

    async with receiving(Receiver(script=small_only, gzip=False)) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        await accept(edge, readings(2000))
        await until(lambda: len(receiver.accepted) == 2000)
        status = edge.status("Uplink", "up")
        assert status["deadLettered"] == 0
        assert status["maxBatchBytes"] <= 20_000 * 2
        assert not check_order(receiver.accepted)


async def test_a_receiver_without_batches_gets_binary_events_one_by_one(edge: Tier) -> None:
    async with receiving(Receiver(batches=False)) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        await accept(edge, readings(100))
        await until(lambda: len(receiver.accepted) == 100)
        assert edge.status("Uplink", "up")["mode"] == "binary"
        assert {kind for kind, _, _ in receiver.requests} == {"application/json"}
        assert not check_order(receiver.accepted)


async def test_forced_batches_to_a_receiver_without_them_fall_back(edge: Tier) -> None:
    async with receiving(Receiver(batches=False)) as receiver:
        await edge.apply(uplink_yaml(receiver.url, format="batch", compression="none"))
        await accept(edge, readings(60))
        await until(lambda: len(receiver.accepted) == 60)
        status = edge.status("Uplink", "up")
        assert status["deadLettered"] == 0
        assert status["mode"] == "binary"
        assert not check_order(receiver.accepted)


def _blip_503(request: web.Request) -> web.Response:
    return web.Response(status=503, headers={"Retry-After": "0"})


def _blip_429(request: web.Request) -> web.Response:
    return web.Response(status=429)


def _blip_reset(request: web.Request) -> web.Response:
    assert request.transport is not None
    request.transport.abort()  # the connection is reset: no answer at all
    return web.Response(status=500)


@pytest.mark.parametrize(
    "blip",
    [
        pytest.param(_blip_503, id="503"),
        pytest.param(_blip_429, id="429"),
        pytest.param(_blip_reset, id="reset"),
        pytest.param(None, id="timeout"),
    ],
)
async def test_a_failure_of_the_plainer_form_is_retried_not_dead_lettered(
    edge: Tier, blip: Callable[[web.Request], web.Response] | None
) -> None:
    """A receiver refuses the batch form (400, not 415), so a lone event is tried in
    binary mode; when that trial meets the weather (an outage, a reset, a timeout)
    rather than an answer on the event, the event is retried, never dead-lettered."""
    blips = 2  # the first two binary requests fail: a trial is retried more than once

    async def flaky(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        nonlocal blips
        if blips == 0:
            return None
        blips -= 1
        if blip is None:
            await asyncio.sleep(1.0)  # beyond the uplink's timeout: no answer in time
            return web.Response(status=503)
        return blip(request)

    delivery = {"backoffDelay": "PT0.05S", "backoffMax": "PT0.2S", "timeout": "PT0.3S"}
    async with receiving(Receiver(batches=False, script=flaky)) as receiver:
        await edge.apply(
            uplink_yaml(receiver.url, format="batch", compression="none", delivery=delivery)
        )
        await accept(edge, readings(40))
        await until(
            lambda: len(set(receiver.ids())) + edge.status("Uplink", "up")["deadLettered"] == 40
        )
        status = edge.status("Uplink", "up")
        assert status["deadLettered"] == 0
        assert len(set(receiver.ids())) == 40
        assert await edge.runtime.dead_letters.list(10) == []
        assert status["mode"] == "binary"  # the plainer form, once it was answered, is kept
        assert status["failedAttempts"] >= 2
        assert not check_order(receiver.accepted)


async def test_filter_and_start(edge: Tier) -> None:
    await accept(edge, [reading(i, "old") for i in range(10)])
    async with receiving(Receiver()) as receiver:
        await edge.apply(
            uplink_yaml(receiver.url, start="latest", filter="subject = 'd2' OR subject = 'd4'")
        )
        await until(lambda: "sent" in edge.status("Uplink", "up"))
        await accept(edge, readings(100))
        await until(lambda: edge.status("Uplink", "up")["filtered"] == 60)
        await until(lambda: len(receiver.accepted) == 40)
        assert {e.subject for e in receiver.accepted} == {"d2", "d4"}


async def test_restart_resumes_from_the_durable_cursor(tmp_path: Path) -> None:
    async with receiving(Receiver()) as receiver:
        edge = await sqlite_tier(tmp_path / "edge.db")
        await edge.apply(BROKER + "---\n" + uplink_yaml(receiver.url))
        await accept(edge, readings(300))
        await until(lambda: len(receiver.accepted) == 300)
        await edge.close()
        edge = await sqlite_tier(tmp_path / "edge.db")
        await edge.apply(BROKER + "---\n" + uplink_yaml(receiver.url))
        await accept(edge, [reading(i, "d1") for i in range(300, 400)])
        await until(lambda: len(receiver.accepted) == 400)
        await edge.close()
        assert len(set(receiver.ids())) == 400  # a clean stop sends nothing twice


async def test_retention_drops_of_unsent_events_are_counted_and_shown(edge: Tier) -> None:
    await edge.apply(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\n"
        "metadata:\n  name: small\n  annotations:\n"
        "    headwater.dev/retention-max-events: '100'\n"
    )
    small = edge.runtime.broker("default", "small")
    receiver = Receiver()
    await receiver.start()
    await edge.apply(uplink_yaml(receiver.url, broker="small", maxBatchEvents=10))
    await small.accept(readings(50))
    await until(lambda: len(receiver.accepted) == 50)
    await receiver.stop()  # the link goes down; the Broker keeps only the newest 100
    total = 3000
    for i in range(50, total, 50):
        await small.accept([reading(j, DEVICES[j % 5]) for j in range(i, i + 50)])
    await until(lambda: edge.status("Uplink", "up")["droppedUnsent"] > 0)
    await until(lambda: edge.status("Uplink", "up")["retentionAtRisk"] is not None)
    status = edge.status("Uplink", "up")
    assert status["backlogEvents"] >= 100
    assert status["link"] == "down"
    async with receiving(Receiver(port=receiver.port)) as back:
        await until(lambda: edge.status("Uplink", "up")["backlogEvents"] == 0)
        status = edge.status("Uplink", "up")
        # Every event was either sent or counted as dropped unsent: none vanished silently.
        assert status["sent"] + status["droppedUnsent"] == total
        assert len(set(receiver.ids() + back.ids())) == status["sent"]
        assert "d5-2999" in back.ids()
        assert not check_order(back.accepted)


async def test_metrics_show_the_uplink(edge: Tier, cloud: Tier) -> None:
    from headwater.api.metrics import render

    await edge.apply(uplink_yaml(f"{cloud.url}/default/default"))
    await accept(edge, readings(10))
    await until(lambda: edge.status("Uplink", "up").get("sent") == 10)
    text = (await render(edge.runtime)).decode()
    assert 'headwater_uplink_sent_events_total{name="up",namespace="default"} 10.0' in text
    for name in (
        "headwater_uplink_backlog_events",
        "headwater_uplink_backlog_bytes",
        "headwater_uplink_oldest_unsent_age_seconds",
        "headwater_uplink_send_rate",
        "headwater_uplink_dropped_unsent_total",
    ):
        assert name in text


async def test_batch_content_type_is_the_json_batch(edge: Tier) -> None:
    async with receiving(Receiver(gzip=False)) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        await accept(edge, readings(20))
        await until(lambda: len(receiver.accepted) == 20)
        assert {(kind, enc) for kind, enc, _ in receiver.requests} == {(BATCH_CONTENT_TYPE, "")}


async def test_https_with_a_ca_bundle_a_client_certificate_and_a_bearer_token(
    edge: Tier, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server_tls.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: no client certificate, no entry
    server_tls.load_verify_locations(cert)
    monkeypatch.setenv("CLOUD_TOKEN", "s3cret")
    seen: list[str] = []

    def bearer(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer s3cret":
            return web.Response(status=401)
        return None

    async with receiving(Receiver(script=bearer, tls=server_tls)) as receiver:
        tls = {"caFile": str(cert), "certFile": str(cert), "keyFile": str(key)}
        await edge.apply(uplink_yaml(receiver.url, tls=tls, tokenEnv="CLOUD_TOKEN"))
        await accept(edge, readings(30))
        await until(lambda: len(receiver.accepted) == 30)
        assert set(seen) == {"Bearer s3cret"}


async def test_without_the_client_certificate_nothing_is_sent_and_nothing_is_lost(
    edge: Tier, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    server_tls.verify_mode = ssl.CERT_REQUIRED
    server_tls.load_verify_locations(cert)
    async with receiving(Receiver(tls=server_tls)) as receiver:
        await edge.apply(uplink_yaml(receiver.url, tls={"caFile": str(cert)}))
        await accept(edge, readings(10))
        await until(lambda: edge.status("Uplink", "up")["failedAttempts"] >= 3)
        status = edge.status("Uplink", "up")
        assert status["sent"] == 0 and status["deadLettered"] == 0
        assert receiver.accepted == []


async def test_order_per_device_survives_random_failures_and_resets(edge: Tier) -> None:
    rng = random.Random(16)

    def chaotic(request: web.Request, events: list[CloudEvent]) -> web.Response | None:
        roll = rng.random()
        if roll < 0.2:
            return web.Response(status=rng.choice([500, 502, 503, 429, 408]))
        if roll < 0.3:
            assert request.transport is not None
            request.transport.abort()  # the connection is reset: no answer at all
            return web.Response(status=500)
        return None

    async with receiving(Receiver(script=chaotic)) as receiver:
        await edge.apply(uplink_yaml(receiver.url, maxBatchEvents=20, linger="PT0S"))
        for i in range(0, 3000, 100):
            await accept(edge, [reading(j, DEVICES[j % 5]) for j in range(i, i + 100)])
        await until(lambda: len(set(receiver.ids())) == 3000, within=60)
        assert not check_order(receiver.accepted)
        assert edge.status("Uplink", "up")["deadLettered"] == 0


async def test_expired_events_are_not_sent(edge: Tier) -> None:
    async with receiving(Receiver()) as receiver:
        await edge.apply(uplink_yaml(receiver.url))
        stale = reading(1, expiresat="2020-01-01T00:00:00Z")
        await accept(edge, [stale, reading(3)])
        await until(lambda: len(receiver.accepted) == 1)
        assert edge.status("Uplink", "up")["expired"] == 1
        assert receiver.ids() == ["d1-3"]


async def test_unordered_spreads_one_key_over_the_lanes(edge: Tier) -> None:
    async with receiving(Receiver()) as receiver:
        await edge.apply(uplink_yaml(receiver.url, ordering="unordered", maxBatchEvents=10))
        await accept(edge, [reading(i, "d1") for i in range(400)])
        await until(lambda: len(receiver.accepted) == 400)
        assert edge.status("Uplink", "up")["ordering"] == "unordered"


async def test_a_sampled_events_trace_continues_from_edge_to_cloud(edge: Tier, cloud: Tier) -> None:
    """The uplink's request is a span in the event's trace, the event reaches the cloud
    under it, and the cloud's ingest continues there; unsampled events go as they are."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from headwater import tracing
    from headwater.tracing import Tracer, TracingConfig

    exporter = InMemorySpanExporter()
    tracer = Tracer(TracingConfig(endpoint="http://127.0.0.1:9/v1/traces"), exporter=exporter)
    sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    with tracing.installed(tracer):
        await edge.apply(uplink_yaml(f"{cloud.url}/default/default"))
        await accept(edge, [reading(1, traceparent=sampled), reading(2, traceparent=unsampled)])
        await until(lambda: edge.status("Uplink", "up").get("sent") == 2)
        received = {e.id: e for e in await cloud.events()}
        tracer.flush()
    spans = exporter.get_finished_spans()
    (uplink,) = [s for s in spans if s.name == "uplink Uplink default/up"]
    assert uplink.context is not None and uplink.parent is not None
    assert f"{uplink.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert uplink.attributes is not None and uplink.attributes["http.response.status_code"] == 202
    arrived = received["d1-1"]["traceparent"]
    assert arrived == f"00-{uplink.context.trace_id:032x}-{uplink.context.span_id:016x}-01"
    assert received["d1-2"]["traceparent"] == unsampled  # not sampled: as it was
    (ingest,) = [s for s in spans if s.name.startswith("POST")]
    assert ingest.parent is not None and ingest.parent.span_id == uplink.context.span_id
