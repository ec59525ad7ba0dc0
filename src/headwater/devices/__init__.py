"""Devices as first-class citizens: registry, credentials, presence, twins, commands.

How this works: :class:`Devices` (:mod:`headwater.devices.service`) is the
one service a runtime owns; it keeps everything in the runtime's state store
(``devices``, ``device-keys``, ``device-presence``, ``device-twins``,
``device-commands``, ``device-command-results`` buckets), beside the
resources the API applied (SQLite on a single node, JetStream KV in a mesh);
it asks only for the store's interface (revisions, compare-and-set, watches). An
MqttBrokerSource with ``devices`` turned on runs a
:class:`~headwater.devices.plane.DevicePlane` that authenticates its
CONNECTs against the registry and speaks the device topics. The admin API
(:mod:`headwater.api.devices`) and the ``Device`` resource kind only call
this package; nothing here knows HTTP.

* :mod:`~headwater.devices.model`: devices, credentials, names, label selectors;
* :mod:`~headwater.devices.credentials`: secrets (HMAC), passwords (scrypt), X.509;
* :mod:`~headwater.devices.registry`: the registry, indexed in memory;
* :mod:`~headwater.devices.access`: ACL templates and the broker's authenticator;
* :mod:`~headwater.devices.presence`: online/offline, written behind;
* :mod:`~headwater.devices.twins`: desired and reported state, deltas;
* :mod:`~headwater.devices.commands`: the durable command queue;
* :mod:`~headwater.devices.plane`: the topics, on one broker;
* :mod:`~headwater.devices.imports`: bulk import from CSV/JSON;
* :mod:`~headwater.devices.telemetry`: latest values and series for the dashboard.
"""

from headwater.devices.commands import Command, Status, TooManyCommands
from headwater.devices.model import (
    DEFAULT_NAMESPACE,
    Credential,
    Device,
    DeviceConflict,
    DeviceError,
    DeviceExists,
    DeviceNotFound,
    InvalidDevice,
    OwnedByResource,
    Selector,
)
from headwater.devices.registry import Registry, Secret
from headwater.devices.service import Devices
from headwater.devices.twins import InvalidTwin, Twin, TwinTooLarge

__all__ = [
    "DEFAULT_NAMESPACE",
    "Command",
    "Credential",
    "Device",
    "DeviceConflict",
    "DeviceError",
    "DeviceExists",
    "DeviceNotFound",
    "Devices",
    "InvalidDevice",
    "InvalidTwin",
    "OwnedByResource",
    "Registry",
    "Secret",
    "Selector",
    "Status",
    "TooManyCommands",
    "Twin",
    "TwinTooLarge",
]
