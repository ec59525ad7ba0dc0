"""What the mesh fault tests share: devices under QoS 1 load, a proxy that cuts a link,
and the check that nothing acknowledged was lost.

How this works:

- :class:`Fleet` runs ``count`` MQTT devices (aiomqtt, persistent sessions,
  client ids ``dev-<i>``) in the test's event loop. Device ``i`` starts on
  node ``i % len(ports)`` and publishes QoS 1 readings ``{"d": i, "n": seq}``
  to ``telemetry/dev-<i>`` as fast as its PUBACKs come; each PUBACK adds
  ``(i, seq)`` to ``acked``. A device whose connection fails (its node died,
  or refused) moves to the next node of the list and resumes its session
  there (``resumed`` counts CONNACKs with Session Present).
- :class:`Blackhole` is a TCP proxy (its own thread and loop) between a node
  and NATS; ``cut()`` stops relaying in both directions while keeping the
  connections open, as a silent network partition does; ``heal()`` closes
  the stale connections and relays again.
- :func:`stored` reads the Broker's stream from JetStream (a consumer of its
  own, from the first event) and returns every reading it holds, in order:
  the acked ones must all be there; more than once is a duplicate (counted).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
from collections.abc import Sequence
from typing import Any

import aiomqtt

from headwater.log import EARLIEST, JetStreamLog

STREAM = "broker/default/telemetry"

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: telemetry}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: devices}
spec:
  listeners: [{host: 127.0.0.1, port: 1883}]
  topics: ["telemetry/#"]
  deviceEvents: false
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: telemetry}
"""


class Fleet:
    """Devices publishing QoS 1 readings to a mesh (see the module docstring)."""

    def __init__(self, ports: Sequence[int], count: int) -> None:
        self.ports = list(ports)
        self.count = count
        self.acked: set[tuple[int, int]] = set()
        self.refused = 0
        self.reconnects = 0
        self.resumed = 0
        #: (device, node index, monotonic time) of each acknowledgement.
        self.acks_by_node: collections.Counter[int] = collections.Counter()
        self.ack_times: list[tuple[int, float]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected: dict[int, int] = {}
        self.last_ack: dict[int, float] = {}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._device(i)) for i in range(self.count)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _device(self, i: int) -> None:
        node = i % len(self.ports)
        seq = 0
        first = True
        while not self._stop.is_set():
            port = self.ports[node]
            connection = aiomqtt.Client(
                "127.0.0.1",
                port,
                identifier=f"dev-{i}",
                clean_session=False,
                timeout=5,
                keepalive=5,
            )
            present = _session_present(connection)
            try:
                async with connection as client:
                    if not first:
                        self.reconnects += 1
                        if present and present[0]:
                            self.resumed += 1
                    if first:
                        await client.subscribe(f"commands/dev-{i}", qos=1)
                    first = False
                    self.connected[i] = node
                    while not self._stop.is_set():
                        seq += 1
                        payload = json.dumps({"d": i, "n": seq}).encode()
                        await client.publish(f"telemetry/dev-{i}", payload, qos=1)
                        self.acked.add((i, seq))
                        self.acks_by_node[node] += 1
                        now = time.monotonic()
                        self.ack_times.append((node, now))
                        self.last_ack[i] = now
                        await asyncio.sleep(0.02)
            except (aiomqtt.MqttError, OSError, TimeoutError):
                self.refused += 1
                self.connected.pop(i, None)
                node = (node + 1) % len(self.ports)
                await asyncio.sleep(0.2)


def _session_present(connection: aiomqtt.Client) -> list[bool]:
    """The Session Present flag of the CONNACK, once it came (aiomqtt does not keep it)."""
    present: list[bool] = []
    paho_client = connection._client
    original = paho_client.on_connect

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        present.append(bool(flags.session_present))
        original(client, userdata, flags, reason, props)

    paho_client.on_connect = on_connect
    return present


async def stored(servers: Sequence[str]) -> collections.Counter[tuple[int, int]]:
    """Every reading the Broker's stream holds, counted (see the module docstring)."""
    readings: collections.Counter[tuple[int, int]] = collections.Counter()
    async with JetStreamLog(list(servers), request_timeout=10) as log:
        info = await log.info(STREAM)
        consumer = f"check-{time.time_ns()}"
        reader = log.reader(STREAM, consumer, EARLIEST)
        try:
            position = 0
            while position < info.last_offset:
                batch = await reader.next_batch(1000, timeout=5)
                assert batch, f"the stream stopped at {position} of {info.last_offset}"
                for offset, event in batch:
                    data = event.data
                    if isinstance(data, bytes | bytearray):
                        data = json.loads(data)
                    readings[(int(data["d"]), int(data["n"]))] += 1
                    await reader.ack(offset)
                    position = offset
        finally:
            await reader.close()
            await log.delete_consumer(STREAM, consumer)
    return readings


def report(fleet: Fleet, readings: collections.Counter[tuple[int, int]]) -> tuple[int, int]:
    """``(lost, duplicates)``: acked readings missing from the stream, and extra copies."""
    lost = len(fleet.acked - readings.keys())
    duplicates = sum(n - 1 for n in readings.values() if n > 1)
    print(
        f"acked {len(fleet.acked)}, stored {len(readings)} distinct ({sum(readings.values())} "
        f"with copies), lost {lost}, duplicates {duplicates}, refused {fleet.refused}, "
        f"reconnects {fleet.reconnects}, resumed {fleet.resumed}"
    )
    return lost, duplicates


class Blackhole:
    """A TCP proxy that can cut its link silently (see the module docstring)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._open = threading.Event()
        self._open.set()
        self._loop = asyncio.new_event_loop()
        self._server: Any = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            while not self._open.is_set():  # noqa: ASYNC110 (cut: hold it all, say nothing)
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()

    def cut(self) -> None:
        self._open.clear()

    def heal(self) -> None:
        def reset() -> None:
            for writer in list(self._writers):
                writer.close()
            self._open.set()

        self._loop.call_soon_threadsafe(reset)

    async def _shutdown(self) -> None:
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        self._open.set()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        with contextlib.suppress(RuntimeError):
            self._loop.close()
