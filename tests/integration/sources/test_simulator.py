"""The device fleet against a real Mosquitto and through the embedded broker to the log."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def test_a_connection_reset_before_connack_is_retried() -> None:
    """A broker taking a client id over may reset the newcomer before its CONNACK
    (two simulators with one --prefix): the device reconnects, it does not stop
    the fleet with a raw ConnectionResetError."""
    config = BrokerConfig(listeners=(Listener(port=0),))
    mapping = Mapping.compile(topic_pattern="sensors/{device}/{metric}")
    events: list[CloudEvent] = []

    async def emit(event: CloudEvent) -> None:
        events.append(event)

    resets = 0

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal resets
        if resets == 0:  # the first connection: read its CONNECT, then reset it
            resets += 1
            await reader.read(65536)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", broker_port)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async with MqttBrokerSource(config, mapping, emit, topics=("sensors/#",)) as source:
        broker_port = source.broker.port()
        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            fleet = Fleet(FleetConfig(port=port, devices=1, rate=100, count=5))
            stats = await fleet.run()
    assert resets == 1
    assert (stats.acked, stats.failed, stats.reconnects) == (5, 0, 1)


def _simulate(url: str, *extra: str) -> subprocess.Popen[str]:
    """``headwater simulate`` of 3 devices, 30 messages (``extra`` options win)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater.cli",
            "simulate",
            "--devices",
            "3",
            "--rate",
            "30",
            "--count",
            "30",
            "--broker",
            url,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_simulate_command_against_mosquitto(mosquitto: Mosquitto) -> None:
    out, err = _simulate(mosquitto.url, "--rate", "300").communicate(timeout=60)
    assert "sent 30, acked 30, failed 0" in out, err


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


def test_two_simulators_keep_their_own_devices(mosquitto: Mosquitto) -> None:
    """Each run picks its own client ids: a second simulator takes nothing over."""
    runs = [_simulate(mosquitto.url), _simulate(mosquitto.url)]
    outputs = [run.communicate(timeout=60) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        assert "sent 30, acked 30, failed 0" in out and "reconnects 0" in out, out


def test_one_prefix_twice_takes_over_and_the_fleets_reconnect(mosquitto: Mosquitto) -> None:
    """What --prefix makes possible on purpose: both keep running (they reconnect)."""
    runs = [
        _simulate(mosquitto.url, "--prefix", "same"),
        _simulate(mosquitto.url, "--prefix", "same"),
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert any("reconnects 0" not in out for out, _ in outputs), outputs
