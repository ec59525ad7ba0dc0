"""The MQTT broker of a mesh: one embedded broker per node, behaving as one over NATS.

How this works: :class:`~headwater.cluster.mqtt.span.MqttMesh` gives an
embedded broker a router (:mod:`headwater.cluster.mqtt.router`: who receives
a message, on any node, by interest over NATS subjects,
:mod:`headwater.cluster.mqtt.subjects`) and a session store
(:mod:`headwater.cluster.mqtt.sessions`: persistent sessions, their queued
QoS 1/2 messages and retained messages in JetStream). Nothing is imported
here: the mesh loads these modules when a node runs an MqttBrokerSource.
"""
