"""Sources: where events come from (PingSource, ContainerSource, MQTT, the simulator).

The package imports nothing: its modules are imported by name, so that the
pure one (the MQTT-to-CloudEvents mapping, read by the resource schema)
comes without the sources' I/O.
"""
