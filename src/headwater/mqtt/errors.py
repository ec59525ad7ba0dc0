"""Errors raised by the MQTT codec.

How this works (h11's split, ``h11/_util.py``): an error either comes from the
peer's bytes (:class:`MalformedPacket`, :class:`ProtocolError`,
:class:`PacketTooLarge`, :class:`UnsupportedProtocolVersion`) or from our own
attempt to build or send an invalid packet (:class:`LocalProtocolError`). Every
error carries ``reason_code``: the MQTT 5.0 code to answer the peer with
(DISCONNECT or CONNACK in 5.0; in 3.1.1 the only answer is to close, except for
:class:`UnsupportedProtocolVersion`, which is answered with a CONNACK).

Once a :class:`~headwater.mqtt.packets.Decoder` has raised, it is broken: every
later ``next_packet()`` raises the same error again. The connection must close.
"""

from __future__ import annotations

from headwater.mqtt._protocol import ProtocolVersion
from headwater.mqtt.reasons import ReasonCode

__all__ = [
    "LocalProtocolError",
    "MalformedPacket",
    "MqttError",
    "PacketTooLarge",
    "ProtocolError",
    "UnsupportedProtocolVersion",
]


class MqttError(Exception):
    """Base class of every MQTT codec error; ``reason_code`` is what to answer."""

    default_reason_code = ReasonCode.UNSPECIFIED_ERROR

    def __init__(self, message: str, reason_code: ReasonCode | None = None) -> None:
        super().__init__(message)
        self.reason_code: ReasonCode = (
            self.default_reason_code if reason_code is None else reason_code
        )


class MalformedPacket(MqttError):
    """The peer's bytes cannot be parsed per the specification (0x81).

    MQTT 5.0 §4.13: "the receiver ... MUST close the Network Connection",
    after a DISCONNECT 0x81 when the receiver is the server and a CONNACK has
    been sent [MQTT-4.13.1-1].
    """

    default_reason_code = ReasonCode.MALFORMED_PACKET


class ProtocolError(MqttError):
    """The peer's packet parses but breaks a protocol rule (0x82 unless stated).

    Some protocol errors carry a more specific code, e.g. 0x90 Topic Name
    invalid for a wildcard in a PUBLISH topic, or 0x94 Topic Alias invalid.
    """

    default_reason_code = ReasonCode.PROTOCOL_ERROR


class UnsupportedProtocolVersion(ProtocolError):
    """A CONNECT names a protocol or level this codec does not speak.

    The broker answers with ``encode(Connack(reason_code=err.reason_code),
    err.answer_version)`` and then closes: 3.1.1 requires CONNACK 0x01 for an
    unsupported level [MQTT-3.1.2-2 (3.1.1)], 5.0 allows CONNACK 0x84 for a
    bad protocol name or version [MQTT-3.1.2-1, MQTT-3.1.2-2 (5.0)]. The
    answer is sent in the 3.1.1 format (4 bytes, return code 0x01), the one
    format every MQTT client (3.1 included) can read; that is also what
    Mosquitto does.
    """

    def __init__(self, protocol_name: str, protocol_level: int) -> None:
        super().__init__(
            f"unsupported protocol {protocol_name!r} level {protocol_level}",
            ReasonCode.UNSUPPORTED_PROTOCOL_VERSION,
        )
        self.protocol_name = protocol_name
        self.protocol_level = protocol_level
        self.answer_version = ProtocolVersion.MQTT311


class PacketTooLarge(MqttError):
    """The peer's packet is larger than the decoder's ``max_packet_size`` (0x95).

    Raised as soon as the fixed header announces the size, before the body is
    buffered. 5.0: "the Server MUST ... send a DISCONNECT with Reason Code 0x95
    (Packet too large)" [MQTT-3.1.2-24 and §4.13]; 3.1.1: close.
    """

    default_reason_code = ReasonCode.PACKET_TOO_LARGE

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class LocalProtocolError(MqttError, ValueError):
    """We tried to build or encode a packet that breaks the specification.

    A bug on our side, never the peer's fault; ``reason_code`` is 0x83
    (implementation specific error) in case the broker wants to tell the peer.
    """

    default_reason_code = ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR
