"""Resources in Knative's shapes: models of every kind and the YAML loader.

A light layer (docs/architecture.md, "Layers"): importing it loads no HTTP or
NATS client, no prometheus_client and no sink or log I/O; what it validates
it checks through pure modules (durations, the MQTT mapping, the sinks'
specs), so that ``headwater apply`` and the loader stay quick to start.
"""

from headwater.resources.kinds import ADDRESSABLE_KINDS, KINDS
from headwater.resources.loader import (
    ConfigError,
    Loaded,
    LoadResult,
    Problem,
    check_references,
    collect_paths,
    collect_text,
    load_document,
    load_paths,
    load_text,
    reference_problems,
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
    "LoadResult",
    "Loaded",
    "PingSource",
    "Problem",
    "Resource",
    "Subscription",
    "SubscriptionsApiFilter",
    "Trigger",
    "TriggerFilter",
    "check_references",
    "collect_paths",
    "collect_text",
    "load_document",
    "load_paths",
    "load_text",
    "parse_start",
    "reference_problems",
]
