"""The device simulator: a fleet of greenhouse climate sensors speaking MQTT.

How this works: :class:`Climate` is a pure, seeded model of one sensor
(temperature follows a daily sine around the device's setpoint plus a
bounded random walk; humidity moves against it; the battery, in percent,
drains slowly), so the same seed gives the same readings. Greenhouse vents
stick: :class:`VentFailures` shuts one device's vent :data:`VENT_FIRST`
seconds after the fleet starts and another's every :data:`VENT_EVERY`
seconds after that, and that greenhouse heats towards :data:`VENT_HEAT`
for a while whatever the time of day, so a demo shows heat alerts within
its first minute (the daily curve alone follows UTC and rarely reaches one).
:class:`Fleet` connects one :class:`~headwater.mqtt.client.Client` per device (client id
``{prefix}-{n}``; ``headwater simulate`` picks a prefix of its own, ``sim-XXXX``,
unless told one with ``--prefix``, so that a second simulator never takes
over the first one's devices), subscribes each to ``devices/{id}/commands/#``
and ``devices/{id}/twin/delta``, and publishes JSON telemetry to
``sensors/{id}/climate`` at the fleet's total ``rate`` (messages per second,
spread evenly over the devices). A command with a JSON ``setpoint`` moves
the device's setpoint; every command is answered with ``{"ok": true, ...}``:
to its MQTT 5 Response Topic with its Correlation Data when it has one, else
(a registry command, ``devices/{id}/commands/{cid}``) on
``devices/{id}/responses/{cid}``. A twin delta with a ``setpoint`` moves it
too, and the device reports its setpoint on ``devices/{id}/twin/reported``.
With ``--register`` the devices are first registered in the device registry
(by :func:`headwater.cli.devices.register_simulated`, through the admin API; a
new secret for those that exist) and connect with their secrets. QoS 1/2
publishes wait for their ack, so a slow broker slows the fleet (closed loop:
what is counted as acked was acknowledged). A device whose connection is lost
or taken over reconnects with backoff (counted in ``reconnects``); it does not
stop the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson

from headwater.backoff import Backoff
from headwater.mqtt.client import (
    CannotConnect,
    Client,
    ClientConfig,
    ConnectionLost,
    ConnectRefused,
    PublishRefused,
    tls_context,
)
from headwater.mqtt.packets import Properties, ProtocolVersion

__all__ = ["Climate", "Fleet", "FleetConfig", "FleetStats", "VentFailures"]

DAY = 86_400.0

VENT_FIRST = 10.0
"""Seconds after the fleet starts when the first vent (device 0's) sticks shut."""
VENT_EVERY = 300.0
"""Seconds between two vent failures in the fleet (the next device's each time)."""
VENT_RAMP = 15.0
"""Seconds a greenhouse takes to heat up (and to cool down again once fixed)."""
VENT_STUCK = 45.0
"""Seconds a vent stays shut at full heat."""
VENT_HEAT = 31.0
"""°C a greenhouse heats towards with its vent shut: well past a 25 °C alert."""


@dataclass(frozen=True, slots=True)
class VentFailures:
    """When device ``index`` of a fleet of ``devices`` started at ``start`` has its vent shut."""

    start: float
    index: int
    devices: int

    def heat(self, now: float) -> float:
        """How far towards :data:`VENT_HEAT` the greenhouse is now: 0 (vent fine) to 1."""
        since = now - self.start - VENT_FIRST - self.index * VENT_EVERY
        if since < 0:
            return 0.0
        cycle = self.devices * VENT_EVERY  # each device's turn comes round again
        at = since % cycle
        if at < VENT_RAMP:
            return at / VENT_RAMP
        if at < VENT_RAMP + VENT_STUCK:
            return 1.0
        return max(0.0, 1.0 - (at - VENT_RAMP - VENT_STUCK) / VENT_RAMP)


@dataclass(slots=True)
class Climate:
    """One sensor's state; :meth:`reading` advances it and returns the telemetry."""

    device: str
    seed: int
    setpoint: float = 22.0
    drift: float = 0.0
    humidity: float = 55.0
    battery: float = 100.0
    seq: int = 0
    vents: VentFailures | None = None
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.setpoint += self.rng.uniform(-2.0, 2.0)
        self.humidity += self.rng.uniform(-10.0, 10.0)

    def reading(self, now: float) -> dict[str, object]:
        rng = self.rng
        self.seq += 1
        self.drift = max(-3.0, min(3.0, self.drift + rng.gauss(0.0, 0.15)))
        daily = 4.0 * math.sin(2 * math.pi * ((now % DAY) / DAY - 0.25))
        temperature = self.setpoint + daily + self.drift
        if self.vents is not None:
            temperature += (VENT_HEAT - temperature) * self.vents.heat(now)
        self.humidity = max(20.0, min(95.0, self.humidity - 0.2 * self.drift + rng.gauss(0, 0.3)))
        self.battery = max(0.0, self.battery - 0.001)
        return {
            "device": self.device,
            "seq": self.seq,
            "temperature": round(temperature, 2),
            "humidity": round(self.humidity, 1),
            "battery": round(self.battery, 2),
            "ts": round(now, 3),
        }

    def command(self, payload: bytes) -> dict[str, object]:
        """Apply a command; returns the answer."""
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return {"ok": False, "error": "not JSON"}
        if isinstance(body, dict) and isinstance(body.get("setpoint"), int | float):
            self.setpoint = float(body["setpoint"])
        return {"ok": True, "device": self.device, "setpoint": round(self.setpoint, 2)}


@dataclass(frozen=True, slots=True)
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    devices: int = 10
    #: messages per second over the whole fleet
    rate: float = 10.0
    qos: int = 1
    #: stop after this many messages in total (none: run until cancelled or ``duration``)
    count: int | None = None
    duration: float | None = None
    prefix: str = "sim"
    version: ProtocolVersion = ProtocolVersion.MQTT5
    username: str | None = None
    password: bytes | None = None
    #: Per device id: its registry secret (it connects with its id as username).
    secrets: Mapping[str, str] = field(default_factory=dict)
    tls: object = None  # ssl.SSLContext
    seed: int = 1


@dataclass(slots=True)
class FleetStats:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    commands: int = 0
    answered: int = 0
    reconnects: int = 0
    deltas: int = 0
    #: Why the broker refused the last publish it refused (MQTT 5), if any.
    refused: str | None = None


#: Seconds a device waits before reconnecting, doubled up to RECONNECT_MAX.
RECONNECT_INITIAL = 0.5
RECONNECT_MAX = 10.0


class Fleet:
    """``await Fleet(config).run()``; returns the stats when done."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.stats = FleetStats()
        self._budget = config.count
        self._started = time.time()
        #: Whether any device of the fleet has had a CONNACK yet.
        self._connected = False

    def _take(self) -> bool:
        if self._budget is None:
            return True
        if self._budget <= 0:
            return False
        self._budget -= 1
        return True

    async def run(self) -> FleetStats:
        c = self.config
        self._started = time.time()
        try:
            async with asyncio.timeout(c.duration), asyncio.TaskGroup() as tg:
                for n in range(c.devices):
                    tg.create_task(self._device(n))
        except TimeoutError:
            pass
        return self.stats

    async def _device(self, n: int) -> None:
        c = self.config
        device_id = f"{c.prefix}-{n}"
        model = Climate(
            device_id, c.seed * 100_003 + n, vents=VentFailures(self._started, n, c.devices)
        )
        secret = c.secrets.get(device_id)
        client_config = ClientConfig(
            c.host,
            c.port,
            device_id,
            c.version,
            clean_start=True,
            session_expiry=0,
            keep_alive=60,
            username=device_id if secret is not None else c.username,
            password=secret.encode() if secret is not None else c.password,
            tls=c.tls,  # type: ignore[arg-type]
            auto_ack=True,
        )
        interval = c.devices / c.rate if c.rate > 0 else math.inf
        await asyncio.sleep(random.Random(n).uniform(0, min(interval, 1.0)))  # stagger
        delays = Backoff(RECONNECT_INITIAL, RECONNECT_MAX, jitter=True)
        first = True
        while True:
            try:
                await self._session(client_config, model, interval)
                return
            except ConnectionLost as exc:
                # A wrong address, TLS set-up or credentials: the fleet never got in. A
                # connection that ends otherwise (a take-over, a broker restarting, even a
                # reset before CONNACK) is retried.
                never = first and not self._connected
                if never and isinstance(exc, CannotConnect | ConnectRefused):
                    raise
            first = False
            self.stats.reconnects += 1
            await asyncio.sleep(delays.next())

    async def _session(self, config: ClientConfig, model: Climate, interval: float) -> None:
        """One connection of one device: publish until done, answer commands meanwhile."""
        c = self.config
        device_id = config.client_id
        async with Client(config) as client:
            self._connected = True
            await client.subscribe(
                [(f"devices/{device_id}/commands/#", 1), (f"devices/{device_id}/twin/delta", 1)]
            )
            commands = asyncio.ensure_future(self._commands(client, model))
            try:
                next_at = time.monotonic()
                while self._take():
                    topic = f"sensors/{device_id}/climate"
                    payload = orjson.dumps(model.reading(time.time()))
                    self.stats.sent += 1
                    try:
                        await client.publish(topic, payload, c.qos)
                        self.stats.acked += 1
                    except (ConnectionLost, PublishRefused) as exc:
                        self.stats.failed += 1
                        if isinstance(exc, ConnectionLost):
                            raise
                        self.stats.refused = str(exc)
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        next_at = time.monotonic()  # behind: do not burst to catch up
                if c.duration is not None:
                    await asyncio.sleep(c.duration)  # keep answering commands
            finally:
                commands.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionLost):
                    await commands

    async def _commands(self, client: Client, model: Climate) -> None:
        device_id = model.device
        commands = f"devices/{device_id}/commands"
        for_registry = commands + "/"
        async for message in client.messages:
            props = message.properties
            if message.topic == f"devices/{device_id}/twin/delta":
                await self._delta(client, model, message.payload)
                continue
            self.stats.commands += 1
            answer = orjson.dumps(model.command(message.payload))
            reply = Properties(
                correlation_data=props.correlation_data, content_type="application/json"
            )
            if props.response_topic:
                await client.publish(props.response_topic, answer, 1, properties=reply)
            elif message.topic.startswith(for_registry):
                # MQTT 3.1.1: the request id is the topic's last level (headwater.devices.plane).
                command_id = message.topic[len(for_registry) :]
                await client.publish(f"devices/{device_id}/responses/{command_id}", answer, 1)
            else:
                continue
            self.stats.answered += 1

    async def _delta(self, client: Client, model: Climate, payload: bytes) -> None:
        """Follow the twin: a desired setpoint is taken and reported back."""
        try:
            state = orjson.loads(payload).get("state") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return
        setpoint = state.get("setpoint") if isinstance(state, dict) else None
        if not isinstance(setpoint, int | float) or isinstance(setpoint, bool):
            return
        self.stats.deltas += 1
        model.setpoint = float(setpoint)
        reported = orjson.dumps({"setpoint": setpoint})
        await client.publish(f"devices/{model.device}/twin/reported", reported, 1)


async def _until_stopped(fleet: Fleet) -> FleetStats:
    """Run the fleet until done or SIGINT/SIGTERM (then stop it and return what it did)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await fleet.run()
    except asyncio.CancelledError:
        return fleet.stats  # stopped on request: the devices disconnected cleanly
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def default_prefix() -> str:
    """``sim-XXXX``: a fleet's own client ids, so that two simulators never take over
    each other's devices (the same client id disconnects the other [MQTT-3.1.4-2])."""
    return f"sim-{secrets.token_hex(2)}"


def run_cli(
    devices: int,
    rate: float,
    broker: str,
    qos: int,
    count: int | None,
    duration: float | None,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    username: str | None,
    password: str | None,
    mqtt311: bool,
    prefix: str | None = None,
    register: Callable[[list[str]], dict[str, str]] | None = None,
) -> FleetStats:
    """``headwater simulate``: build the fleet from command-line values and run it.

    ``register``: registers the devices (by client id) at first, and gives
    each one's secret (``headwater simulate --register`` does it through the
    admin API).
    """
    m = _BROKER.fullmatch(broker)
    if m is None:
        raise ValueError(f"--broker {broker!r} is not like mqtt://host:1883 or mqtts://host:8883")
    secure = m["scheme"] == "mqtts" or tls
    port = int(m["port"]) if m["port"] else (8883 if secure else 1883)
    prefix = prefix or default_prefix()
    known: dict[str, str] = {}
    if register is not None:
        known = register([f"{prefix}-{n}" for n in range(devices)])
    config = FleetConfig(
        host=m["host"].strip("[]"),
        port=port,
        devices=devices,
        rate=rate,
        qos=qos,
        count=count,
        duration=duration,
        prefix=prefix,
        version=ProtocolVersion.MQTT311 if mqtt311 else ProtocolVersion.MQTT5,
        username=username,
        password=password.encode() if password is not None else None,
        tls=tls_context(ca_file, cert_file, key_file) if secure else None,
        secrets=known,
    )
    fleet = Fleet(config)
    try:
        return asyncio.run(_until_stopped(fleet))
    except KeyboardInterrupt:
        return fleet.stats
    except ExceptionGroup as group:
        first = group.exceptions[0]
        if isinstance(first, OSError):  # ConnectionLost included: one readable line
            raise OSError(f"device connection failed: {first}") from None
        raise


_BROKER = re.compile(r"(?P<scheme>mqtts?)://(?P<host>\[[^\]]+\]|[^:/]+)(?::(?P<port>\d+))?/?")
