"""One reading followed from an MQTT 5 device to HTTP subscribers, through `headwater up`.

A real OTLP/HTTP receiver (tests/otlp.py, decoding with opentelemetry-proto
what the SDK's exporter sends) collects the spans; real HTTP subscribers
(tests.helpers.Receiver) record the ``traceparent`` each delivery carries.
Run with the HTTP worker process (``headwater up``'s default) and without
it. Last, ``--log-format json``: the line about a given-up event carries the
event's ids and its trace.
"""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.headwater_process import Headwater, start_headwater
from tests.helpers import Receiver, Request, wait_until_blocking
from tests.integration.sources.conftest import Device
from tests.otlp import OtlpReceiver, ReceivedSpan, children, one, threaded_receiver

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{port: 0}}]
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: ok}}
spec:
  broker: default
  filter: {{attributes: {{subject: sensors/ok}}}}
  subscriber: {{uri: "{base}/ok"}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: bad}}
spec:
  broker: default
  filter: {{attributes: {{subject: sensors/bad}}}}
  subscriber: {{uri: "{base}/bad"}}
  delivery:
    retry: 2
    backoffPolicy: linear
    backoffDelay: PT0.01S
    deadLetterSink: {{uri: "{base}/dls"}}
"""


class Subscribers:
    """HTTP subscribers on one :class:`~tests.helpers.Receiver`: /ok and /dls accept,
    /bad answers 503. :meth:`seen` is the (traceparent, ce-traceparent, ce-id) of
    each request to a path."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.base = receiver.url.rstrip("/")

    def seen(self, path: str) -> list[tuple[str, str, str]]:
        return [
            (r.headers.get("traceparent", ""), r.headers.get("ce-traceparent", ""), r.id)
            for r in list(self.receiver.requests)
            if r.path == path
        ]

    def wait(self, path: str, count: int) -> list[tuple[str, str, str]]:
        seen: list[tuple[str, str, str]] = wait_until_blocking(
            lambda: (found := self.seen(path)) and len(found) >= count and found,
            what=f"{count} requests to {path}",
        )
        return seen


def _answer(request: Request) -> tuple[int, dict[str, str], bytes]:
    return (503 if request.path == "/bad" else 202), {}, b""


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with threaded_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def subscribers() -> Iterator[Subscribers]:
    with Receiver.in_thread(answer=_answer) as receiver:
        yield Subscribers(receiver)


@pytest.fixture(scope="module", params=["--http-worker", "--no-http-worker"])
def headwater(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    otlp: OtlpReceiver,
    subscribers: Subscribers,
) -> Iterator[tuple[Headwater, int]]:
    root: Path = tmp_path_factory.mktemp("tracing")
    (root / "mesh.yaml").write_text(MESH.format(base=subscribers.base))
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "50"  # export every 50 ms, not 5 s
    try:
        hw = start_headwater(
            [
                *("-f", "mesh.yaml", "--data-dir", "data", "--durability", "normal"),
                *("--otlp-endpoint", otlp.url, request.param),
            ],
            root,
        )
    finally:
        del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
    match = re.search(r"listening on mqtt://127\.0\.0\.1:(\d+)", "".join(hw.output))
    assert match, hw.output
    yield hw, int(match.group(1))
    assert hw.stop() == 0


@pytest.fixture
def device(headwater: tuple[Headwater, int]) -> Iterator[Device]:
    dev = Device(headwater[1], f"sensor-{uuid.uuid4().hex[:6]}")
    yield dev
    dev.close()


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def parse(value: str) -> tuple[str, str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    return trace_id, span_id, flags


def post_event(url: str, event_id: str, traceparent: str, subject: str | None = None) -> None:
    """A CloudEvent to the default Broker's HTTP ingress, with a ``traceparent`` header."""
    headers = {
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "/e2e",
        "ce-type": "t",
        "content-type": "application/json",
        "traceparent": traceparent,
    }
    if subject is not None:
        headers["ce-subject"] = subject
    request = urllib.request.Request(
        f"{url}/default/default", data=b"{}", method="POST", headers=headers
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def wait_trace(otlp: OtlpReceiver, trace_id: str, names: list[str]) -> list[ReceivedSpan]:
    """The trace's spans once every name in ``names`` is among them (with repeats)."""

    def complete(spans: list[ReceivedSpan]) -> bool:
        found = [s.name for s in spans if s.trace_id == trace_id]
        return all(found.count(n) >= names.count(n) for n in set(names))

    try:
        otlp.wait_for_sync(complete)
    except TimeoutError:
        got = sorted(s.name for s in otlp.trace(trace_id))
        raise AssertionError(
            f"trace {trace_id}: wanted {names}, got {got} "
            f"({len(otlp.spans)} spans in {otlp.requests} requests, refused {otlp.refused})"
        ) from None
    return otlp.trace(trace_id)


def test_a_device_trace_continues_through_headwater_to_the_subscriber(
    headwater: tuple[Headwater, int], device: Device, otlp: OtlpReceiver, subscribers: Subscribers
) -> None:
    before = len(subscribers.seen("/ok"))
    value, trace_id, device_span = traceparent()
    properties = [("traceparent", value)]
    assert device.publish("sensors/ok", b'{"t": 21.5}', user_properties=properties) == 0
    out, ce_out, event_id = subscribers.wait("/ok", before + 1)[before]
    out_trace, out_parent, flags = parse(out)
    assert (out_trace, flags) == (trace_id, "01")
    assert ce_out == out  # the extension carries the hop's context (single hop)

    spans = wait_trace(
        otlp,
        trace_id,
        ["mqtt publish", "append", "Trigger default/ok", "deliver"],
    )
    ingest = one(spans, "mqtt publish")
    assert ingest.parent_span_id == device_span and ingest.parent_is_remote
    assert ingest.kind == "CONSUMER"
    assert ingest.attributes["messaging.destination.name"] == "sensors/ok"
    assert ingest.attributes["cloudevents.event_id"] == event_id
    append = one(spans, "append")  # the durable append, before the PUBACK
    assert append.parent_span_id == ingest.span_id
    trigger = one(spans, "Trigger default/ok")
    assert trigger.parent_span_id == ingest.span_id  # the context stored with the event
    assert trigger.attributes["headwater.filter.matched"] is True
    assert trigger.attributes["headwater.outcome"] == "delivered"
    attempt = one(spans, "deliver")
    assert attempt.parent_span_id == trigger.span_id and attempt.kind == "CLIENT"
    assert attempt.span_id == out_parent  # the subscriber's parent is the attempt
    # The other Trigger evaluated its filter once, and said no.
    other = wait_trace(otlp, trace_id, ["Trigger default/bad"])
    rejected = one(other, "Trigger default/bad")
    assert rejected.attributes["headwater.filter.matched"] is False
    assert rejected.parent_span_id == ingest.span_id
    assert not children(other, rejected)


def test_retries_and_the_dead_letter_are_in_the_trace(
    headwater: tuple[Headwater, int], device: Device, otlp: OtlpReceiver, subscribers: Subscribers
) -> None:
    bad, dls = len(subscribers.seen("/bad")), len(subscribers.seen("/dls"))
    value, trace_id, _ = traceparent()
    assert device.publish("sensors/bad", b"{}", user_properties=[("traceparent", value)]) == 0
    attempts = subscribers.wait("/bad", bad + 3)[bad : bad + 3]
    dead_out, _, _ = subscribers.wait("/dls", dls + 1)[dls]

    spans = wait_trace(
        otlp, trace_id, ["Trigger default/bad", "deliver", "deliver", "deliver", "dead-letter"]
    )
    trigger = one(spans, "Trigger default/bad")
    assert trigger.attributes["headwater.outcome"] == "dead-lettered"
    assert trigger.attributes["headwater.attempts"] == 3
    assert trigger.status == 2  # error
    failed = [attrs for name, attrs in trigger.events if name == "attempt failed"]
    assert [a["headwater.attempt"] for a in failed] == [1, 2, 3]
    assert all(a["http.response.status_code"] == 503 for a in failed)
    assert ["headwater.retry_in_s" in a for a in failed] == [True, True, False]
    delivers = sorted(
        (s for s in spans if s.name == "deliver"), key=lambda s: s.attributes["headwater.attempt"]
    )
    assert all(s.parent_span_id == trigger.span_id for s in delivers)
    assert all(s.attributes["http.response.status_code"] == 503 for s in delivers)
    # Each attempt went out with its own span as the parent.
    assert [parse(tp)[:2] for tp, _, _ in attempts] == [(trace_id, s.span_id) for s in delivers]
    dead = one(spans, "dead-letter")
    assert dead.parent_span_id == trigger.span_id
    assert parse(dead_out)[:2] == (trace_id, dead.span_id)
    # The dead-letter store says which trace the event was in.
    hw, _ = headwater
    letters = json.loads(hw.cli("deadletters", "list", "-o", "json").stdout)
    (letter,) = [item for item in letters if item["event"]["id"] == attempts[0][2]]
    assert letter["traceId"] == trace_id


def test_a_dead_letter_not_sampled_at_the_head_is_recorded_after_the_fact(
    headwater: tuple[Headwater, int], device: Device, otlp: OtlpReceiver, subscribers: Subscribers
) -> None:
    bad = len(subscribers.seen("/bad"))
    value, trace_id, _ = traceparent(sampled=False)
    assert device.publish("sensors/bad", b"{}", user_properties=[("traceparent", value)]) == 0
    attempts = subscribers.wait("/bad", bad + 3)[bad : bad + 3]
    # Not sampled: the event went out with the device's context as it came (W3C 3.4).
    (stored,) = {tp for tp, _, _ in attempts}
    assert stored == value
    stored_trace, stored_parent, flags = parse(stored)
    assert (stored_trace, flags) == (trace_id, "00")

    spans = wait_trace(otlp, trace_id, ["Trigger default/bad", "dead-letter"])
    trigger = one(spans, "Trigger default/bad")
    assert trigger.attributes["headwater.sampled_at_head"] is False
    assert trigger.parent_span_id == stored_parent  # the device's span
    failed = [attrs for name, attrs in trigger.events if name == "attempt failed"]
    assert [a["headwater.attempt"] for a in failed] == [1, 2, 3]
    assert {s.name for s in spans} == {"Trigger default/bad", "dead-letter"}


@pytest.mark.parametrize(
    "bad_value",
    [
        pytest.param("00-" + "0" * 32 + "-00f067aa0ba902b7-01", id="zero-trace-id"),
        pytest.param("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", id="upper-case"),
        pytest.param("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", id="version-ff"),
        pytest.param("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01", id="short-span"),
        pytest.param("garbage", id="garbage"),
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace_and_the_reading_goes_through(
    bad_value: str,
    headwater: tuple[Headwater, int],
    device: Device,
    otlp: OtlpReceiver,
    subscribers: Subscribers,
) -> None:
    before = len(subscribers.seen("/ok"))
    properties = [("traceparent", bad_value), ("tracestate", "congo=1")]
    assert device.publish("sensors/ok", b"{}", user_properties=properties) == 0
    out, _, _ = subscribers.wait("/ok", before + 1)[before]
    trace_id, _, flags = parse(out)
    assert trace_id not in bad_value.lower() and flags == "01"
    spans = wait_trace(otlp, trace_id, ["mqtt publish", "deliver"])
    ingest = one(spans, "mqtt publish")
    assert ingest.parent_span_id == ""  # a root: the bad value was ignored
    assert ingest.trace_state == ""  # and its tracestate with it


def test_a_trace_through_http_ingress_and_the_trace_id_in_describe(
    headwater: tuple[Headwater, int], otlp: OtlpReceiver, subscribers: Subscribers
) -> None:
    hw, _ = headwater
    value, trace_id, client_span = traceparent()
    dls = len(subscribers.seen("/dls"))
    post_event(hw.url, uuid.uuid4().hex, value, subject="sensors/bad")
    subscribers.wait("/dls", dls + 1)
    spans = wait_trace(otlp, trace_id, ["POST /{namespace}/{name}", "dead-letter"])
    ingress = one(spans, "POST /{namespace}/{name}")
    assert ingress.parent_span_id == client_span and ingress.kind == "SERVER"
    described = hw.cli("describe", "trigger", "bad").stdout
    assert f"  its trace:  {trace_id}" in described


@pytest.mark.parametrize(
    ("args", "environ", "message"),
    [
        pytest.param(
            ["--otlp-endpoint", "localhost:4317"], {}, "not an http:// or https:// URL", id="url"
        ),
        pytest.param(["--trace-url", "http://viewer/"], {}, "with {trace_id}", id="trace-url"),
        pytest.param(
            [],
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
            id="grpc",
        ),
    ],
)
def test_tracing_settings_that_cannot_work_stop_the_start(
    args: list[str], environ: dict[str, str], message: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [
            *(sys.executable, "-m", "headwater.cli", "up", "--http-port", "0", "--mqtt-port", "0"),
            *("--data-dir", str(tmp_path / "data"), *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **environ},
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


DROPPING = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: failing}}
spec:
  broker: default
  subscriber: {{uri: "{url}"}}
  delivery: {{retry: 1, backoffPolicy: linear, backoffDelay: PT0.01S}}
"""


def test_json_logs_carry_the_event_and_its_trace(tmp_path: Path, otlp: OtlpReceiver) -> None:
    with Receiver.in_thread(status=503) as subscriber:
        (tmp_path / "mesh.yaml").write_text(DROPPING.format(url=subscriber.url))
        hw = start_headwater(
            [
                *("-f", "mesh.yaml", "--data-dir", "data", "--durability", "normal"),
                *("--otlp-endpoint", otlp.url, "--log-format", "json"),
            ],
            tmp_path,
        )
        try:
            value, trace_id, _ = traceparent()
            event_id = uuid.uuid4().hex
            post_event(hw.url, event_id, value)
            subscriber.wait_for_requests(2)  # the attempt and its one retry
            hw.settled()  # the event was given up on: its line was written
        finally:
            hw.process.send_signal(signal.SIGTERM)
            assert hw.process.stdout is not None
            rest = hw.process.stdout.read()
            assert hw.stop() == 0
    lines = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    (given_up,) = [line for line in lines if line.get("event_id") == event_id]
    assert given_up["level"] == "warning"
    assert given_up["logger"] == "headwater.eventing.delivery"
    assert "gave up on event" in given_up["message"]
    assert (given_up["event_source"], given_up["event_type"]) == ("/e2e", "t")
    assert given_up["trace_id"] == trace_id
    assert re.fullmatch("[0-9a-f]{16}", given_up["span_id"])
    assert {"time", "level", "logger", "message"} <= lines[0].keys()  # every line
