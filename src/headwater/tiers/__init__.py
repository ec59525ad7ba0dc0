"""Tiers: events up from an edge to the cloud, and commands back down.

How this works: the edge always opens the connection (ARCHITECTURE.md
"Tiers"). Up, an :class:`Uplink` forwards a local Broker's events to any
CloudEvents receiver from a durable cursor of the event log, in batches,
retrying connectivity failures forever. Down, a cloud keeps one durable
:class:`EdgeQueue` per edge, fed by Triggers, and the edge's
:class:`Downlink` pulls it over its own outbound HTTP connection and
acknowledges only after its durable append.

The package imports nothing here, so that the resource schema reads
:mod:`headwater.tiers.limits` without loading the HTTP client; import
from the modules (``uplink``, ``downlink``, ``edgequeue``, ``_remote``,
``_policy``).
"""
