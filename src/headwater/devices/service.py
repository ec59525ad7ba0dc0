"""Devices: the registry, presence, twins and commands of one Headwater, as one service.

How this works: the runtime owns one :class:`Devices` over its state store;
the admin API, the CLI (through the API), the ``Device`` resource kind and
every MqttBrokerSource's :class:`~headwater.devices.plane.DevicePlane` use it.
It starts on first use (reading the registry, presence and the command
queue back from the store) and ties the parts together:

* a device deleted from the registry is cut off, its unfinished commands
  fail, its twin, presence and retained delta go; a device disabled, or
  whose credential in use was removed, is cut off at once (DISCONNECT 0x87
  for MQTT 5), on whichever broker it is connected to;
* a change of the desired state publishes the device's new delta on the
  brokers of its namespace, and every twin change and finished command is
  recorded as an event on the sink of a device plane of that namespace (the
  first that started): with no MqttBrokerSource of the namespace running the
  registry, the change is stored and the event is not recorded (counted in
  ``eventsNotRecorded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from headwater.devices.commands import Command, Commands
from headwater.devices.events import command_event, twin_event
from headwater.devices.model import Device
from headwater.devices.presence import Presence, PresenceRecord
from headwater.devices.registry import Registry
from headwater.devices.twins import Twin, TwinChange, Twins
from headwater.logs import Throttle
from headwater.state import StateError, StateStore

if TYPE_CHECKING:
    from headwater.cloudevents import CloudEvent
    from headwater.devices.plane import DevicePlane

__all__ = ["Devices"]

log = logging.getLogger(__name__)


class Devices:
    """The device registry and what hangs off it (see the module docstring)."""

    def __init__(
        self,
        state: StateStore,
        *,
        clock: Callable[[], float] = time.time,
        node: str | None = None,
        live_nodes: Callable[[], Awaitable[set[str]]] | None = None,
    ) -> None:
        self.registry = Registry(state, clock=clock)
        #: ``node``: this node's name in a mesh (presence follows the other nodes',
        #: and ends what ``live_nodes`` says are the connections of dead nodes).
        self.presence = Presence(state, clock=clock, node=node, live_nodes=live_nodes)
        self.twins = Twins(state, clock=clock)
        self.commands = Commands(state, self.presence, clock=clock)
        self.commands.on_finished = self._command_finished
        self.registry.on_change(self._device_changed)
        self.presence.on_node_gone(self._connection_lost)
        self._planes: dict[str, list[DevicePlane]] = {}
        self._boot = secrets.token_hex(4)
        self._connections = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._lock = asyncio.Lock()
        self.throttle = Throttle(log)
        self.events_not_recorded = 0

    async def start(self) -> None:
        """Read everything back from the store (once; later calls return at once)."""
        if self._started:
            return
        async with self._lock:
            if self._started:
                return
            await self.registry.start()
            await self.presence.start()
            await self.twins.start()
            await self.commands.start()
            self._started = True

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.commands.close()
        await self.presence.close()
        await self.registry.close()

    def new_token(self) -> str:
        """A connection's token: unique across connections and process runs."""
        return f"{self._boot}-{next(self._connections)}"

    # -- planes ------------------------------------------------------------------------

    def attach(self, plane: DevicePlane) -> None:
        self._planes.setdefault(plane.namespace, []).append(plane)

    def detach(self, plane: DevicePlane) -> None:
        planes = self._planes.get(plane.namespace, [])
        if plane in planes:
            planes.remove(plane)

    def planes(self, namespace: str) -> list[DevicePlane]:
        return list(self._planes.get(namespace, ()))

    def _connection_lost(self, namespace: str, device_id: str, record: PresenceRecord) -> None:
        """A device's connection ended with the mesh node that held it: the plane of
        the same MqttBrokerSource here says so (its ``disconnected`` event)."""
        for plane in self._planes.get(namespace, ()):
            if plane.name == record.broker:
                plane.lost(device_id, record)
                return

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("devices: background work failed", exc_info=exc)

        task.add_done_callback(done)

    async def record(self, namespace: str, event: CloudEvent) -> None:
        planes = self._planes.get(namespace)
        if not planes:
            self.events_not_recorded += 1
            self.throttle.warning(
                ("no-plane", namespace),
                "devices: %s for %s not recorded: no MqttBrokerSource with devices runs in "
                "namespace %s",
                event.type,
                event.subject,
                namespace,
            )
            return
        await planes[0].record(event)

    # -- what follows a change of the registry -------------------------------------------

    def _device_changed(self, old: Device | None, new: Device | None) -> None:
        if old is None:
            if new is not None:
                # A new device: its (empty) delta is there for it from the start,
                # so that it knows it is in sync when it subscribes.
                for plane in self.planes(new.namespace):
                    plane.publish_delta(Twin(new.namespace, new.id))
            return
        namespace, device_id = old.namespace, old.id
        cut = False
        why = ""
        if new is None:
            cut, why = True, "deleted"
            self.presence.forget(namespace, device_id)
            self._spawn(self._deleted(namespace, device_id))
        elif old.enabled and not new.enabled:
            cut, why = True, "disabled"
        else:
            record = self.presence.get(namespace, device_id)
            kept = {c.id for c in new.credentials}
            if (
                self.presence.online(namespace, device_id)
                and record is not None
                and record.credential is not None
                and record.credential not in kept
            ):
                cut, why = True, f"credential {record.credential} removed"
        if cut:
            for plane in self.planes(namespace):
                if plane.disconnect(old.user):
                    log.info("device %s/%s cut off: %s", namespace, device_id, why)

    async def _deleted(self, namespace: str, device_id: str) -> None:
        await self.commands.fail_device(namespace, device_id, "the device was deleted")
        with contextlib.suppress(StateError):
            await self.twins.delete(namespace, device_id)
        for plane in self.planes(namespace):
            plane.clear_delta(device_id)

    # -- twins ------------------------------------------------------------------------------

    async def set_desired(
        self,
        namespace: str,
        device_id: str,
        state: Any,
        *,
        merge: bool = True,
        version: int | None = None,
    ) -> TwinChange:
        await self.start()
        self.registry.require(namespace, device_id)
        change = await self.twins.set_desired(
            namespace, device_id, state, merge=merge, version=version
        )
        await self._twin_changed(change)
        return change

    async def report(self, namespace: str, device_id: str, patch: Mapping[str, Any]) -> TwinChange:
        change = await self.twins.report(namespace, device_id, patch)
        await self._twin_changed(change)
        return change

    async def _twin_changed(self, change: TwinChange) -> None:
        if not change.changed:
            return
        after = change.after
        if change.before.delta() != after.delta() or change.side == "desired":
            for plane in self.planes(after.namespace):
                plane.publish_delta(after)
        await self.record(after.namespace, twin_event(change))

    async def twin(self, namespace: str, device_id: str) -> Twin:
        await self.start()
        self.registry.require(namespace, device_id)
        return await self.twins.get(namespace, device_id)

    # -- commands ---------------------------------------------------------------------------

    async def command(
        self,
        namespace: str,
        device_id: str,
        data: bytes,
        content_type: str | None,
        *,
        expiry: float,
        origin: str | None = None,
        command_id: str | None = None,
        correlation: str | None = None,
    ) -> Command:
        await self.start()
        self.registry.require(namespace, device_id)
        return await self.commands.create(
            namespace,
            device_id,
            data,
            content_type,
            expiry=expiry,
            origin=origin,
            command_id=command_id,
            correlation=correlation,
        )

    def _command_finished(self, command: Command) -> None:
        self._spawn(self.record(command.namespace, command_event(command)))

    # -- views --------------------------------------------------------------------------------

    def view(self, device: Device) -> dict[str, Any]:
        """A device as the API shows it: the registry's record and its presence."""
        out = device.public_json()
        record = self.presence.get(device.namespace, device.id)
        out["presence"] = (
            record.to_json() if record is not None else {"online": False, "lastSeen": None}
        )
        out["presence"]["online"] = self.presence.online(device.namespace, device.id)
        return out

    def find(
        self,
        namespace: str | None,
        *,
        online: bool | None = None,
        selector: Any = None,
    ) -> Sequence[Device]:
        devices = self.registry.find(namespace, selector)
        if online is None:
            return devices
        return [d for d in devices if self.presence.online(d.namespace, d.id) == online]

    def status(self) -> dict[str, int]:
        return {
            "devices": self.registry.count(),
            "online": self.presence.online_count(),
            "commandsPending": self.commands.pending_count(),
            "commandsSent": self.commands.sent,
            "commandsAnswered": self.commands.answered,
            "commandsExpired": self.commands.expired,
            "commandsFailed": self.commands.failed,
            "eventsNotRecorded": self.events_not_recorded,
        }
