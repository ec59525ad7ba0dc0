"""The device plane: the registry's side of one embedded MQTT broker, and its topics.

How this works: an MqttBrokerSource with ``devices`` turned on runs a
:class:`DevicePlane` beside its broker (it is the source's
:class:`~headwater.sources.mqttbroker.DeviceHooks`). The plane authenticates
CONNECTs against the registry (:mod:`headwater.devices.access`), keeps
presence from connects and disconnects, and speaks the device topics, which
are the same for every device ``{id}`` (a namespace is one broker's devices):

=========================================  ===========  ======================================
topic                                      who          what
=========================================  ===========  ======================================
``devices/{id}/twin/reported``             device       a JSON merge patch of its reported
                                                        state (QoS 1: acknowledged once stored)
``devices/{id}/twin/delta``                Headwater    retained: ``{"version", "state",
                                                        "timestamp"}``, what desired asks that
                                                        reported does not show (``{}``: in sync)
``devices/{id}/twin/get``                  device       ask for the whole twin (any payload)
``devices/{id}/twin/document``             Headwater    the answer: ``{"desired", "reported",
                                                        "delta"}`` (to the Response Topic on 5.0)
``devices/{id}/commands/{cid}``            Headwater    a command; MQTT 5: Response Topic
                                                        ``devices/{id}/responses/{cid}``,
                                                        Correlation Data ``{cid}``, Message
                                                        Expiry Interval = what is left of it
``devices/{id}/responses/{cid}[/{code}]``  device       the answer (any payload); ``code``
                                                        (or MQTT 5 user property ``code``):
                                                        HTTP-like, >= 400 means it failed
=========================================  ===========  ======================================

MQTT 3.1.1 has no Response Topic or Correlation Data, so the request id is in
the topic: a device subscribes to ``devices/{id}/commands/+`` and answers on
``devices/{id}/responses/{cid}``; an MQTT 5 device may do exactly the same,
or use the properties (which point there). A device is sent commands once it
has subscribed to a filter that covers its command topic (at once on
reconnecting with a session that has one). The reported state can also come
from telemetry: a ``reported`` mapping names topics (``sensors/{device}/climate``)
and JMESPath expressions whose values are merged into the device's reported
state, at most once per :data:`REPORTED_INTERVAL` per device.

The plane takes the publishes on its topics from the source (they do not
become telemetry events); the registry's events (``dev.headwater.twin.updated``,
``dev.headwater.command.*``) go to the source's sink, as its device events do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
from jmespath.parser import ParsedResult

from headwater.cloudevents import CloudEvent
from headwater.devices.access import RegistryAuthenticator
from headwater.devices.commands import Command
from headwater.devices.model import DeviceError, InvalidDevice
from headwater.devices.presence import Connection, PresenceRecord
from headwater.devices.twins import InvalidTwin, Twin, TwinTooLarge
from headwater.logs import Throttle
from headwater.mqtt.auth import Acl
from headwater.mqtt.broker import MqttBroker
from headwater.mqtt.config import ClientInfo, Hooked, Outcome, Refusal
from headwater.mqtt.packets import ProtocolVersion, ReasonCode
from headwater.mqtt.session import Message, Subscription
from headwater.mqtt.topics import topic_matches
from headwater.sources.mapping import TopicPattern
from headwater.state import StateError

if TYPE_CHECKING:
    from headwater.devices.service import Devices

__all__ = ["REPORTED_INTERVAL", "DevicePlane", "ReportedMapping"]

log = logging.getLogger(__name__)

REPORTED_INTERVAL: Final = 1.0
"""Seconds between two changes of a device's reported state from its telemetry:
a sensor publishing ten readings a second costs its twin one write a second."""

EVENT_TIMEOUT: Final = 10.0
"""Seconds an event of the registry waits for its append (as device events)."""

_CACHE_MAX: Final = 10_000

Emit = Callable[[CloudEvent], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class ReportedMapping:
    """Telemetry that updates reported state: a topic pattern with ``{device}``
    and ``state member -> JMESPath`` over the JSON payload."""

    pattern: TopicPattern
    fields: tuple[tuple[str, ParsedResult], ...]


class DevicePlane:
    """The device side of one MqttBrokerSource (see the module docstring)."""

    def __init__(
        self,
        devices: Devices,
        namespace: str,
        name: str,
        acl: Acl,
        *,
        provisioning: Any = None,
        reported: Sequence[ReportedMapping] = (),
        emit: Emit | None = None,
    ) -> None:
        self.devices = devices
        self.namespace = namespace
        self.name = name
        self.authenticator = RegistryAuthenticator(devices.registry, namespace, acl, provisioning)
        self.reported = tuple(reported)
        self.emit = emit
        self.broker: MqttBroker | None = None
        self.throttle = Throttle(log)
        self._user_prefix = f"device:{namespace}/"
        self._topics: dict[str, tuple[str, str, str | None] | None] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reported_pending: dict[str, dict[str, Any]] = {}
        self._reported_task: asyncio.Task[None] | None = None
        self.events_failed = 0
        self.refused = 0
        #: What records a connection that ended with the mesh node that held it
        #: (the MqttBrokerSource's ``disconnected`` event): ``on_lost(info, extra)``.
        self.on_lost: Callable[[ClientInfo, tuple[dict[str, Any], Any]], object] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, broker: MqttBroker) -> None:
        self.broker = broker

    async def start(self) -> None:
        """Join the registry and publish every twin's delta (retained) for the devices."""
        devices = self.devices
        await devices.start()
        devices.attach(self)
        # Every device's delta is retained from the start (an empty one: in sync),
        # whatever this broker's retained store kept.
        twins = {(t.namespace, t.device): t for t in await devices.twins.all()}
        for device in devices.registry.find(self.namespace):
            key = (self.namespace, device.id)
            self.publish_delta(twins.get(key) or Twin(self.namespace, device.id))
        if self.reported:
            self._reported_task = asyncio.create_task(
                self._report_loop(), name=f"devices:reported:{self.name}"
            )

    async def stop(self) -> None:
        self.devices.detach(self)
        tasks = list(self._tasks)
        if self._reported_task is not None:
            tasks.append(self._reported_task)
            self._reported_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in a task the plane owns (cancelled at stop)."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            if isinstance(exc, StateError):
                self.throttle.warning("task-state", "device plane %s: %s", self.name, exc)
            else:
                log.error("device plane %s: a task failed", self.name, exc_info=exc)

    def _device(self, info: ClientInfo) -> str | None:
        user = info.user
        if user.startswith(self._user_prefix):
            return user[len(self._user_prefix) :]
        return None

    # -- connections -------------------------------------------------------------------------

    def connected(self, info: ClientInfo) -> tuple[dict[str, Any], Any] | None:
        device_id = self._device(info)
        if device_id is None:
            return None
        devices = self.devices
        connection = Connection(info, self, devices.new_token())
        credential = self.authenticator.used.pop(info.user, None)
        devices.presence.connected(
            self.namespace,
            device_id,
            connection,
            address=info.peer,
            protocol=info.protocol_version.label,
            client_id=info.client_id,
            listener=info.listener,
            broker=self.name,
            credential=credential,
        )
        broker = self.broker
        session = broker.sessions.get(info.client_id) if broker is not None else None
        if session is not None and self._covers_commands(device_id, session.subscriptions.values()):
            connection.ready = True  # a resumed session that has its subscription
            self.spawn(devices.commands.deliver(self.namespace, device_id))
        return self._event_extra(device_id, info)

    def disconnected(self, info: ClientInfo) -> tuple[dict[str, Any], Any] | None:
        device_id = self._device(info)
        if device_id is None:
            return None
        self.devices.presence.disconnected(self.namespace, device_id, info)
        return self._event_extra(device_id, info)

    def lost(self, device_id: str, record: PresenceRecord) -> None:
        """The connection ``record`` describes ended with the mesh node that held it
        (it died): the event its disconnect hook would have recorded, from the record."""
        if self.on_lost is None:
            return
        device = self.devices.registry.get(self.namespace, device_id)
        info = ClientInfo(
            record.client_id or device_id,
            None,  # the MQTT username is not in the record
            ProtocolVersion.from_label(record.protocol),
            record.listener or "",
            record.address or "",
            f"{self._user_prefix}{device_id}",
            dict(device.labels) if device is not None else {},
        )
        self.on_lost(info, self._event_extra(device_id, info))

    def _event_extra(self, device_id: str, info: ClientInfo) -> tuple[dict[str, Any], Any]:
        return {"device": device_id}, {
            "device": device_id,
            "namespace": self.namespace,
            "labels": dict(info.labels),
            "clientId": info.client_id,
            "address": info.peer,
        }

    @staticmethod
    def _covers_commands(device_id: str, subscriptions: Any) -> bool:
        probe = f"devices/{device_id}/commands/0"
        return any(topic_matches(sub.match_filter, probe) for sub in subscriptions)

    def subscribed(self, info: ClientInfo, subscriptions: Sequence[Subscription]) -> None:
        device_id = self._device(info)
        if device_id is None:
            return
        connection = self.devices.presence.connection(self.namespace, device_id)
        if connection is None or connection.info is not info or connection.ready:
            return
        if self._covers_commands(device_id, subscriptions):
            connection.ready = True
            self.spawn(self.devices.commands.deliver(self.namespace, device_id))

    def disconnect(self, user: str) -> int:
        return self.broker.disconnect(user=user) if self.broker is not None else 0

    # -- publishes from devices ----------------------------------------------------------------

    def _parse(self, topic: str) -> tuple[str, str, str | None] | None:
        """(device, what, argument) of a plane topic, or None: what the plane takes.

        ``what``: ``reported``, ``get``, or ``response`` (argument: ``cid`` or ``cid/code``).
        """
        if not topic.startswith("devices/"):
            return None
        levels = topic.split("/")
        if len(levels) == 4 and levels[2] == "twin" and levels[3] in ("reported", "get"):
            return levels[1], levels[3], None
        if levels[2:3] == ["responses"] and len(levels) in (4, 5) and levels[3]:
            return levels[1], "response", "/".join(levels[3:])
        return None

    def selects(self, topic: str) -> bool:
        found = self._topics.get(topic, False)
        if found is False:
            if len(self._topics) >= _CACHE_MAX:
                self._topics.clear()
            found = self._topics[topic] = self._parse(topic)
        return found is not None

    async def __call__(self, info: ClientInfo, batch: Sequence[Hooked]) -> list[Outcome]:
        # One at a time, in order: a device's answers and reports take effect as sent.
        return [await self._one(info, item.message) for item in batch]

    async def _one(self, info: ClientInfo, message: Message) -> Outcome:
        parsed = self._parse(message.topic)
        if parsed is None:
            return None
        device_id, what, argument = parsed
        if self._device(info) != device_id:
            # Only the device itself reports its state or answers its commands.
            self.refused += 1
            self.throttle.warning(
                ("not-the-device", what),
                "device plane %s: %s (user %s) may not publish to %r",
                self.name,
                info.client_id,
                info.user,
                message.topic,
            )
            return Refusal(ReasonCode.NOT_AUTHORIZED)
        try:
            if what == "reported":
                return await self._reported(device_id, message)
            if what == "get":
                await self._get(device_id, message)
                return None
            assert argument is not None
            return await self._response(device_id, argument, message)
        except StateError as exc:
            self.throttle.warning(
                "state",
                "device plane %s: %s from %s not stored: %s",
                self.name,
                what,
                device_id,
                exc,
            )
            return ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR  # for now: the device sends it again

    async def _reported(self, device_id: str, message: Message) -> Outcome:
        try:
            patch = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            patch = None
        if not isinstance(patch, dict):
            self.refused += 1
            self.throttle.warning(
                "reported-json",
                "device plane %s: %s reported state that is not a JSON object",
                self.name,
                device_id,
            )
            return Refusal(ReasonCode.PAYLOAD_FORMAT_INVALID)
        try:
            await self.devices.report(self.namespace, device_id, patch)
        except TwinTooLarge as exc:
            self.refused += 1
            self.throttle.warning(
                "reported-size", "device plane %s: %s: %s", self.name, device_id, exc
            )
            return Refusal(ReasonCode.QUOTA_EXCEEDED)
        except InvalidTwin as exc:
            self.refused += 1
            self.throttle.warning(
                "reported-bad", "device plane %s: %s: %s", self.name, device_id, exc
            )
            return Refusal(ReasonCode.PAYLOAD_FORMAT_INVALID)
        return None

    async def _get(self, device_id: str, message: Message) -> None:
        twin = await self.devices.twins.get(self.namespace, device_id)
        topic = message.response_topic or f"devices/{device_id}/twin/document"
        self._publish(
            Message(
                topic,
                orjson.dumps(twin.document()),
                1,
                False,
                content_type="application/json",
                correlation_data=message.correlation_data,
            )
        )

    async def _response(self, device_id: str, argument: str, message: Message) -> Outcome:
        command_id, _, code_text = argument.partition("/")
        code_text = code_text or dict(message.user_properties).get("code", "")
        code: int | None = None
        if code_text:
            if not (code_text.isascii() and code_text.isdigit() and 100 <= int(code_text) <= 599):
                self.refused += 1
                return Refusal(ReasonCode.TOPIC_NAME_INVALID)
            code = int(code_text)
        found = await self.devices.commands.answer(
            self.namespace, device_id, command_id, message.payload, message.content_type, code
        )
        if not found:
            log.debug("device plane %s: answer to unknown command %s", self.name, command_id)
        return None

    # -- publishing to devices -----------------------------------------------------------------

    def _publish(self, message: Message) -> None:
        if self.broker is not None:
            self.broker.route(message)

    def send_command(self, command: Command, now: float) -> None:
        topic = f"devices/{command.device}/commands/{command.id}"
        self._publish(
            Message(
                topic,
                command.data,
                1,
                False,
                None,
                command.expires,  # MQTT 5 Message Expiry Interval: what is left of it
                command.content_type,
                f"devices/{command.device}/responses/{command.id}",
                command.id.encode("ascii"),
            )
        )

    def publish_delta(self, twin: Twin) -> None:
        self._publish(
            Message(
                f"devices/{twin.device}/twin/delta",
                orjson.dumps(twin.delta_message()),
                1,
                True,
                content_type="application/json",
            )
        )

    def clear_delta(self, device_id: str) -> None:
        """The device is gone: its retained delta goes too (an empty retained message)."""
        self._publish(Message(f"devices/{device_id}/twin/delta", b"", 1, True))

    async def record(self, event: CloudEvent) -> None:
        """An event of the registry to the source's sink, best effort (as device events)."""
        if self.emit is None:
            return
        try:
            async with asyncio.timeout(EVENT_TIMEOUT):
                await self.emit(event)
        except Exception as exc:
            self.events_failed += 1
            self.throttle.warning(
                "event-failed",
                "device plane %s: %s event not recorded: %s",
                self.name,
                event.type,
                exc,
            )

    # -- reported state from telemetry ---------------------------------------------------------

    def tap(
        self, emit_many: Callable[[Sequence[CloudEvent]], Awaitable[object]]
    ) -> Callable[[Sequence[CloudEvent]], Awaitable[object]]:
        """``emit_many`` that also feeds the ``reported`` mappings, once appended."""
        if not self.reported:
            return emit_many

        async def tapped(events: Sequence[CloudEvent]) -> object:
            result = await emit_many(events)
            for event in events:
                self._from_telemetry(event)
            return result

        return tapped

    def _from_telemetry(self, event: CloudEvent) -> None:
        topic = event.get("mqtttopic")
        if not isinstance(topic, str):
            return
        for mapping in self.reported:
            captures = mapping.pattern.match(topic)
            if captures is None:
                continue
            device_id = captures.get("device")
            if not device_id or self.devices.registry.get(self.namespace, device_id) is None:
                continue
            data = event.data
            try:
                document = orjson.loads(data) if isinstance(data, bytes | str) else data
            except orjson.JSONDecodeError:
                continue
            patch = {}
            for name, expression in mapping.fields:
                try:
                    value = expression.search(document)
                except Exception:  # a JMESPath runtime error on an odd payload
                    value = None
                if value is not None:
                    patch[name] = value
            if patch:
                pending = self._reported_pending.setdefault(device_id, {})
                pending.update(patch)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(REPORTED_INTERVAL)
            pending, self._reported_pending = self._reported_pending, {}
            for device_id, patch in pending.items():
                try:
                    await self.devices.report(self.namespace, device_id, patch)
                except (InvalidDevice, DeviceError) as exc:
                    self.throttle.warning(
                        "reported-telemetry", "device plane %s: %s: %s", self.name, device_id, exc
                    )
                except StateError as exc:
                    self.throttle.warning("reported-state", "device plane %s: %s", self.name, exc)

    def status(self) -> Mapping[str, int]:
        return {
            "devicesProvisioned": self.authenticator.provisioned,
            "devicesRefused": self.authenticator.refused,
            "devicePublishesRefused": self.refused,
            "deviceEventsNotRecorded": self.events_failed,
        }
