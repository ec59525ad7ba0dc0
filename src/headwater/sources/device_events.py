"""Device events: ``dev.headwater.device.connected`` / ``...disconnected``, appended in batches.

How this works: the embedded broker awaits its connect hook after the CONNACK
and before it takes the connection's next packets, so a device's
``connected`` event is in the log before anything it publishes.
:meth:`DeviceEvents.record` builds the event and returns a future that is done
once the event is appended. The events of :data:`WINDOW` share one
``emit_many`` call (for a Broker: one durable append, one SQLite
transaction): a reconnect storm of 10,000 devices is some hundreds of appends,
not 10,000.

A storm makes thousands of these events a second, so each costs as little as
the publish path's (:mod:`headwater.sources.mapping`):

* the attributes that depend only on the listener (``specversion``,
  ``source``, what the sink would stamp on, such as a Broker's TTL) are
  validated once per listener and copied; of the rest, only the client id,
  the username and what the device plane adds come from outside, and only
  they are checked, value by value (the id, the type, the time and the
  protocol are valid by construction);
* one deadline per batch, on the append, not one timer per event: a waiter
  awaits a plain future of its own (its cancellation, when its connection
  closes, touches nothing else), resolved by the batch in one pass;
* a failed append is counted and logged (with the throttle) for each of its
  events by the batch itself; the waiters are released either way (best
  effort: there is nothing to refuse a device for a failed event).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import orjson

from headwater.cloudevents import CloudEvent
from headwater.cloudevents._types import (
    check_attribute_name,
    check_extension_value,
    check_string,
)
from headwater.logs import Throttle
from headwater.mqtt.config import ClientInfo
from headwater.sources.mapping import IdSequence, timestamp

__all__ = [
    "CONNECTED_TYPE",
    "DISCONNECTED_TYPE",
    "WINDOW",
    "DeviceEvent",
    "DeviceEvents",
    "listener_host",
]

CONNECTED_TYPE: Final = "dev.headwater.device.connected"
DISCONNECTED_TYPE: Final = "dev.headwater.device.disconnected"

WINDOW: Final = 0.002
"""Seconds device events gather before they are appended together. A connect's
CONNACK is out before its event; 2 ms later its next packets are taken (they
wait for the event). In a reconnect storm it makes batches of dozens of events
instead of one each (a durable append has a fixed cost that a batch shares)."""

DeviceEvent = tuple[dict[str, Any], Any]
"""What a device plane adds to a device event: extension attributes, and the data."""

EmitMany = Callable[[Sequence[CloudEvent]], Awaitable[object]]


class _Batch:
    """The events of one window and the futures of those waiting for them."""

    __slots__ = ("events", "waiters")

    def __init__(self) -> None:
        self.events: list[CloudEvent] = []
        self.waiters: list[asyncio.Future[None]] = []


class DeviceEvents:
    """Builds device events and appends them through ``emit_many``, a window at a time."""

    def __init__(
        self,
        emit_many: EmitMany,
        ids: IdSequence,
        *,
        stamped: Sequence[tuple[str, Any]] = (),
        append_timeout: float,
        name: str,
        on_failure: Callable[[int], None],
        throttle: Throttle,
    ) -> None:
        self.emit_many = emit_many
        self.ids = ids
        self.stamped = tuple(stamped)
        self.append_timeout = append_timeout
        self.name = name
        self.on_failure = on_failure
        self.throttle = throttle
        self._bases: dict[str, dict[str, Any]] = {}
        self._names: set[str] = set()  # extension names a device plane gave, checked
        self._batch: _Batch | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def record(
        self, info: ClientInfo, event_type: str, extra: DeviceEvent | None = None
    ) -> asyncio.Future[None]:
        """A future done once the event is appended, or its append failed (and was
        counted and logged); an event that cannot be built is counted and logged
        at once."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        try:
            event = self.build(info, event_type, extra)
        except Exception as exc:
            self._failed(event_type, info.client_id, exc)
            waiter.set_result(None)
            return waiter
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_later(WINDOW, self._flush)
        batch.events.append(event)
        batch.waiters.append(waiter)
        return waiter

    def build(self, info: ClientInfo, event_type: str, extra: DeviceEvent | None) -> CloudEvent:
        """The event; raises :class:`~headwater.cloudevents.InvalidEvent` for a client id,
        username or device attribute that no CloudEvent can carry."""
        listener = info.listener
        base = self._bases.get(listener)
        if base is None:
            base = self._bases[listener] = self._base(listener)
        client_id = info.client_id
        attributes = base.copy()
        attributes["id"] = self.ids.next()
        attributes["type"] = event_type
        attributes["subject"] = client_id
        attributes["time"] = timestamp(time.time())
        attributes["mqttclientid"] = client_id
        attributes["mqttprotocol"] = info.protocol_version.label
        # Printable ASCII (the common client id) is a valid String; the rest is checked.
        if not (client_id.isascii() and client_id.isprintable()):
            check_string("subject", client_id)
        username = info.username
        if username is not None:
            if not (username.isascii() and username.isprintable()):
                check_string("mqttusername", username)
            attributes["mqttusername"] = username
        data: bytes | None = None
        if extra is not None:
            extensions, body = extra
            names = self._names
            for key, value in extensions.items():
                if key not in names:
                    check_attribute_name(key)
                    names.add(key)
                if type(value) is not str or not (value.isascii() and value.isprintable()):
                    value = check_extension_value(key, value)
                attributes[key] = value
            attributes["datacontenttype"] = "application/json"
            data = orjson.dumps(body)
        return CloudEvent._trusted(attributes, data)

    def _base(self, listener: str) -> dict[str, Any]:
        """The attributes every device event of ``listener`` has, validated once."""
        attributes: dict[str, Any] = {
            "specversion": "1.0",
            "id": "-",
            "source": f"mqtt://{listener_host(listener)}",
            "type": CONNECTED_TYPE,
        }
        attributes.update(self.stamped)
        validated = CloudEvent(attributes).attributes
        return {k: v for k, v in validated.items() if k not in ("id", "type")}

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        task = asyncio.ensure_future(self._append(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _append(self, batch: _Batch) -> None:
        try:
            # One deadline for the batch (asyncio.timeout: no extra task).
            async with asyncio.timeout(self.append_timeout):
                await self.emit_many(batch.events)
        except Exception as exc:
            for event in batch.events:
                self._failed(event.type, str(event.get("subject")), exc)
        finally:
            for waiter in batch.waiters:
                if not waiter.done():  # a cancelled waiter: its connection is gone
                    waiter.set_result(None)

    def _failed(self, event_type: str, client_id: str, exc: Exception) -> None:
        self.on_failure(1)
        self.throttle.warning(
            ("device-event", event_type),
            "%s: %s event for %s failed: %s",
            self.name,
            event_type,
            client_id,
            exc,
        )


def listener_host(listener: str) -> str:
    """``mqtt://127.0.0.1:1883`` -> ``127.0.0.1:1883`` (a named listener stays as it is)."""
    return listener.partition("://")[2] or listener
