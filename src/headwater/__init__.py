"""Headwater: an event-driven IoT edge platform in one process.

Devices speak MQTT; everything behind the first hop speaks CloudEvents; events
are routed with Knative Eventing's resource model and kept in a durable,
replayable log.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
