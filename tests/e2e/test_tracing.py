"""One reading followed from an MQTT 5 device to HTTP subscribers, through `headwater up`.

A real OTLP/HTTP receiver (tests/otlp.py, decoding with opentelemetry-proto
what the SDK's exporter sends) collects the spans; real HTTP subscribers
record the ``traceparent`` each delivery carries. Run with the HTTP worker
process (``headwater up``'s default) and without it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.headwater_process import Headwater, start_headwater
from tests.integration.sources.conftest import Device
from tests.otlp import OtlpReceiver, ReceivedSpan, children, one, threaded_receiver

WAIT = 30.0

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
    """HTTP subscribers on one loopback port: /ok and /dls accept, /bad answers 503.
    ``seen[path]`` is the (traceparent, ce-traceparent, ce-id) of each request."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, str, str]]] = {"/ok": [], "/bad": [], "/dls": []}
        self.changed = threading.Condition()
        subscribers = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = (
                    self.headers.get("traceparent", ""),
                    self.headers.get("ce-traceparent", ""),
                    self.headers.get("ce-id", ""),
                )
                with subscribers.changed:
                    subscribers.seen.setdefault(self.path, []).append(record)
                    subscribers.changed.notify_all()
                self.send_response(503 if self.path == "/bad" else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, path: str, count: int) -> list[tuple[str, str, str]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.seen[path]) >= count, WAIT), self.seen
            return list(self.seen[path])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with threaded_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def subscribers() -> Iterator[Subscribers]:
    subs = Subscribers()
    yield subs
    subs.close()


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
    before = len(subscribers.seen["/ok"])
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
    bad, dls = len(subscribers.seen["/bad"]), len(subscribers.seen["/dls"])
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
    bad = len(subscribers.seen["/bad"])
    value, trace_id, _ = traceparent(sampled=False)
    assert device.publish("sensors/bad", b"{}", user_properties=[("traceparent", value)]) == 0
    attempts = subscribers.wait("/bad", bad + 3)[bad : bad + 3]
    # Not sampled: the event went out with the context stored at ingest, unchanged.
    (stored,) = {tp for tp, _, _ in attempts}
    stored_trace, stored_parent, flags = parse(stored)
    assert (stored_trace, flags) == (trace_id, "00")

    spans = wait_trace(otlp, trace_id, ["Trigger default/bad", "dead-letter"])
    trigger = one(spans, "Trigger default/bad")
    assert trigger.attributes["headwater.sampled_at_head"] is False
    assert trigger.parent_span_id == stored_parent  # the ingest span, never recorded
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
    before = len(subscribers.seen["/ok"])
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
    import urllib.request

    hw, _ = headwater
    value, trace_id, client_span = traceparent()
    dls = len(subscribers.seen["/dls"])
    request = urllib.request.Request(
        f"{hw.url}/default/default",
        data=b"{}",
        method="POST",
        headers={
            "ce-specversion": "1.0",
            "ce-id": uuid.uuid4().hex,
            "ce-source": "/e2e",
            "ce-type": "t",
            "ce-subject": "sensors/bad",
            "content-type": "application/json",
            "traceparent": value,
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202
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
