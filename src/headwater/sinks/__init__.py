"""Sinks: where events land. Each implements the eventing ``Sink`` interface.

The package imports nothing: its modules are imported by name, so that the
pure ones (line protocol, metric and target specs, read by the resource
schema) come without the sinks' I/O (aiohttp, prometheus_client).
"""
