"""Sinks: where events land. Each implements the eventing ``Sink`` interface."""

from headwater.sinks.display import EventDisplaySink, format_pretty

__all__ = ["EventDisplaySink", "format_pretty"]
