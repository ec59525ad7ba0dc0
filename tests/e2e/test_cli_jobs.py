"""The CLI a new user meets: replay and re-drive jobs, dead letters, tail, kubectl habits.

`headwater up` runs as a subprocess and is driven by the real CLI; the
subscriber is a small HTTP server whose answer a test sets (a status, or no
answer at all).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.e2e.headwater_process import HEADWATER, Headwater
from tests.helpers import WAIT, Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver.in_thread() as r:
        yield r


def mesh(url: str, delivery: str = "{retry: 0}") -> str:
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: orders}}
spec:
  broker: default
  subscriber: {{uri: "{url}"}}
  delivery: {delivery}
"""


@pytest.fixture
def hw(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> Iterator[Headwater]:
    (tmp_path / "mesh.yaml").write_text(mesh(receiver.url))
    running = headwater_up("-f", "mesh.yaml", "--data-dir", "data")
    yield running
    receiver.release()
    running.stop()


def send(hw: Headwater, *ids: str) -> None:
    for event_id in ids:
        hw.cli("send", "--type", "dev.e2e.order", "--id", event_id, "--data", '{"n": 1}')


def test_a_replay_stops_after_max_failures(hw: Headwater, receiver: Receiver) -> None:
    send(hw, "a", "b", "c", "d")
    receiver.wait_for_requests(4)
    receiver.status = 400  # refused for good: no retries to wait for
    result = hw.cli("replay", "--to", receiver.url, "--max-failures", "2", check=False)
    assert result.returncode == 1
    assert re.search(
        r"replay \w+ to \S+: failed; delivered 0, failed 2, remaining 2", result.stdout
    )
    assert "error: stopped after 2 failed event(s) (maxFailures 2)" in result.stderr


def test_ctrl_c_cancels_the_replay_on_the_server_after_showing_progress(
    hw: Headwater, receiver: Receiver
) -> None:
    send(hw, "a", "b")
    receiver.wait_for_requests(2)
    receiver.hold()  # the destination takes the request and never answers
    replay = subprocess.Popen(
        [*HEADWATER, "replay", "--to", receiver.url, "--server", hw.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert replay.stdout is not None
    started = replay.stdout.readline()
    job_id = re.search(r"`headwater replay --cancel (\w+)`", started)
    assert job_id, started
    # Not on a terminal: a progress line with all three numbers, every few seconds.
    progress = replay.stdout.readline()
    assert "delivered 0, failed 0, remaining 2" in progress
    replay.send_signal(signal.SIGINT)
    _, err = replay.communicate(timeout=WAIT)
    assert replay.returncode == 130
    assert "cancelled; delivered 0, failed 0" in err
    status = hw.cli("replay", "--cancel", job_id.group(1)).stdout
    assert status.startswith(f"replay {job_id.group(1)}: cancelled;")


def test_dead_letters_from_the_cli_and_one_word_for_them(hw: Headwater, receiver: Receiver) -> None:
    receiver.status = 503
    send(hw, "o-1", "o-2", "o-3")
    receiver.wait_for_requests(3)
    listed = hw.cli("deadletters", "list", "--trigger", "orders").stdout
    for event_id in ("o-1", "o-2", "o-3"):
        assert f"{event_id} (dev.e2e.order)" in listed
    assert "Trigger default/orders" in listed and "503" in listed
    described = hw.cli("describe", "trigger", "orders").stdout
    assert re.search(r"deadLettered: +3\n", described)
    assert re.search(r"dropped: +0\n", described)
    assert re.search(
        r"Last error: +" + re.escape(receiver.url) + r": HTTP 503.*\(attempt 1, at ", described
    )
    assert (
        "Dead letters: 3 kept, 3 not re-driven yet (`headwater deadletters list --trigger orders`"
        in described
    )
    [first] = orjson.loads(
        hw.cli("deadletters", "list", "--trigger", "orders", "--limit", "1", "-o", "json").stdout
    )
    assert "knativeerrorcode" not in first["event"]
    shown = hw.cli("deadletters", "show", str(first["id"])).stdout
    assert "code: 503" in shown and "id: o-3" in shown

    receiver.status = 202
    redriven = hw.cli("deadletters", "redrive", "--trigger", "orders")
    assert re.search(
        r"re-drive \w+ of Trigger/default/orders: done; delivered 3, failed 0, remaining 0",
        redriven.stdout,
    )
    assert sorted(receiver.wait_for_requests(6)[3:]) == ["o-1", "o-2", "o-3"]
    assert "3 kept, 0 not re-driven yet" in hw.cli("describe", "trigger", "orders").stdout
    again = hw.cli("deadletters", "redrive", "--all").stdout
    assert "done; delivered 0, failed 0, remaining 0" in again


def test_the_last_error_shows_while_the_event_is_still_retried(
    tmp_path: Path, headwater_up: Callable[..., Headwater], receiver: Receiver
) -> None:
    receiver.status = 503
    (tmp_path / "mesh.yaml").write_text(
        mesh(receiver.url, "{retry: 20, backoffPolicy: linear, backoffDelay: PT1M}")
    )
    hw = headwater_up("-f", "mesh.yaml")
    send(hw, "slow")
    receiver.wait_for_requests(1)
    described = hw.cli("describe", "trigger", "orders").stdout
    assert re.search(r"deadLettered: +0\n", described)  # not given up on: still retrying
    assert re.search(r"Last error: +\S+: HTTP 503.* \(attempt 1, at \d{4}-", described)
    [trigger] = orjson.loads(hw.cli("get", "trigger", "orders", "-o", "json").stdout)
    assert trigger["status"]["lastErrorAttempt"] == 1
    receiver.status = 202
    assert hw.stop() == 0


def test_tail_says_what_it_waits_for(hw: Headwater) -> None:
    tail = subprocess.Popen(
        [*HEADWATER, "tail", "--filter", "type = 'dev.e2e.order'", "--server", hw.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert tail.stderr is not None and tail.stdout is not None
    assert tail.stderr.readline().strip() == (
        "waiting for events on Broker default/default (from latest, matching "
        "type = 'dev.e2e.order'); Ctrl-C stops"
    )
    send(hw, "seen")
    for line in tail.stdout:
        if "id: seen" in line:
            break
    tail.send_signal(signal.SIGINT)
    tail.communicate(timeout=WAIT)


def test_server_help_and_a_server_that_is_not_headwater(hw: Headwater, receiver: Receiver) -> None:
    help_text = subprocess.run(
        [*HEADWATER, "get", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "HEADWATER_SERVER" in help_text and "http://127.0.0.1:8080" in help_text
    receiver.status = 404  # an HTML page
    result = subprocess.run(
        [*HEADWATER, "get", "brokers", "--server", receiver.url.rstrip("/")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: {receiver.url.rstrip('/')} is not a Headwater API (GET "
        "/api/v1/resources/brokers answered 404 with text/html); check --server or "
        "HEADWATER_SERVER"
    )
    assert "<html>" not in result.stderr


def test_delete_what_a_file_defines(tmp_path: Path, hw: Headwater) -> None:
    applied = tmp_path / "extra.yaml"
    applied.write_text(
        mesh("http://127.0.0.1:9/")
        .replace("name: default}", "name: extra}")
        .replace("broker: default", "broker: extra")
        .replace("name: orders", "name: extra-orders")
    )
    hw.cli("apply", "-f", str(applied))
    out = hw.cli("delete", "-f", str(applied)).stdout
    assert sorted(out.splitlines()) == ["broker/extra deleted", "trigger/extra-orders deleted"]
    gone = hw.cli("get", "all", "-o", "json").stdout
    assert "extra" not in gone
