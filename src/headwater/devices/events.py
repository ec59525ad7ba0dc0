"""The CloudEvents the device registry records: twin changes and finished commands.

How this works: pure functions from a change to a :class:`~headwater.cloudevents.CloudEvent`.
Every event names its device in ``subject`` and in the ``device`` extension
(what a topic capture ``sensors/{device}/...`` sets on telemetry, so that one
CESQL filter, ``device = 'pump-1'``, finds a device's telemetry and its
registry events alike), and carries the details as JSON data:

* ``dev.headwater.twin.updated``: ``side`` (``desired`` or ``reported``), the
  merge ``patch`` that was applied (absent when desired was replaced whole),
  both states with their versions, and the delta after the change;
* ``dev.headwater.command.answered`` / ``.failed`` / ``.expired``: the
  command as the API shows it; ``correlationid`` is the ``correlationid`` of
  the event that made the command (through a DeviceSink), else the command id.
"""

from __future__ import annotations

from typing import Final

import orjson

from headwater.cloudevents import CloudEvent
from headwater.devices.commands import Command, Status
from headwater.devices.twins import TwinChange
from headwater.sources.mapping import IdSequence, timestamp

__all__ = [
    "COMMAND_TYPES",
    "TWIN_UPDATED_TYPE",
    "command_event",
    "twin_event",
]

TWIN_UPDATED_TYPE: Final = "dev.headwater.twin.updated"
COMMAND_TYPES: Final = {
    Status.ANSWERED: "dev.headwater.command.answered",
    Status.FAILED: "dev.headwater.command.failed",
    Status.EXPIRED: "dev.headwater.command.expired",
}

_IDS = IdSequence()


def _event(event_type: str, namespace: str, device: str, when: float, data: object) -> CloudEvent:
    return CloudEvent(
        {
            "specversion": "1.0",
            "id": _IDS.next(),
            "source": f"/headwater/devices/{namespace}",
            "type": event_type,
            "subject": device,
            "time": timestamp(when),
            "datacontenttype": "application/json",
            "device": device,
        },
        orjson.dumps(data),
    )


def twin_event(change: TwinChange) -> CloudEvent:
    after = change.after
    data: dict[str, object] = {
        "device": after.device,
        "namespace": after.namespace,
        "side": change.side,
        "desired": {"state": after.desired, "version": after.desired_version},
        "reported": {"state": after.reported, "version": after.reported_version},
        "delta": after.delta(),
    }
    if change.patch is not None:
        data["patch"] = change.patch
    when = after.desired_updated if change.side == "desired" else after.reported_updated
    return _event(TWIN_UPDATED_TYPE, after.namespace, after.device, when or 0.0, data)


def command_event(command: Command) -> CloudEvent:
    event = _event(
        COMMAND_TYPES[command.status],
        command.namespace,
        command.device,
        command.finished_at or command.created,
        command.to_json(),
    )
    return event.evolve({"correlationid": command.correlation or command.id})
