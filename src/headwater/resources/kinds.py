"""Every kind Headwater knows, by name: the loader's and the API's table.

Kinds that other modules define (sources, sinks) are added here, one import
and one entry each.
"""

from __future__ import annotations

from headwater.resources.devices import Device, DeviceSink
from headwater.resources.models import (
    Broker,
    Channel,
    ContainerSource,
    EventDisplay,
    InMemoryChannel,
    PingSource,
    Resource,
    Subscription,
    Trigger,
)
from headwater.resources.mqtt import MqttBrokerSource, MqttSink, MqttSource
from headwater.resources.sinks import HttpSink, InfluxDBSink, PrometheusSink
from headwater.resources.tiers import Downlink, Edge, Uplink

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (Broker, Trigger, Channel, InMemoryChannel, Subscription, PingSource, EventDisplay)
}
KINDS[ContainerSource.KIND] = ContainerSource
KINDS.update({cls.KIND: cls for cls in (MqttBrokerSource, MqttSource, MqttSink)})
KINDS.update({cls.KIND: cls for cls in (InfluxDBSink, PrometheusSink, HttpSink)})
KINDS.update({cls.KIND: cls for cls in (Device, DeviceSink)})
KINDS.update({cls.KIND: cls for cls in (Uplink, Downlink, Edge)})

# Kinds that can receive events through a Destination's `ref`.
ADDRESSABLE_KINDS = frozenset({"Broker", "Channel", "InMemoryChannel", "EventDisplay", "MqttSink"})
ADDRESSABLE_KINDS |= {"InfluxDBSink", "PrometheusSink", "HttpSink", "DeviceSink", "Edge"}
