"""What the ``Device`` and ``DeviceSink`` kinds become when they run.

``Device``: an entry of the registry that the resource owns.

How this works: a Device component writes its device into the node's
registry (:class:`~headwater.devices.Devices`, the builders' context's
``devices``) as it starts or is updated,
marked as owned by the resource (``Device/{namespace}/{name}``), so that the
registry's API refuses to change it and says where it is defined. A
password given in clear (``${VAR}`` from the environment) is hashed with
scrypt; as long as it does not change, the stored hash is kept (checked
against it), so a restart writes nothing. Credential ids are kept for
credentials that did not change.

When the resource is deleted (``headwater delete``, or removed from a file
that ``--watch`` reloads) the reconciler tells the component it was
removed, and the device is deleted from the registry; a device whose
resource vanished while Headwater was not running (its file changed) is
deleted at the next start by :func:`remove_orphans`. Stopping the process
leaves the registry as it is.

An MqttBrokerSource with ``devices`` gets a
:class:`~headwater.devices.plane.DevicePlane` (:func:`device_plane`: its
ACL templates, auto-provisioning CA and reported-state mappings compiled
from the resource) and publishes the registry's gauges and the plane's
counters on ``/metrics`` (:func:`device_metric_families`).

``DeviceSink``: a sink whose deliveries queue commands (or change desired
state) of the registry's devices. The device is the event's ``device``
extension, else its ``subject``. A command's id is made from the event's
time, source and id, so a retried or redelivered event finds the command it
made the first time instead of making another. The delivery succeeds once
the command is queued (durably); what the device answers is recorded as a
``dev.headwater.command.*`` event. An unknown device or a bad event is a
400/404 (not retried: dead letter); too many commands waiting for the
device a 429 and a store that cannot write a 503 (retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import jmespath
import orjson
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from headwater.cloudevents import CloudEvent
from headwater.devices import DeviceError, Devices, InvalidDevice, TooManyCommands
from headwater.devices.access import Provisioning, build_acl
from headwater.devices.command_model import command_id_for
from headwater.devices.credentials import (
    credential_id,
    load_ca_certificates,
    normalise_fingerprint,
    normalise_subject,
    verify_chosen_password,
)
from headwater.devices.model import Credential, DeviceNotFound
from headwater.devices.plane import DevicePlane, ReportedMapping
from headwater.durations import parse_duration
from headwater.eventing import DeliveryError, Sink
from headwater.resources.devices import Device, DeviceCredential, DeviceSink, DevicesSpec
from headwater.resources.models import Resource
from headwater.runtime.context import Context, Kind, Stage
from headwater.sources.mapping import TopicPattern
from headwater.state import StateError

log = logging.getLogger(__name__)


def owner_key(resource: Resource) -> str:
    return f"Device/{resource.namespace}/{resource.name}"


class DeviceComponent:
    def __init__(self, context: Context, resource: Device) -> None:
        self.devices = context.devices
        self.resource = resource

    async def _credentials(self, resource: Device) -> list[Credential]:
        devices = self.devices
        current = devices.registry.get(resource.namespace, resource.device_id)
        existing = list(current.credentials) if current is not None else []
        now = devices.registry.clock()
        out: list[Credential] = []
        for spec in resource.spec.credentials:
            found = await _reuse(spec, existing)
            if found is not None:
                existing.remove(found)
                out.append(found)
            else:
                [made] = await devices.registry.build_credentials(
                    resource.device_id, [spec.spec()], now
                )
                taken = {c.id for c in out} | {c.id for c in existing}
                while made.id in taken:
                    made = replace(made, id=credential_id())
                out.append(made)
        return out

    async def _write(self, resource: Device) -> None:
        devices = self.devices
        await devices.start()
        await devices.registry.put_owned(
            resource.namespace,
            resource.device_id,
            labels=resource.metadata.labels,
            enabled=resource.spec.enabled,
            credentials=await self._credentials(resource),
            owner=owner_key(resource),
        )

    async def start(self) -> None:
        await self._write(self.resource)

    async def stop(self) -> None:
        return None  # the device stays registered: see removed()

    async def removed(self) -> None:
        """The resource was deleted: its device goes."""
        devices = self.devices
        with contextlib.suppress(DeviceNotFound):
            await devices.registry.delete(
                self.resource.namespace, self.resource.device_id, as_owner=True
            )

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, Device)
        if resource.device_id != self.resource.device_id:
            await self.removed()  # it names another device now: the old one goes
        await self._write(resource)
        self.resource = resource
        return True

    def status(self) -> dict[str, Any]:
        devices = self.devices
        presence = devices.presence.get(self.resource.namespace, self.resource.device_id)
        return {
            "device": self.resource.device_id,
            "online": devices.presence.online(self.resource.namespace, self.resource.device_id),
            "lastSeen": presence.last_seen if presence is not None else None,
        }


async def _reuse(spec: DeviceCredential, existing: list[Credential]) -> Credential | None:
    """The stored credential this spec describes, unchanged (None: make a new one)."""
    for credential in existing:
        if credential.type != spec.type:
            continue
        if spec.type == "x509":
            same_fingerprint = credential.fingerprint == (
                normalise_fingerprint(spec.fingerprint) if spec.fingerprint else None
            )
            same_subject = credential.subject == (
                normalise_subject(spec.subject) if spec.subject else None
            )
            if same_fingerprint and same_subject:
                return credential
        elif spec.hash is not None:
            if credential.hash == spec.hash:
                return credential
        elif credential.hash is not None and spec.password is not None:
            stored = credential.hash
            if await asyncio.to_thread(verify_chosen_password, spec.password.encode(), stored):
                return credential
    return None


async def remove_orphans(devices: Devices, defined_by: Iterable[Resource]) -> int:
    """Delete the devices whose Device resource (of ``defined_by``) is no longer defined."""
    await devices.registry.start()
    defined = {owner_key(r) for r in defined_by}
    removed = 0
    for device in devices.registry.find():
        if device.owner is not None and device.owner not in defined:
            log.warning(
                "device %s/%s was defined by %s, which is no longer defined: deleting it",
                device.namespace,
                device.id,
                device.owner,
            )
            try:
                await devices.registry.delete(device.namespace, device.id, as_owner=True)
            except DeviceNotFound:
                continue
            removed += 1
    return removed


def device_plane(
    devices: Devices, namespace: str, name: str, spec: DevicesSpec, sink: Sink
) -> DevicePlane:
    """The registry's side of an MqttBrokerSource with ``devices`` (headwater.devices.plane)."""
    provisioning = None
    if spec.provisioning is not None:
        path = Path(spec.provisioning.ca_file)
        try:
            authorities = load_ca_certificates(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"devices.provisioning.caFile {path}: {exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ValueError(f"devices.provisioning.caFile {path}: {exc}") from exc
        provisioning = Provisioning(
            tuple(authorities), spec.provisioning.id_from, dict(spec.provisioning.labels)
        )
    reported = [
        ReportedMapping(
            TopicPattern.parse(item.topic),
            tuple((key, jmespath.compile(path)) for key, path in item.state.items()),
        )
        for item in spec.reported
    ]
    return DevicePlane(
        devices,
        namespace,
        name,
        build_acl(spec.publish, spec.subscribe),
        provisioning=provisioning,
        reported=reported,
        emit=sink.deliver,
    )


def device_metric_families(
    plane: DevicePlane, devices: Devices, label_names: list[str], labels: list[str]
) -> list[Metric]:
    """The registry of the plane's namespace, and what the plane refused, for ``/metrics``."""
    namespace = plane.namespace
    online = sum(
        1 for d in devices.registry.find(namespace) if devices.presence.online(namespace, d.id)
    )
    families: list[Metric] = []
    for name, value, doc in (
        ("devices_registered", devices.registry.count(namespace), "Devices in the registry."),
        ("devices_online", online, "Registered devices connected now."),
        (
            "device_commands_pending",
            devices.commands.pending_count(namespace),
            "Commands queued or sent, not answered or expired yet.",
        ),
    ):
        gauge = GaugeMetricFamily(f"headwater_{name}", doc, labels=label_names)
        gauge.add_metric(labels, value)
        families.append(gauge)
    for name, value, doc in (
        ("devices_refused", plane.authenticator.refused, "Device CONNECTs refused."),
        ("devices_provisioned", plane.authenticator.provisioned, "Devices auto-provisioned."),
        ("device_publishes_refused", plane.refused, "Twin reports and answers refused."),
    ):
        counter = CounterMetricFamily(f"headwater_{name}", doc, labels=label_names)
        counter.add_metric(labels, value)
        families.append(counter)
    return families


class DeviceSinkComponent:
    def __init__(self, context: Context, resource: DeviceSink) -> None:
        self.devices = context.devices
        self.resource = resource
        self.sink: Sink = self
        self.commands = 0
        self.desired = 0

    @property
    def namespace(self) -> str:
        return self.resource.spec.namespace or self.resource.namespace

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        device = event.get("device") or event.subject
        if not isinstance(device, str) or not device:
            raise DeliveryError(
                400, False, reason="the event names no device (its `subject` or `device`)"
            )
        devices = self.devices
        try:
            if event.type == self.resource.spec.desired_type:
                try:
                    state = orjson.loads(event.data_bytes())
                except orjson.JSONDecodeError as exc:
                    raise InvalidDevice(f"the desired state is not JSON: {exc}") from exc
                await devices.set_desired(self.namespace, device, state)
                self.desired += 1
                return None
            origin = f"{event.source} {event.id}"
            when = _event_time(event.time)
            await devices.command(
                self.namespace,
                device,
                event.data_bytes(),
                event.datacontenttype,
                expiry=parse_duration(self.resource.spec.expiry),
                origin=origin,
                command_id=command_id_for(when, origin) if when is not None else None,
                correlation=_text(event.get("correlationid")),
            )
            self.commands += 1
        except DeviceNotFound as exc:
            raise DeliveryError(404, False, reason=str(exc)) from exc
        except InvalidDevice as exc:
            raise DeliveryError(400, False, reason=str(exc)) from exc
        except TooManyCommands as exc:
            raise DeliveryError(429, True, reason=str(exc)) from exc
        except (DeviceError, StateError) as exc:
            raise DeliveryError(503, True, reason=str(exc)) from exc
        return None

    async def start(self) -> None:
        await self.devices.start()

    async def stop(self) -> None:
        return None

    async def update(self, resource: Resource) -> bool:
        assert isinstance(resource, DeviceSink)
        self.resource = resource
        return True

    def status(self) -> dict[str, Any]:
        return {"commandsQueued": self.commands, "desiredStateChanges": self.desired}


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _event_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


KINDS: Final[Mapping[str, Kind]] = {
    # Registry entries are written before the MQTT brokers (sources) start
    # and check CONNECTs against them.
    "Device": Kind(DeviceComponent, Stage.SINK),
    "DeviceSink": Kind(DeviceSinkComponent, Stage.SINK),
}
"""What the device kinds become, and when they start."""
