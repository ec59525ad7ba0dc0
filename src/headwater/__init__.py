"""Headwater: an event-driven IoT edge platform in one process.

Devices speak MQTT; everything behind the first hop speaks CloudEvents; events
are routed with Knative Eventing's resource model and kept in a durable,
replayable log.
"""

__version__ = "0.1.0"

DEFAULT_SERVER = "http://127.0.0.1:8080"
"""The admin API the CLI talks to unless told otherwise (``--server``, ``HEADWATER_SERVER``)."""

__all__ = ["DEFAULT_SERVER", "__version__"]
