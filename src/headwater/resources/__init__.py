"""Resources in Knative's shapes: models of every kind and the YAML loader."""

from headwater.eventing import parse_duration
from headwater.resources.kinds import ADDRESSABLE_KINDS, KINDS
from headwater.resources.loader import (
    ConfigError,
    Loaded,
    Problem,
    check_references,
    load_paths,
    load_text,
)
from headwater.resources.models import (
    Broker,
    Channel,
    ContainerSource,
    DeliverySpec,
    Destination,
    EventDisplay,
    InMemoryChannel,
    KReference,
    PingSource,
    Resource,
    Subscription,
    SubscriptionsApiFilter,
    Trigger,
    TriggerFilter,
    parse_start,
)

__all__ = [
    "ADDRESSABLE_KINDS",
    "KINDS",
    "Broker",
    "Channel",
    "ConfigError",
    "ContainerSource",
    "DeliverySpec",
    "Destination",
    "EventDisplay",
    "InMemoryChannel",
    "KReference",
    "Loaded",
    "PingSource",
    "Problem",
    "Resource",
    "Subscription",
    "SubscriptionsApiFilter",
    "Trigger",
    "TriggerFilter",
    "check_references",
    "load_paths",
    "load_text",
    "parse_duration",
    "parse_start",
]
