"""Tiers: events up from an edge to the cloud, and commands back down.

How this works: the edge always opens the connection (ARCHITECTURE.md
"Tiers"). Up, an :class:`Uplink` forwards a local Broker's events to any
CloudEvents receiver from a durable cursor of the event log, in batches,
retrying connectivity failures forever. Down, a cloud keeps one durable
:class:`EdgeQueue` per edge, fed by Triggers, and the edge's
:class:`Downlink` pulls it over its own outbound HTTP connection and
acknowledges only after its durable append.
"""

from headwater.tiers._policy import Capabilities, Verdict, capabilities, verdict
from headwater.tiers._remote import Answer, Remote
from headwater.tiers.downlink import LAST_OFFSET_HEADER, Downlink, DownlinkStats
from headwater.tiers.edgequeue import EdgeQueue, Pull
from headwater.tiers.uplink import Uplink, UplinkStats

__all__ = [
    "LAST_OFFSET_HEADER",
    "Answer",
    "Capabilities",
    "Downlink",
    "DownlinkStats",
    "EdgeQueue",
    "Pull",
    "Remote",
    "Uplink",
    "UplinkStats",
    "Verdict",
    "capabilities",
    "verdict",
]
