"""Stopping `headwater up`: what was under way is said and comes back; processes go first."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.headwater_process import Headwater
from tests.helpers import Receiver


@pytest.fixture
def subscriber() -> Iterator[Receiver]:
    """A subscriber that takes each request and does not answer until released."""
    with Receiver.in_thread() as receiver:
        receiver.hold()
        yield receiver


def stop_and_read(hw: Headwater) -> tuple[int, str]:
    """SIGTERM, then everything it printed until it exited."""
    hw.process.send_signal(signal.SIGTERM)
    rest, _ = hw.process.communicate(timeout=60)
    return hw.process.returncode, rest


def mesh(url: str) -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: slow}}
spec:
  broker: default
  subscriber: {{uri: "{url}"}}
"""


def test_shutdown_says_what_was_under_way_and_it_comes_back(
    tmp_path: Path, headwater_up: Callable[..., Headwater], subscriber: Receiver
) -> None:
    (tmp_path / "mesh.yaml").write_text(mesh(subscriber.url))
    up = ("-f", "mesh.yaml", "--data-dir", "data", "--drain-timeout", "0.2")
    hw = headwater_up(*up)
    hw.cli("send", "--type", "dev.e2e.slow", "--id", "under-way")
    subscriber.wait_for_requests(1)
    code, rest = stop_and_read(hw)
    assert code == 0
    assert (
        "stopping with 1 deliveries still under way after 0.2s (--drain-timeout): they were "
        "not acknowledged and will be delivered again at the next start" in rest
    )

    subscriber.release()
    hw = headwater_up(*up)
    assert subscriber.wait_for_requests(2) == ["under-way", "under-way"]
    assert hw.stop() == 0


ADAPTER = """\
import json, os, signal, sys, urllib.request

def goodbye(*_):
    request = urllib.request.Request(
        os.environ["K_SINK"],
        data=json.dumps({"bye": True}).encode(),
        headers={"ce-specversion": "1.0", "ce-id": "goodbye", "ce-source": "/adapter",
                 "ce-type": "dev.e2e.goodbye", "content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            outcome = str(response.status)
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    with open("outcome", "w") as out:
        out.write(outcome)
    sys.exit(0)

signal.signal(signal.SIGTERM, goodbye)
open("started", "w").close()
signal.pause()
"""


def test_container_sources_stop_before_the_listener_they_post_to(
    tmp_path: Path, headwater_up: Callable[..., Headwater]
) -> None:
    """An adapter that sends a last event when asked to stop gets it accepted (202)."""
    (tmp_path / "adapter.py").write_text(ADAPTER)
    (tmp_path / "mesh.yaml").write_text(
        f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: sources.knative.dev/v1
kind: ContainerSource
metadata: {{name: adapter}}
spec:
  template:
    spec:
      containers:
        - command: [{orjson.dumps(sys.executable).decode()}, adapter.py]
          workingDir: {orjson.dumps(str(tmp_path)).decode()}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
"""
    )
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    started = tmp_path / "started"
    hw.cli("get", "containersource", "adapter")
    for _ in range(1000):
        if started.exists():
            break
        threading.Event().wait(0.02)
    assert started.exists(), "the adapter did not start"
    code, _ = stop_and_read(hw)
    assert code == 0
    assert (tmp_path / "outcome").read_text() == "202"
    hw = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    tail = hw.cli("tail", "--from", "earliest", "--json", "--max", "1")
    assert orjson.loads(tail.stdout)["id"] == "goodbye"
    assert hw.stop() == 0
