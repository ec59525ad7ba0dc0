"""A Headwater node (as ``headwater up`` runs it) on a thread, for the device registry tests.

:class:`Node` starts :func:`headwater.api.server.start` with a mesh file
(a Broker and an MqttBrokerSource with ``devices``) in a temporary data
directory, on its own event loop in a thread, so that blocking paho clients
drive it from the test thread. The admin API is reached over HTTP
(``node.api``), the runtime directly (``node.run``) where a test needs to
read what it keeps; ``node.restart()`` stops the node and starts a new one
on the same data directory (a restart of the process, as far as the state
store, the event log and the MQTT sessions are concerned).
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from headwater.api.server import Server, UpOptions, start, stop
from headwater.cloudevents import CloudEvent
from headwater.log import EARLIEST
from tests.integration.mqtt._clients import TIMEOUT, close_all

T = TypeVar("T")

MESH = """\
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default}
---
apiVersion: sources.headwater.dev/v1alpha1
kind: MqttBrokerSource
metadata: {name: mqtt}
spec:
  listeners: [{port: 0}]
  topics: ["sensors/#", "devices/#"]
  mapping: {topicPattern: "sensors/{device}/{metric}"}
  devices:
%(devices)s
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
"""

DEVICES = """\
    publish: ["devices/{device}/#", "sensors/{device}/#"]
    reported:
      - topic: sensors/{device}/climate
        state: {temperature: temperature}
"""


class Node:
    """One Headwater on a thread (see the module docstring)."""

    def __init__(self, root: Path, mesh: str, started: list[Node]) -> None:
        self.root = root
        self.mesh = mesh
        self.started = started
        started.append(self)
        (root / "mesh.yaml").write_text(mesh)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: Server | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the node did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options = UpOptions(
            files=[self.root / "mesh.yaml"],
            data_dir=self.root / "data",
            http_port=0,
            http_worker=False,
            durability="normal",
        )
        self.server = await start(options)
        try:
            self._ready.set()
            await self._stop.wait()
        finally:
            await stop(self.server)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.urls["http"]

    @property
    def port(self) -> int:
        assert self.server is not None
        url = self.server.urls["mqtt/default/mqtt"]
        return int(url.rsplit(":", 1)[1])

    @property
    def runtime(self) -> Any:
        assert self.server is not None
        return self.server.runtime

    def run(self, work: Awaitable[T] | Callable[[], T]) -> T:
        """Run a coroutine (or a function) on the node's loop and return its result."""
        assert self.loop is not None

        async def call() -> T:
            if callable(work):
                return work()
            return await work

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(TIMEOUT * 6)

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT * 14) as response:
                return response.status, orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, orjson.loads(exc.read())

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, answer = self.api(method, path, body, **kwargs)
        assert status < 300, (status, answer)
        return answer

    def events(self, type_: str | None = None) -> list[CloudEvent]:
        """Every event of the Broker `default` so far (of one type)."""

        async def read() -> list[CloudEvent]:
            runtime = self.runtime
            stream = runtime.broker("default", "default").stream
            info = await runtime.log.info(stream)
            out: list[CloudEvent] = []
            if info.events == 0:
                return out
            reader = runtime.log.reader(stream, f"test-{id(out)}", EARLIEST)
            try:
                while len(out) < info.events:
                    batch = await reader.next_batch(1000, timeout=0.5)
                    if not batch:
                        break
                    out.extend(entry.event for entry in batch)
            finally:
                await reader.close()
                await runtime.log.delete_consumer(stream, f"test-{id(out)}")
            return out

        found = self.run(read())
        return [e for e in found if type_ is None or e.type == type_]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._thread.is_alive():
            raise RuntimeError("the node did not stop")

    def restart(self) -> Node:
        """Stop, and start a new node on the same data directory."""
        close_all()
        self.stop()
        return Node(self.root, self.mesh, self.started)


MakeNode = Callable[..., Node]


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[MakeNode]:
    nodes: list[Node] = []

    def make(devices: str = DEVICES, *, extra: str = "") -> Node:
        directory = tmp_path / f"node{len(nodes)}"
        directory.mkdir()
        return Node(directory, MESH % {"devices": devices} + extra, nodes)

    yield make
    close_all()
    for node in nodes:
        node.stop()


@pytest.fixture
def node(make_node: MakeNode) -> Node:
    return make_node()


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_all()
