"""One message framed for many receivers: the broker's fan-out encode cache.

How this works: a :class:`PublishParts` wraps one routed
:class:`~headwater.mqtt.session.Message`. The topic is encoded once, the MQTT
5 property block once per subscription-identifier variant, and whole QoS 0
packets once per (version, retain, identifiers) variant, so delivering one
message to a thousand subscribers serialises it a handful of times.
:meth:`~headwater.mqtt.connection.ServerConnection.publish_bytes` frames the
QoS 1/2 packets of each receiver from these parts.
"""

from __future__ import annotations

from headwater.mqtt.packets import Properties, ProtocolVersion, encode_properties, encode_publish
from headwater.mqtt.session import Message

__all__ = ["PublishParts"]

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5


class PublishParts:
    """One message framed for many receivers: topic, properties and QoS 0 packets
    encoded once per variant and shared (the broker's fan-out cache)."""

    __slots__ = ("_packets", "_props", "message", "now", "topic_bytes")

    def __init__(self, message: Message, now: float) -> None:
        self.message = message
        self.now = now
        self.topic_bytes = message.topic.encode()
        self._props: dict[tuple[int, ...], bytes] = {}
        self._packets: dict[tuple[bool, bool, tuple[int, ...]], bytes] = {}

    def properties(self, subscription_ids: tuple[int, ...]) -> bytes:
        """The MQTT 5 property block (without length) for one receiver variant."""
        cached = self._props.get(subscription_ids)
        if cached is not None:
            return cached
        base = self._props.get(())
        if base is None:
            m = self.message
            if (
                m.payload_format_indicator is None
                and m.expires_at is None
                and m.content_type is None
                and m.response_topic is None
                and m.correlation_data is None
                and not m.user_properties
            ):
                base = b""
            else:
                # [MQTT-3.3.2-4] payload format, [MQTT-3.3.2-6] remaining expiry,
                # [MQTT-3.3.2-15/16] response topic and correlation data,
                # [MQTT-3.3.2-17/18] user properties unaltered and in order,
                # [MQTT-3.3.2-20] content type: all forwarded.
                base = encode_properties(
                    Properties(
                        payload_format_indicator=m.payload_format_indicator,
                        message_expiry_interval=m.remaining_expiry(self.now),
                        content_type=m.content_type,
                        response_topic=m.response_topic,
                        correlation_data=m.correlation_data,
                        user_properties=m.user_properties,
                    )
                )
            self._props[()] = base
        if not subscription_ids:
            return base
        # [MQTT-3.3.4-3/4] every matching subscription's identifier, in one copy.
        props = base + encode_properties(Properties(subscription_identifiers=subscription_ids))
        self._props[subscription_ids] = props
        return props

    def qos0_packet(self, v5: bool, retain: bool, subscription_ids: tuple[int, ...]) -> bytes:
        key = (v5, retain, subscription_ids)
        packet = self._packets.get(key)
        if packet is None:
            m = self.message
            if v5:
                props = self.properties(subscription_ids)
                packet = encode_publish(
                    self.topic_bytes, m.payload, V5, retain=retain, properties=props
                )
            else:
                packet = encode_publish(self.topic_bytes, m.payload, V311, retain=retain)
            self._packets[key] = packet
        return packet
