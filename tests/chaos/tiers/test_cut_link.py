"""Edge to cloud and back over a WAN that is really cut, in network namespaces.

Each scenario runs ``headwater up`` twice: an edge behind NAT (10 MQTT devices
publishing numbered QoS 1 readings to its embedded broker, an Uplink to the
cloud, a Downlink for commands) and a cloud (a Broker ingress with a bearer
token, a Trigger to a receiver, an Edge queue), on either side of the WAN of
:mod:`tests.netns`. The verdict of every scenario: every reading the edge
acknowledged (PUBACK) reached the receiver behind the cloud, each device's
readings in order; duplicates (at least once after a crash) are counted and
printed with the other figures (``pytest -s`` shows them).

The figures a run printed on the development machine are in the README's
"Edge to cloud" section and in the report of issue 16.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from headwater.cloudevents import CloudEvent
from tests.chaos.tiers.lab import Lab, Receiver, verdict, wait_until
from tests.netns import Wan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATE = 500.0
"""Readings per second from the devices (10 devices, 50 each)."""

DRAIN_DEADLINE = 180.0
"""Seconds a run may take to deliver everything after the link is back (a
failure deadline on a loaded machine, not a performance bound)."""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with Wan() as wan:
        lab = Lab(wan, tmp_path)
        try:
            yield lab
        finally:
            lab.close()


def settle(lab: Lab, what: str) -> dict[str, object]:
    """Stop the devices, wait until every acknowledged reading arrived; the verdict."""
    assert lab.devices is not None
    devices = lab.devices
    devices.pause()
    wait_until(
        lambda: devices.acked <= lab.receiver.got(), DRAIN_DEADLINE, what, lab.edge, lab.cloud
    )  # type: ignore[arg-type]
    result = verdict(devices, lab.receiver)
    assert result["lost"] == 0, result
    assert not result["out_of_order"], result
    return result


def report(name: str, **figures: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def drain(lab: Lab, cut_for: float) -> dict[str, float]:
    """Restore the link and measure the catch-up: seconds until the backlog is gone."""
    before = lab.uplink()["backlogEvents"]
    lab.wan.restore()
    restored = time.monotonic()
    wait_until(lambda: lab.uplink()["backlogEvents"] < RATE, DRAIN_DEADLINE, "the catch-up")
    took = time.monotonic() - restored
    return {"backlog": before, "drain_s": round(took, 2), "drain_rate": round(before / took)}


def test_link_down_60s_under_500_events_per_second(lab: Lab) -> None:
    lab.start_cloud()
    lab.start_edge()
    devices = lab.start_devices(rate=RATE)
    wait_until(lambda: len(lab.receiver.got()) > 2000, 60, "live traffic", lab.edge, lab.cloud)
    lab.wan.cut()
    wait_until(lambda: lab.uplink()["link"] == "down", 30, "the edge to notice the cut")
    time.sleep(60)  # the outage: the devices go on publishing
    cut = lab.uplink()
    assert cut["deadLettered"] == 0 and cut["backlogEvents"] > 0.8 * 60 * RATE
    figures = drain(lab, 60)
    time.sleep(5)  # live traffic after the catch-up
    result = settle(lab, "every acknowledged reading")
    status = lab.uplink()
    wire = lab.wan.wire_bytes()
    report(
        "60 s outage",
        **figures,
        live_rate=RATE,
        acked=result["acked"],
        lost=result["lost"],
        duplicates=result["duplicates"],
        wire_bytes_per_event=round(wire / result["acked"], 1),
        requests=status["requests"],
    )
    assert figures["drain_rate"] >= 2 * RATE  # the backlog shrinks while live traffic goes on
    assert devices.acked


def test_edge_sigkilled_and_restarted_while_the_link_is_down(lab: Lab) -> None:
    lab.start_cloud()
    edge = lab.start_edge()
    devices = lab.start_devices(rate=RATE)
    wait_until(lambda: len(lab.receiver.got()) > 1000, 60, "live traffic", lab.edge, lab.cloud)
    lab.wan.cut()
    time.sleep(10)
    # Every reading published so far is acknowledged (or not) before the kill, so
    # each device's order is its own (paho resends unacknowledged ones late).
    devices.pause()
    wait_until(lambda: not devices._pending, 30, "PUBACKs before the kill")
    edge.kill()
    lab.start_edge()  # same data directory and ports
    devices.resume()
    time.sleep(10)
    lab.wan.restore()
    result = settle(lab, "every acknowledged reading after the edge's SIGKILL")
    report("edge SIGKILL while down", **result)


def test_cloud_restarted_mid_catch_up(lab: Lab) -> None:
    cloud = lab.start_cloud()
    lab.start_edge()
    lab.start_devices(rate=200)
    wait_until(lambda: len(lab.receiver.got()) > 500, 60, "live traffic", lab.edge, lab.cloud)
    lab.wan.cut()
    time.sleep(30)
    backlog = lab.uplink()["backlogEvents"]
    # A slow link, so that the catch-up takes long enough to be interrupted.
    lab.wan.shape(rate="256kbit")
    before = len(lab.receiver.got())
    lab.wan.restore()
    wait_until(
        lambda: len(lab.receiver.got()) > before + backlog // 10, 120, "the catch-up to begin"
    )
    remaining = lab.uplink()["backlogEvents"]
    cloud.kill()
    lab.start_cloud()  # same data directory and port
    result = settle(lab, "every acknowledged reading after the cloud's restart")
    report("cloud restart mid-catch-up", backlog=backlog, backlog_at_kill=remaining, **result)
    assert remaining > 0


def test_lossy_slow_link_for_a_minute(lab: Lab) -> None:
    lab.start_cloud()
    lab.start_edge()
    lab.wan.shape(rate="1mbit", loss=5, delay=0.3)
    start_wire = lab.wan.wire_bytes()
    devices = lab.start_devices(rate=RATE)
    time.sleep(60)
    result = settle(lab, "every reading over the lossy link")
    status = lab.uplink()
    report(
        "lossy slow link",
        **result,
        dropped_packets=lab.wan.dropped(),
        wire_bytes_per_event=round((lab.wan.wire_bytes() - start_wire) / len(devices.acked), 1),
        failed_attempts=status["failedAttempts"],
        p50_latency_s=_median([a.latency for a in lab.receiver.arrivals]),
    )
    assert lab.wan.dropped() > 0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 3) if ordered else 0.0


def command(i: int, expires_in: float) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": f"cmd-{i}",
            "source": "/cloud/operator",
            "type": "dev.headwater.command",
            "subject": f"d{i % 10}",
            "expiresat": (datetime.now(UTC) + timedelta(seconds=expires_in)).isoformat(),
        },
        {"setpoint": 18 + i % 5, "n": i},
    )


def test_commands_queued_during_an_outage_reach_the_device_after_it(lab: Lab) -> None:
    lab.start_cloud()
    lab.start_edge()
    devices = lab.start_devices(rate=10)
    got: list[str] = []
    devices.client.on_message = lambda client, userdata, message: got.append(message.topic)
    devices.subscribe("devices/+/commands", qos=1)
    wait_until(lambda: lab.status("cloud", "Edge", "site-7")["connected"], 30, "the downlink")
    lab.send_to_cloud([command(0, 3600)])
    wait_until(lambda: len(got) == 1, 30, "a command while connected", lab.edge, lab.cloud)
    lab.wan.cut()
    lab.send_to_cloud([command(i, 3600) for i in range(1, 11)])  # still valid after the outage
    lab.send_to_cloud([command(i, 5) for i in range(11, 16)])  # expire during it
    wait_until(lambda: lab.status("cloud", "Edge", "site-7")["queued"] == 16, 30, "queueing")
    time.sleep(15)
    lab.wan.restore()
    wait_until(lambda: len(got) == 11, 60, "the queued commands", lab.edge, lab.cloud)
    edge_queue = lab.status("cloud", "Edge", "site-7")
    wait_until(lambda: lab.status("cloud", "Edge", "site-7")["backlog"] == 0, 30, "acks")
    report("commands across an outage", delivered=len(got), expired=edge_queue["expired"])
    assert edge_queue["expired"] == 5
    assert sorted(got) == sorted(f"devices/d{i % 10}/commands" for i in range(11))


def test_to_a_knative_style_receiver_across_a_cut(lab: Lab) -> None:
    """The Knative shape: the cloud is any CloudEvents receiver without batches."""
    receiver = Receiver(batches=False)
    receiver.start(lab.cloud_thread, host="0.0.0.0")
    lab.receiver = receiver
    lab.start_cloud()
    lab.start_edge(uplink_uri=f"http://10.10.3.2:{receiver.port}/")
    lab.start_devices(rate=100)
    wait_until(lambda: len(receiver.got()) > 200, 60, "live traffic", lab.edge, lab.cloud)
    lab.wan.cut()
    time.sleep(10)
    lab.wan.restore()
    result = settle(lab, "every reading at the Knative-style receiver")
    status = lab.uplink()
    assert status["mode"] == "binary" and status["compression"] == "none"
    report("Knative-style receiver", **result)
