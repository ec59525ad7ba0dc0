"""Packet writers: one small pure function per packet type, found through a table.

How this works (h11's ``_writers.py``): ``WRITERS[type(packet)](packet,
version)`` returns the whole packet, fixed header included. Writers for 3.1.1
leave out what 3.1.1 cannot carry (properties, most reason codes) and map
reason codes to 3.1.1 return codes where 3.1.1 has them (CONNACK, SUBACK).
:func:`encode_publish` is the broker's fan-out path: it takes pre-encoded
properties and a pre-encoded topic, so one message can be framed for many
subscribers without re-serialising anything but the packet identifier.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from headwater.mqtt._model import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    PacketType,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
)
from headwater.mqtt._properties import WILL, encode_properties, write_properties
from headwater.mqtt._protocol import ProtocolVersion
from headwater.mqtt._wire import write_binary, write_string, write_varint
from headwater.mqtt.errors import LocalProtocolError
from headwater.mqtt.reasons import CONNACK_CODES_311, ReasonCode

Writer = Callable[[Any, ProtocolVersion], bytes]

MQTT5 = ProtocolVersion.MQTT5
_FIRST_BYTES = tuple(bytes((i,)) for i in range(256))


def _frame(first: int, body: bytes) -> bytes:
    """Fixed header (§2.1: type and flags, Remaining Length) + body."""
    return _FIRST_BYTES[first] + write_varint(len(body)) + body


def write_connect(packet: Connect, version: ProtocolVersion) -> bytes:
    v5 = version == MQTT5
    will = packet.will
    flags = 0x02 if packet.clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        # [MQTT-3.1.2-22] (3.1.1): no password without a user name.
        if packet.username is None and not v5:
            raise LocalProtocolError("an MQTT 3.1.1 CONNECT needs a user name with a password")
        flags |= 0x40
    parts = [b"\x00\x04MQTT", _FIRST_BYTES[version], _FIRST_BYTES[flags]]
    parts.append(packet.keep_alive.to_bytes(2, "big"))
    if v5:
        parts.append(write_properties(packet.properties, PacketType.CONNECT))
    parts.append(write_string(packet.client_id))
    if will is not None:
        if v5:
            parts.append(write_properties(will.properties, WILL))
        parts.append(write_string(will.topic))
        parts.append(write_binary(will.payload))
    if packet.username is not None:
        parts.append(write_string(packet.username))
    if packet.password is not None:
        parts.append(write_binary(packet.password))
    return _frame(0x10, b"".join(parts))


def write_connack(packet: Connack, version: ProtocolVersion) -> bytes:
    flags = 1 if packet.session_present else 0
    if version == MQTT5:
        body = bytes((flags, packet.reason_code)) + write_properties(
            packet.properties, PacketType.CONNACK
        )
        return _frame(0x20, body)
    code = CONNACK_CODES_311.get(packet.reason_code)
    if code is None:
        # [MQTT-3.2.2-6] (3.1.1): with no applicable return code the server
        # closes without a CONNACK; see reasons.connack_code_311().
        raise LocalProtocolError(f"{packet.reason_code!r} has no MQTT 3.1.1 return code")
    return bytes((0x20, 0x02, flags, code))


_U16 = struct.Struct(">H").pack


def _publish(
    topic: bytes,
    payload: bytes,
    version: ProtocolVersion,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: bytes,
) -> bytes:
    """Frame a PUBLISH; the arguments are trusted (see :func:`encode_publish`)."""
    if len(topic) > 0xFFFF:
        raise LocalProtocolError(f"topic of {len(topic)} bytes exceeds 65535")
    parts = [b"", b"", _U16(len(topic)), topic]
    length = 2 + len(topic) + len(payload)
    if qos:
        if packet_id is None:
            raise LocalProtocolError(f"a QoS {qos} PUBLISH needs a packet identifier")
        parts.append(_U16(packet_id))
        length += 2
    if version == MQTT5:
        if properties:
            prefix = write_varint(len(properties))
            parts.append(prefix)
            parts.append(properties)
            length += len(prefix) + len(properties)
        else:
            parts.append(b"\x00")
            length += 1
    parts.append(payload)
    parts[0] = _FIRST_BYTES[0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)]
    parts[1] = write_varint(length)
    return b"".join(parts)


def encode_publish(
    topic: str | bytes,
    payload: bytes,
    version: ProtocolVersion,
    *,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int | None = None,
    properties: bytes = b"",
) -> bytes:
    """Frame one PUBLISH from parts; the broker's per-subscriber fast path.

    ``topic`` may be pre-encoded UTF-8 ``bytes`` (validated by whoever encoded
    it), ``properties`` the output of :func:`encode_properties` (no length
    prefix; ignored for 3.1.1). Property order is free in MQTT 5.0, so a
    subscriber's Subscription Identifier or Topic Alias can be appended to a
    cached block: ``cached + encode_properties(Properties(topic_alias=3))``.
    No validation beyond what framing needs happens here; build a
    :class:`Publish` for that.
    """
    if isinstance(topic, str):
        try:
            topic = topic.encode()
        except UnicodeEncodeError as exc:  # lone surrogates
            raise LocalProtocolError(f"topic {topic!r} is not valid Unicode") from exc
    return _publish(topic, payload, version, qos, retain, dup, packet_id, properties)


def write_publish(packet: Publish, version: ProtocolVersion) -> bytes:
    topic = packet.topic
    # [MQTT-1.5.3-2] (3.1.1) / [MQTT-1.5.4-2] (5.0): no U+0000 in a string.
    if "\x00" in topic:
        raise LocalProtocolError(f"topic {topic!r} contains U+0000")
    try:
        topic_bytes = topic.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise LocalProtocolError(f"topic {topic!r} is not valid Unicode") from exc
    properties = packet.properties
    return _publish(
        topic_bytes,
        packet.payload,
        version,
        packet.qos,
        packet.retain,
        packet.dup,
        packet.packet_id,
        b""
        if properties is EMPTY_PROPERTIES or version != MQTT5
        else encode_properties(properties, PacketType.PUBLISH),
    )


#: First bytes of the acknowledgements (type and the flags §2.1.3 requires).
PUBACK_FIRST, PUBREC_FIRST, PUBREL_FIRST, PUBCOMP_FIRST = 0x40, 0x50, 0x62, 0x70


def write_ack_ok(first: int, packet_id: int) -> bytes:
    """A success PUBACK/PUBREC/PUBREL/PUBCOMP (``first`` above): the hot path.

    The same four bytes in 3.1.1 and 5.0: "the Reason Code and Property Length
    can be omitted if the Reason Code is 0x00 (Success) and there are no
    Properties" (5.0 §3.4.2.1, §3.5.2.1, §3.6.2.1, §3.7.2.1).
    """
    return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))


#: PINGREQ and PINGRESP have no variable header or payload (§3.12, §3.13).
PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"


def _ack_writer(first: int, packet_type: int) -> Writer:
    short = bytes((first, 2))
    with_code = bytes((first, 3))

    def write_ack(packet: Puback | Pubrec | Pubrel | Pubcomp, version: ProtocolVersion) -> bytes:
        properties = packet.properties
        code = packet.reason_code
        # 3.1.1 has no room for more; in 5.0 §3.4.2.1: "The Reason Code and
        # Property Length can be omitted if the Reason Code is 0x00 (Success)
        # and there are no Properties".
        if version != MQTT5 or (not code and properties is EMPTY_PROPERTIES):
            return short + _U16(packet.packet_id)
        if properties is EMPTY_PROPERTIES or properties == EMPTY_PROPERTIES:
            if not code:
                return short + _U16(packet.packet_id)
            return with_code + _U16(packet.packet_id) + _FIRST_BYTES[code]
        body = (
            _U16(packet.packet_id) + _FIRST_BYTES[code] + write_properties(properties, packet_type)
        )
        return _frame(first, body)

    return write_ack


write_puback = _ack_writer(0x40, PacketType.PUBACK)
write_pubrec = _ack_writer(0x50, PacketType.PUBREC)
# [MQTT-3.6.1-1]: PUBREL fixed header bits 3..0 are 0010.
write_pubrel = _ack_writer(0x62, PacketType.PUBREL)
write_pubcomp = _ack_writer(0x70, PacketType.PUBCOMP)


def write_subscribe(packet: Subscribe, version: ProtocolVersion) -> bytes:
    v5 = version == MQTT5
    parts = [packet.packet_id.to_bytes(2, "big")]
    if v5:
        parts.append(write_properties(packet.properties, PacketType.SUBSCRIBE))
    for topic_filter, options in packet.subscriptions:
        parts.append(write_string(topic_filter))
        value = options.qos
        if v5:
            value |= (
                (0x04 if options.no_local else 0)
                | (0x08 if options.retain_as_published else 0)
                | (options.retain_handling << 4)
            )
        parts.append(_FIRST_BYTES[value])
    # [MQTT-3.8.1-1]: SUBSCRIBE fixed header bits 3..0 are 0010.
    return _frame(0x82, b"".join(parts))


def write_suback(packet: Suback, version: ProtocolVersion) -> bytes:
    body = packet.packet_id.to_bytes(2, "big")
    if version == MQTT5:
        body += write_properties(packet.properties, PacketType.SUBACK)
        body += bytes(packet.reason_codes)
    else:
        # 3.1.1 §3.9.3: 0x00..0x02 granted QoS, 0x80 failure; every 5.0
        # failure code becomes 0x80 [MQTT-3.9.3-2].
        body += bytes(0x80 if code >= 0x80 else code for code in packet.reason_codes)
    return _frame(0x90, body)


def write_unsubscribe(packet: Unsubscribe, version: ProtocolVersion) -> bytes:
    parts = [packet.packet_id.to_bytes(2, "big")]
    if version == MQTT5:
        parts.append(write_properties(packet.properties, PacketType.UNSUBSCRIBE))
    parts.extend(write_string(topic_filter) for topic_filter in packet.topic_filters)
    # [MQTT-3.10.1-1]: UNSUBSCRIBE fixed header bits 3..0 are 0010.
    return _frame(0xA2, b"".join(parts))


def write_unsuback(packet: Unsuback, version: ProtocolVersion) -> bytes:
    body = packet.packet_id.to_bytes(2, "big")
    if version == MQTT5:
        if not packet.reason_codes:
            # [MQTT-3.11.3-1]: one reason code per topic filter of the UNSUBSCRIBE.
            raise LocalProtocolError("an MQTT 5.0 UNSUBACK needs one reason code per filter")
        body += write_properties(packet.properties, PacketType.UNSUBACK)
        body += bytes(packet.reason_codes)
    return _frame(0xB0, body)


def write_pingreq(packet: Pingreq, version: ProtocolVersion) -> bytes:
    return b"\xc0\x00"


def write_pingresp(packet: Pingresp, version: ProtocolVersion) -> bytes:
    return b"\xd0\x00"


def _write_code_and_properties(
    first: int, packet: Disconnect | Auth, packet_type: int, version: ProtocolVersion
) -> bytes:
    if version != MQTT5:
        return bytes((first, 0))
    properties = packet.properties
    if properties is EMPTY_PROPERTIES or properties == EMPTY_PROPERTIES:
        if packet.reason_code == ReasonCode.SUCCESS:
            # §3.14.2.1 / §3.15.2.1: a Remaining Length of 0 means Success.
            return bytes((first, 0))
        return bytes((first, 1, packet.reason_code))
    body = _FIRST_BYTES[packet.reason_code] + write_properties(properties, packet_type)
    return _frame(first, body)


def write_disconnect(packet: Disconnect, version: ProtocolVersion) -> bytes:
    return _write_code_and_properties(0xE0, packet, PacketType.DISCONNECT, version)


def write_auth(packet: Auth, version: ProtocolVersion) -> bytes:
    if version != MQTT5:
        raise LocalProtocolError("AUTH exists only in MQTT 5.0")
    return _write_code_and_properties(0xF0, packet, PacketType.AUTH, version)


WRITERS: dict[type, Writer] = {
    Connect: write_connect,
    Connack: write_connack,
    Publish: write_publish,
    Puback: write_puback,
    Pubrec: write_pubrec,
    Pubrel: write_pubrel,
    Pubcomp: write_pubcomp,
    Subscribe: write_subscribe,
    Suback: write_suback,
    Unsubscribe: write_unsubscribe,
    Unsuback: write_unsuback,
    Pingreq: write_pingreq,
    Pingresp: write_pingresp,
    Disconnect: write_disconnect,
    Auth: write_auth,
}
