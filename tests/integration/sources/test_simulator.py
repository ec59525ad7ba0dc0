"""The device fleet against a real Mosquitto and through the embedded broker to the log."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

import orjson

from headwater.cloudevents import CloudEvent
from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.sinks.mqtt import EmbeddedPublisher, MqttSink
from headwater.sources.mapping import Mapping
from headwater.sources.mqttbroker import MqttBrokerSource
from headwater.sources.simulator import Fleet, FleetConfig
from tests.helpers import wait_until
from tests.integration.sources.conftest import Mosquitto


async def test_fleet_telemetry_and_commands_through_the_embedded_broker() -> None:
    events: list[CloudEvent] = []

    async def emit(event: CloudEvent) -> None:
        events.append(event)

    mapping = Mapping.compile(
        topic_pattern="sensors/{device}/{metric}", extensions={"temperature": "temperature"}
    )
    config = BrokerConfig(listeners=(Listener(port=0),))
    async with MqttBrokerSource(config, mapping, emit, topics=("sensors/#",)) as source:
        fleet = Fleet(
            FleetConfig(port=source.broker.port(), devices=4, rate=400, count=40, duration=3)
        )
        run = asyncio.create_task(fleet.run())
        await wait_until(lambda: sum(e.type == "dev.headwater.mqtt.message" for e in events) >= 40)
        sink = MqttSink("devices/{subject}/commands", EmbeddedPublisher(source), response_timeout=3)
        command = CloudEvent(
            {
                "specversion": "1.0",
                "id": "c1",
                "source": "/t",
                "type": "dev.headwater.command",
                "subject": "sim-2",
                "correlationid": "k",
            },
            b'{"setpoint": 25}',
        )
        reply = await sink.deliver(command)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    telemetry = [e for e in events if e.type == "dev.headwater.mqtt.message"]
    assert len(telemetry) == 40
    assert {e["device"] for e in telemetry} == {"sim-0", "sim-1", "sim-2", "sim-3"}
    body = orjson.loads(telemetry[0].data_bytes())
    assert set(body) == {"device", "seq", "temperature", "humidity", "battery", "ts"}
    assert fleet.stats.acked == 40 and fleet.stats.failed == 0
    assert reply is not None
    assert orjson.loads(reply.data_bytes()) == {"ok": True, "device": "sim-2", "setpoint": 25.0}


def test_simulate_command_against_mosquitto(mosquitto: Mosquitto) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater.cli",
            "simulate",
            "--devices",
            "3",
            "--rate",
            "300",
            "--count",
            "30",
            "--broker",
            mosquitto.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "sent 30, acked 30, failed 0" in result.stdout


def test_simulate_reports_an_unreachable_broker() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater.cli",
            "simulate",
            "--count",
            "1",
            "--broker",
            "mqtt://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "error: device connection failed" in result.stderr
