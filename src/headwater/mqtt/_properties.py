"""MQTT 5.0 properties (§2.2.2): the table, the reader and the writer.

How this works: :data:`PROPERTY_TABLE` lists every property once: its
identifier, the :class:`Properties` field it fills, its data type and the
packets it may appear in (a bit per packet type; bit 0 stands for the will
properties of a CONNECT). The reader walks the property block, checks each
identifier against the packet, rejects duplicates where the standard does, and
validates the value ranges the standard calls protocol errors. The writer emits
the present fields in identifier order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from headwater.mqtt._model import EMPTY_PROPERTIES, PacketType, Properties
from headwater.mqtt._wire import (
    read_binary,
    read_string,
    read_u8,
    read_u16,
    read_u32,
    read_varint,
    write_binary,
    write_string,
    write_varint,
)
from headwater.mqtt.errors import LocalProtocolError, MalformedPacket, ProtocolError
from headwater.mqtt.reasons import ReasonCode

# Bit 0 is free (packet type 0 is reserved): it marks the will properties.
WILL = 0

_Reader = Callable[[bytes, int, int], tuple[Any, int]]
_Writer = Callable[[Any], bytes]


def _read_pair(buf: bytes, pos: int, end: int) -> tuple[tuple[str, str], int]:
    name, pos = read_string(buf, pos, end)
    value, pos = read_string(buf, pos, end)
    return (name, value), pos


def _write_u8(value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise LocalProtocolError(f"{value} does not fit a byte")
    return bytes((value,))


def _write_u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise LocalProtocolError(f"{value} does not fit a two byte integer")
    return value.to_bytes(2, "big")


def _write_u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise LocalProtocolError(f"{value} does not fit a four byte integer")
    return value.to_bytes(4, "big")


def _write_pair(value: tuple[str, str]) -> bytes:
    return write_string(value[0]) + write_string(value[1])


# (reader, writer) per §2.2.2.2 data type.
BYTE = (read_u8, _write_u8)
U16 = (read_u16, _write_u16)
U32 = (read_u32, _write_u32)
VARINT = (read_varint, write_varint)
UTF8 = (read_string, write_string)
BINARY = (read_binary, write_binary)
PAIR = (_read_pair, _write_pair)


def _mask(*packet_types: int) -> int:
    mask = 0
    for packet_type in packet_types:
        mask |= 1 << packet_type
    return mask


_P = PacketType
_ACKS = (_P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP)


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One row of §2.2.2.2: identifier, field, data type, where it may appear."""

    identifier: int
    name: str
    read: _Reader
    write: _Writer
    packets: int
    repeatable: bool = False


def _spec(
    identifier: int,
    name: str,
    data_type: tuple[_Reader, _Writer],
    packets: tuple[int, ...],
    repeatable: bool = False,
) -> PropertySpec:
    return PropertySpec(identifier, name, data_type[0], data_type[1], _mask(*packets), repeatable)


PROPERTY_TABLE: tuple[PropertySpec, ...] = (
    _spec(0x01, "payload_format_indicator", BYTE, (_P.PUBLISH, WILL)),
    _spec(0x02, "message_expiry_interval", U32, (_P.PUBLISH, WILL)),
    _spec(0x03, "content_type", UTF8, (_P.PUBLISH, WILL)),
    _spec(0x08, "response_topic", UTF8, (_P.PUBLISH, WILL)),
    _spec(0x09, "correlation_data", BINARY, (_P.PUBLISH, WILL)),
    # Repeatable in PUBLISH only: "It is a Protocol Error to include the
    # Subscription Identifier more than once" in SUBSCRIBE (§3.8.2.1.2).
    _spec(0x0B, "subscription_identifiers", VARINT, (_P.PUBLISH, _P.SUBSCRIBE), True),
    _spec(0x11, "session_expiry_interval", U32, (_P.CONNECT, _P.CONNACK, _P.DISCONNECT)),
    _spec(0x12, "assigned_client_identifier", UTF8, (_P.CONNACK,)),
    _spec(0x13, "server_keep_alive", U16, (_P.CONNACK,)),
    _spec(0x15, "authentication_method", UTF8, (_P.CONNECT, _P.CONNACK, _P.AUTH)),
    _spec(0x16, "authentication_data", BINARY, (_P.CONNECT, _P.CONNACK, _P.AUTH)),
    _spec(0x17, "request_problem_information", BYTE, (_P.CONNECT,)),
    _spec(0x18, "will_delay_interval", U32, (WILL,)),
    _spec(0x19, "request_response_information", BYTE, (_P.CONNECT,)),
    _spec(0x1A, "response_information", UTF8, (_P.CONNACK,)),
    _spec(0x1C, "server_reference", UTF8, (_P.CONNACK, _P.DISCONNECT)),
    _spec(
        0x1F,
        "reason_string",
        UTF8,
        (_P.CONNACK, *_ACKS, _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH),
    ),
    _spec(0x21, "receive_maximum", U16, (_P.CONNECT, _P.CONNACK)),
    _spec(0x22, "topic_alias_maximum", U16, (_P.CONNECT, _P.CONNACK)),
    _spec(0x23, "topic_alias", U16, (_P.PUBLISH,)),
    _spec(0x24, "maximum_qos", BYTE, (_P.CONNACK,)),
    _spec(0x25, "retain_available", BYTE, (_P.CONNACK,)),
    _spec(
        0x26,
        "user_properties",
        PAIR,
        (
            _P.CONNECT,
            _P.CONNACK,
            _P.PUBLISH,
            WILL,
            *_ACKS,
            _P.SUBSCRIBE,
            _P.SUBACK,
            _P.UNSUBSCRIBE,
            _P.UNSUBACK,
            _P.DISCONNECT,
            _P.AUTH,
        ),
        True,
    ),
    _spec(0x27, "maximum_packet_size", U32, (_P.CONNECT, _P.CONNACK)),
    _spec(0x28, "wildcard_subscription_available", BYTE, (_P.CONNACK,)),
    _spec(0x29, "subscription_identifier_available", BYTE, (_P.CONNACK,)),
    _spec(0x2A, "shared_subscription_available", BYTE, (_P.CONNACK,)),
)

_BY_ID: dict[int, PropertySpec] = {spec.identifier: spec for spec in PROPERTY_TABLE}

# Properties whose value must be 0 or 1; anything else is a Protocol Error
# (§3.1.2.11.6/7, §3.2.2.3.4/5/11/12/13, and §3.3.2.3.2 for the indicator).
_ZERO_OR_ONE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
# Properties for which 0 is a Protocol Error, with the code to answer with.
_NOT_ZERO = {
    0x0B: ReasonCode.PROTOCOL_ERROR,  # §3.3.2.3.8: Subscription Identifier 0
    0x21: ReasonCode.PROTOCOL_ERROR,  # §3.1.2.11.3 / §3.2.2.3.3: Receive Maximum 0
    0x27: ReasonCode.PROTOCOL_ERROR,  # §3.1.2.11.4 / §3.2.2.3.6: Maximum Packet Size 0
    0x23: ReasonCode.TOPIC_ALIAS_INVALID,  # [MQTT-3.3.2-8]: Topic Alias 0
}


def read_properties(buf: bytes, pos: int, end: int, packet_type: int) -> tuple[Properties, int]:
    """Read a property block (length + properties) for ``packet_type``."""
    length, pos = read_varint(buf, pos, end)
    if not length:
        return EMPTY_PROPERTIES, pos
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length runs past the end of the packet")
    bit = 1 << packet_type
    values: dict[str, Any] = {}
    sub_ids: list[int] = []
    user_properties: list[tuple[str, str]] = []
    while pos < stop:
        # Identifiers are Variable Byte Integers (§2.2.2.2); every defined one
        # fits in one byte, so a first byte >= 0x80 can only be unknown.
        identifier = buf[pos]
        spec = _BY_ID.get(identifier)
        # §2.2.2.2: "A Control Packet which contains an Identifier which is not
        # valid for its packet type ... is a Malformed Packet".
        if spec is None or not spec.packets & bit:
            raise MalformedPacket(f"property 0x{identifier:02X} is not valid in this packet")
        value, pos = spec.read(buf, pos + 1, stop)
        if identifier in _ZERO_OR_ONE and value not in (0, 1):
            raise ProtocolError(f"property {spec.name} must be 0 or 1, got {value}")
        if not value and identifier in _NOT_ZERO:
            raise ProtocolError(f"property {spec.name} must not be 0", _NOT_ZERO[identifier])
        if identifier == 0x26:
            user_properties.append(value)
        elif identifier == 0x0B and packet_type == PacketType.PUBLISH:
            sub_ids.append(value)
        elif spec.name in values or (identifier == 0x0B and sub_ids):
            # §2.2.2.2 and each property's definition: "It is a Protocol Error
            # to include <property> more than once".
            raise ProtocolError(f"duplicate property {spec.name}")
        elif identifier == 0x0B:
            sub_ids.append(value)
        else:
            values[spec.name] = value
    if pos != stop:
        raise MalformedPacket("a property runs past the property length")
    response_topic = values.get("response_topic")
    # [MQTT-3.3.2-14]: the Response Topic MUST NOT contain wildcard characters.
    if response_topic is not None and ("+" in response_topic or "#" in response_topic):
        raise ProtocolError(f"wildcard in response topic {response_topic!r}")
    if sub_ids:
        values["subscription_identifiers"] = tuple(sub_ids)
    if user_properties:
        values["user_properties"] = tuple(user_properties)
    return Properties(**values), pos


def encode_properties(properties: Properties, packet_type: int = PacketType.PUBLISH) -> bytes:
    """The encoded properties of ``properties`` (without the length prefix).

    Raises :class:`LocalProtocolError` for a property not allowed in
    ``packet_type`` (``0`` for will properties) or a value out of range. The
    result can be cached and passed to ``encode_publish`` for fan-out.
    """
    if properties is EMPTY_PROPERTIES:
        return b""
    bit = 1 << packet_type
    parts: list[bytes] = []
    for spec in PROPERTY_TABLE:
        value = getattr(properties, spec.name)
        if value is None or value == ():
            continue
        if not spec.packets & bit:
            raise LocalProtocolError(f"property {spec.name} is not allowed in this packet")
        prefix = _SMALL_IDS[spec.identifier]
        if spec.repeatable:
            if spec.identifier == 0x0B and packet_type != PacketType.PUBLISH and len(value) > 1:
                raise LocalProtocolError("a SUBSCRIBE carries at most one subscription identifier")
            for item in value:
                _check_value(spec, item)
                parts.append(prefix)
                parts.append(spec.write(item))
        else:
            _check_value(spec, value)
            parts.append(prefix)
            parts.append(spec.write(value))
    return b"".join(parts)


_SMALL_IDS = {spec.identifier: bytes((spec.identifier,)) for spec in PROPERTY_TABLE}


def _check_value(spec: PropertySpec, value: Any) -> None:
    if spec.identifier in _ZERO_OR_ONE and value not in (0, 1):
        raise LocalProtocolError(f"property {spec.name} must be 0 or 1, got {value}")
    if spec.identifier in _NOT_ZERO and not value:
        raise LocalProtocolError(f"property {spec.name} must not be 0")


def write_properties(properties: Properties, packet_type: int) -> bytes:
    """The property block: Variable Byte Integer length, then the properties."""
    if properties is EMPTY_PROPERTIES:
        return b"\x00"
    body = encode_properties(properties, packet_type)
    return write_varint(len(body)) + body
