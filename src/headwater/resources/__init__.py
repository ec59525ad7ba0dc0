"""Resources in Knative's shapes: models of every kind and the YAML loader."""

from headwater.resources.durations import parse_duration
from headwater.resources.loader import (
    ConfigError,
    Loaded,
    Problem,
    check_references,
    load_paths,
    load_text,
)
from headwater.resources.models import (
    KINDS,
    Broker,
    Channel,
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
    "KINDS",
    "Broker",
    "Channel",
    "ConfigError",
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
