"""SIGKILL `headwater up` while QoS 1 devices publish to its embedded broker, restart it.

Several paho-mqtt publishers (MQTT 5 and 3.1.1, persistent sessions) send
numbered readings as fast as a window of 20 unacknowledged messages allows.
Mid-stream Headwater is killed with SIGKILL and restarted on the same data
directory and port; paho reconnects and resends what was not acknowledged
(DUP). Afterwards every message that got a successful PUBACK must have been
delivered through the Trigger (CESQL filter on a lifted payload field) to the
HTTP receiver: delivered means it is in the log. Copies are counted: distinct
event ids of one reading are copies in the log (appended, then killed before
the PUBACK left); repeats of one id are redeliveries by the restarted Trigger.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.sources._mqtt_chaos import (
    WINDOW,
    ChaosRun,
    Counter,
    Publisher,
    broker_and_trigger,
)
from tests.helpers import wait_until
from tests.servers import LOOPBACK, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUBLISHERS = 4
PER_PUBLISHER = 1500
KILL_AFTER = 1500
"""Acknowledged messages (all publishers) before the SIGKILL."""
DEADLINE = 120.0


def mesh(mqtt_port: int, sink_url: str, broker_data: Path) -> str:
    return f"""\
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {{name: devices}}
spec:
  listeners: [{{host: {LOOPBACK}, port: {mqtt_port}}}]
  dataDir: "{broker_data}"
  topics: ["chaos/#"]
  mapping:
    topicPattern: "chaos/{{device}}"
    type: dev.headwater.telemetry
    extensions: {{seq: seq, temperature: temperature}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
{broker_and_trigger(sink_url)}"""


def connect_publishers(port: int) -> list[Publisher]:
    """Half MQTT 5 (session expiry), half MQTT 3.1.1 (clean session off)."""
    return [Publisher(f"dev{i}", port, v5=i % 2 == 0) for i in range(PUBLISHERS)]


async def test_sigkill_mid_stream_loses_no_acknowledged_publish(tmp_path: Path) -> None:
    counter = Counter()
    runner, sink_url = await counter.serve()
    mqtt_port = free_port()
    resources = tmp_path / "mesh.yaml"
    resources.write_text(mesh(mqtt_port, sink_url, tmp_path / "mqtt"))
    args = ["-f", str(resources), "--data-dir", str(tmp_path / "data"), "--log-level", "warning"]
    run = ChaosRun(counter, runner, args, tmp_path)
    try:
        first = await run.start()
        publishers = await asyncio.to_thread(connect_publishers, mqtt_port)
        run.publish(publishers, PER_PUBLISHER, DEADLINE)

        def acked_count() -> int:
            return sum(len(p.ok) for p in publishers)

        await wait_until(lambda: acked_count() >= KILL_AFTER, 60, "publishing stalled")
        await run.kill(first)
        acked_at_kill = acked_count()
        await asyncio.sleep(0.5)  # publishers notice and keep retrying meanwhile

        await run.start()
        acked, state = await run.finish(("MqttBrokerSource", "devices"), ("Trigger", "readings"))
    finally:
        await run.close()

    refused = sum(len(p.refused) for p in publishers)
    lost = acked - counter.deliveries.keys()
    print(
        f"\nchaos mqtt broker: {acked_at_kill} PUBACKed before SIGKILL, {len(acked)} of "
        f"{PUBLISHERS * PER_PUBLISHER} in total ({refused} refused with a reason code); "
        f"lost {len(lost)}, duplicate copies in the log {counter.copies}, "
        f"redeliveries {counter.redeliveries}"
    )
    assert not lost, f"{len(lost)} PUBACKed, never delivered: {sorted(lost)[:5]}\n{state}"
    assert len(acked) + refused >= PUBLISHERS * PER_PUBLISHER * 0.99, "publishers did not finish"
    # Only messages that were sent are delivered.
    sent = {(p.name, seq) for p in publishers for seq in range(PER_PUBLISHER)}
    assert counter.deliveries.keys() <= sent
    # A copy needs a PUBACK that the kill swallowed: at most a window per publisher.
    assert counter.copies <= PUBLISHERS * WINDOW
