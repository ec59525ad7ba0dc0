"""The running mesh: the reconciler plus the components each kind becomes.

How this works: ``Runtime`` owns the event log, the reconciler and one
builder per kind. Addressable components (Brokers, Channels, sinks) expose a
``sink`` that Destinations resolve to, so a PingSource, a Trigger or a dead
letter route reaches an in-process receiver without a socket; a ``uri``
Destination resolves to a pooled HTTP sink.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

from headwater.cloudevents import CloudEvent
from headwater.resources import (
    ConfigError,
    Destination,
    EventDisplay,
    Loaded,
    PingSource,
    Problem,
    Resource,
    load_text,
)
from headwater.runtime.reconciler import ApplyResult, Builder, Component, Key, Reconciler
from headwater.sinks import EventDisplaySink
from headwater.sources import PingSchedule, PingSourceRunner

log = logging.getLogger(__name__)


class Sink(Protocol):
    async def deliver(self, event: CloudEvent) -> CloudEvent | None: ...


class Addressable(Protocol):
    """A component that can receive events through a Destination's ``ref``."""

    @property
    def sink(self) -> Sink: ...


class UnresolvedDestination(LookupError):
    """A Destination's ref names a resource that is not running."""


class EventDisplayComponent:
    def __init__(self, resource: EventDisplay) -> None:
        self._sink = EventDisplaySink(resource.spec.format)
        self._format = resource.spec.format
        self.received = 0

    @property
    def sink(self) -> Sink:
        return self

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        self.received += 1
        return await self._sink.deliver(event)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._sink.close()

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {"received": self.received}


class PingSourceComponent:
    def __init__(self, runtime: Runtime, resource: PingSource) -> None:
        spec = resource.spec
        data: bytes | None = None
        if spec.data is not None:
            data = spec.data.encode()
        elif spec.data_base64 is not None:
            data = base64.b64decode(spec.data_base64)
        self._runtime = runtime
        self._namespace = resource.namespace
        self._destination = spec.sink
        self.runner = PingSourceRunner(
            namespace=resource.namespace,
            name=resource.name,
            schedule=PingSchedule(spec.schedule, spec.timezone),
            emit=self._emit,
            data=data,
            content_type=spec.content_type,
            extensions=spec.ce_overrides.extensions if spec.ce_overrides else None,
        )
        self._task: asyncio.Task[None] | None = None

    async def _emit(self, event: CloudEvent) -> None:
        sink = self._runtime.resolve(self._destination, self._namespace)
        await sink.deliver(event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self.runner.run(), name=f"pingsource:{self.runner.source}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def update(self, resource: Resource) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        r = self.runner
        return {"sent": r.sent, "failed": r.failed, "lastError": r.last_error}


class Runtime:
    """Headwater's running state; the admin API and ``headwater up`` drive it."""

    def __init__(self) -> None:
        self.started = time.time()
        self.listeners: dict[str, str] = {}
        builders: dict[str, Builder] = {
            "EventDisplay": self._build_event_display,
            "PingSource": self._build_ping_source,
        }
        self.reconciler = Reconciler(builders)

    # -- builders -------------------------------------------------------------

    async def _build_event_display(self, resource: Resource) -> Component:
        assert isinstance(resource, EventDisplay)
        return EventDisplayComponent(resource)

    async def _build_ping_source(self, resource: Resource) -> Component:
        assert isinstance(resource, PingSource)
        return PingSourceComponent(self, resource)

    # -- destinations ---------------------------------------------------------

    def resolve(self, destination: Destination, namespace: str) -> Sink:
        """The sink a Destination points at, in-process for a ``ref``."""
        ref = destination.ref
        if ref is not None:
            key = (ref.kind, ref.namespace or namespace, ref.name)
            component = self.reconciler.component(key)
            sink = getattr(component, "sink", None)
            if sink is None:
                raise UnresolvedDestination(f"{ref.kind} {key[1]}/{key[2]} is not ready")
            return sink  # type: ignore[no-any-return]
        raise UnresolvedDestination(f"cannot deliver to {destination.uri!r} yet")

    # -- the API's view ---------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"uptimeSeconds": round(time.time() - self.started, 3), "listeners": self.listeners}

    def resources(self, kind: str | None = None) -> list[Resource]:
        return self.reconciler.resources(kind)

    def get(self, key: Key) -> Resource | None:
        return self.reconciler.get(key)

    def status(self, key: Key) -> dict[str, Any]:
        return self.reconciler.status(key)

    async def apply(self, loaded: Iterable[Loaded]) -> ApplyResult:
        return await self.reconciler.apply(loaded)

    async def apply_text(self, text: str, file: str) -> ApplyResult:
        loaded = load_text(text, file)
        if not loaded:
            raise ConfigError([Problem(file, None, "no resources in the request")])
        return await self.reconciler.apply(loaded)

    async def delete(self, keys: Iterable[Key]) -> ApplyResult:
        return await self.reconciler.delete(keys)

    async def close(self) -> None:
        await self.reconciler.close()
