"""What the MQTT chaos tests share: QoS 1 publishers that count their PUBACKs, an HTTP
subscriber that counts deliveries and copies, and the child-output drain."""

from __future__ import annotations

import asyncio
import collections
import signal
import threading
import time
from pathlib import Path

import aiohttp
import orjson
import paho.mqtt.client as paho
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from headwater.cloudevents import CloudEvent, from_http
from tests.e2e.headwater_process import Headwater, start_headwater
from tests.helpers import wait_until
from tests.servers import LOOPBACK

WINDOW = 20
"""Unacknowledged messages per publisher (paho queues the rest; this bounds memory)."""


class Counter:
    """The HTTP subscriber: every delivery of every (device, seq), with its event id."""

    def __init__(self) -> None:
        self.deliveries: collections.Counter[tuple[str, int]] = collections.Counter()
        self.ids: dict[tuple[str, int], set[str]] = collections.defaultdict(set)

    async def handle(self, request: web.Request) -> web.Response:
        event = from_http(request.headers.items(), await request.read())
        assert isinstance(event, CloudEvent)
        key = (str(event["device"]), int(str(event["seq"])))
        self.deliveries[key] += 1
        self.ids[key].add(event.id)
        return web.Response(status=202)

    @property
    def copies(self) -> int:
        """Readings appended more than once (distinct event ids beyond the first)."""
        return sum(len(ids) - 1 for ids in self.ids.values())

    @property
    def redeliveries(self) -> int:
        """Deliveries of an event id beyond its first (a Trigger resending after a restart)."""
        return sum(self.deliveries.values()) - sum(len(ids) for ids in self.ids.values())

    async def serve(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/", self.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, LOOPBACK, 0).start()
        return runner, f"http://{LOOPBACK}:{runner.addresses[0][1]}/"


class Publisher:
    """One paho client publishing ``{prefix}/{name}`` readings 0..n-1 at QoS 1, with a
    persistent session (so that it resends what was not acknowledged after a reconnect)."""

    def __init__(self, name: str, port: int, v5: bool, prefix: str = "chaos") -> None:
        self.name = name
        self.topic = f"{prefix}/{name}"
        self.mids: dict[int, int] = {}
        self.ok: set[int] = set()  # mids with a successful PUBACK
        self.refused: set[int] = set()  # mids with a failure reason code (MQTT 5)
        self.cond = threading.Condition()
        if v5:
            self.client = paho.Client(
                CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5
            )
        else:
            self.client = paho.Client(
                CallbackAPIVersion.VERSION2,
                client_id=name,
                protocol=MQTTProtocolVersion.MQTTv311,
                clean_session=False,
            )
        self.client.on_publish = self._on_publish
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.max_inflight_messages_set(WINDOW)
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600
            self.client.connect(LOOPBACK, port, clean_start=False, properties=props)
        else:
            self.client.connect(LOOPBACK, port)
        self.client.loop_start()

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        with self.cond:
            if int(getattr(reason, "value", 0) or 0) < 0x80:
                self.ok.add(mid)
            else:
                self.refused.add(mid)
            self.cond.notify_all()

    def _outstanding(self) -> int:
        return len(self.mids) - len(self.ok) - len(self.refused)

    def run(self, count: int, deadline: float) -> None:
        for seq in range(count):
            payload = orjson.dumps({"seq": seq, "temperature": 15 + seq % 20})
            with self.cond:
                while self._outstanding() >= WINDOW:
                    if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                        return  # out of time; the test reports what was acknowledged
            # Not under self.cond: paho calls on_publish holding its own lock, which
            # publish() takes too. The ack may come before the mid is recorded.
            info = self.client.publish(self.topic, payload, qos=1)
            with self.cond:
                self.mids[info.mid] = seq
        with self.cond:
            self.cond.wait_for(
                lambda: self._outstanding() == 0, max(0.0, deadline - time.monotonic())
            )

    def acknowledged(self) -> set[tuple[str, int]]:
        with self.cond:
            return {(self.name, self.mids[mid]) for mid in self.ok if mid in self.mids}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho leaves its wake-up socket pair to the GC


def drain(headwater: Headwater) -> threading.Thread:
    """Keep reading the child's output so that a full pipe never blocks it."""
    stdout = headwater.process.stdout
    assert stdout is not None

    def read() -> None:
        for line in stdout:
            headwater.output.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def broker_and_trigger(sink_url: str) -> str:
    """A Broker and a Trigger (CESQL on a lifted payload field) to the HTTP subscriber."""
    return f"""\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {{name: default}}
spec:
  delivery: {{retry: 20, backoffPolicy: exponential, backoffDelay: PT0.1S}}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {{name: readings}}
spec:
  broker: default
  filters:
    - cesql: "type = 'dev.headwater.telemetry' AND temperature >= -50"
  subscriber: {{uri: "{sink_url}"}}
"""


class ChaosRun:
    """One run's `headwater up` processes, output readers and publishers; ``close`` ends them.

    ``start`` launches Headwater (again, after a kill) on the same files and
    data directory; ``publish`` runs the publishers in threads until they sent
    everything or the deadline passes; ``finish`` waits for them and for every
    acknowledged message to be delivered, then describes resources of the last
    Headwater (for the failure message) and stops it cleanly.
    """

    def __init__(self, counter: Counter, runner: web.AppRunner, args: list[str], cwd: Path):
        self.counter = counter
        self.runner = runner
        self.args = args
        self.cwd = cwd
        self.publishers: list[Publisher] = []
        self.processes: list[Headwater] = []
        self.readers: list[threading.Thread] = []
        self.running: list[asyncio.Task[None]] = []

    async def start(self) -> Headwater:
        headwater = await asyncio.to_thread(start_headwater, self.args, self.cwd)
        self.processes.append(headwater)
        self.readers.append(drain(headwater))
        return headwater

    @staticmethod
    async def subscribed(headwater: Headwater, name: str, within: float = 30.0) -> None:
        """Wait until MqttSource ``name`` subscribed: ``ready`` does not wait for external
        brokers, and a device publishing before the subscription exists is answered by
        the broker but its message goes to nobody."""
        url = f"{headwater.url}/api/v1/resources/MqttSource/default/{name}"
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                async with session.get(url) as response:
                    if response.status == 200 and (await response.json())["status"].get(
                        "connected"
                    ):
                        return
                await asyncio.sleep(0.05)
        raise AssertionError(f"MqttSource {name} did not subscribe within {within}s")

    @staticmethod
    async def kill(headwater: Headwater) -> None:
        headwater.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(headwater.process.wait, 30)

    def publish(self, publishers: list[Publisher], count: int, seconds: float) -> None:
        self.publishers.extend(publishers)
        deadline = time.monotonic() + seconds
        self.running = [
            asyncio.create_task(asyncio.to_thread(p.run, count, deadline)) for p in publishers
        ]

    async def finish(self, *describe: tuple[str, str]) -> tuple[set[tuple[str, int]], str]:
        """The acknowledged (device, seq) pairs, and the describe output of ``describe``."""
        await asyncio.gather(*self.running)
        acked: set[tuple[str, int]] = set().union(*(p.acknowledged() for p in self.publishers))
        await wait_until(lambda: acked <= self.counter.deliveries.keys(), 60, "every acked reading")
        last = self.processes[-1]
        state = [
            (await asyncio.to_thread(last.cli, "describe", kind, name)).stdout
            for kind, name in describe
        ]
        assert last.stop() == 0
        return acked, "\n".join(state)

    async def close(self) -> None:
        for p in self.publishers:
            await asyncio.to_thread(p.close)
        for process in self.processes:
            process.close()
        await self.runner.cleanup()
        for thread in self.readers:
            thread.join(5)
