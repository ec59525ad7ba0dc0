"""Mosquitto restarted, and Headwater SIGKILLed, under an MqttSource while devices publish.

paho-mqtt devices publish numbered QoS 1 readings to a real Mosquitto
(persistence in a temp dir) without pause. `headwater up` consumes them
through an MqttSource with a stable client id and a persistent session.
Mid-stream, Mosquitto is restarted (it saves its queues on the way down), and
later Headwater is SIGKILLed and restarted only after a pause, during which
Mosquitto queues for the absent session. Every message Mosquitto acknowledged
to a device must reach the HTTP receiver through the Trigger: nothing
Mosquitto had queued for Headwater is lost. Copies and redeliveries are
counted and reported.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos.sources._mqtt_chaos import (
    ChaosRun,
    Counter,
    Publisher,
    broker_and_trigger,
)
from tests.helpers import wait_until
from tests.integration.sources.conftest import Mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUBLISHERS = 3
PER_PUBLISHER = 1500
DEADLINE = 150.0


def mesh(broker_url: str, sink_url: str) -> str:
    return f"""\
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttSource
metadata: {{name: plant}}
spec:
  broker: "{broker_url}"
  clientId: headwater-chaos
  topics: [{{filter: "plant/#", qos: 1}}]
  maxBackoff: 0.5
  mapping:
    topicPattern: "plant/{{device}}"
    type: dev.headwater.telemetry
    extensions: {{seq: seq, temperature: temperature}}
  sink:
    ref: {{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}}
---
{broker_and_trigger(sink_url)}"""


def connect_publishers(port: int) -> list[Publisher]:
    return [Publisher(f"dev{i}", port, v5=i % 2 == 0, prefix="plant") for i in range(PUBLISHERS)]


async def test_nothing_mosquitto_queued_is_lost(tmp_path: Path) -> None:
    counter = Counter()
    runner, sink_url = await counter.serve()
    with Mosquitto(tmp_path / "mosquitto") as mosquitto:
        resources = tmp_path / "mesh.yaml"
        resources.write_text(mesh(mosquitto.url, sink_url))
        args = ["-f", str(resources), "--data-dir", str(tmp_path / "data")]
        args += ["--log-level", "warning"]
        run = ChaosRun(counter, runner, args, tmp_path)
        try:
            first = await run.start()
            # Once the source subscribed, its session exists at Mosquitto.
            await run.subscribed(first, "plant")
            publishers = await asyncio.to_thread(connect_publishers, mosquitto.port)
            run.publish(publishers, PER_PUBLISHER, DEADLINE)

            def delivered() -> int:
                return len(counter.deliveries)

            await wait_until(lambda: delivered() >= 1000, 60, "nothing flows")
            # Mosquitto goes down and up under the source and the devices.
            await asyncio.to_thread(mosquitto.restart)
            await wait_until(lambda: delivered() >= 2000, 60, "no flow after restart")
            # Headwater dies; Mosquitto queues for its session until it is back.
            await run.kill(first)
            queued_from = delivered()
            await asyncio.sleep(1.5)
            await run.start()
            acked, state = await run.finish(("MqttSource", "plant"), ("Trigger", "readings"))
            state += f"\n{mosquitto.log_tail(15)}"
        finally:
            await run.close()

    lost = acked - counter.deliveries.keys()
    print(
        f"\nchaos mqtt source: {len(acked)} of {PUBLISHERS * PER_PUBLISHER} acknowledged by "
        f"Mosquitto, {queued_from} delivered before the SIGKILL; lost {len(lost)}, "
        f"duplicate copies in the log {counter.copies}, redeliveries {counter.redeliveries}"
    )
    assert not lost, f"{len(lost)} acked by Mosquitto never arrived: {sorted(lost)[:5]}\n{state}"
    assert len(acked) == PUBLISHERS * PER_PUBLISHER, "devices did not finish"
    sent = {(p.name, seq) for p in publishers for seq in range(PER_PUBLISHER)}
    assert counter.deliveries.keys() <= sent
