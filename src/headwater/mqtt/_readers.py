"""Packet readers: one small pure function per packet type, found through a table.

How this works (h11's ``_readers.py``): the decoder has already framed a packet
and checked its fixed header flags; it calls ``READERS[packet_type](buf, pos,
end, flags, version)`` with the packet body at ``buf[pos:end]``. A reader
parses that span exactly (a byte left over is a Malformed Packet), validates it
against the standard of ``version`` and returns the packet value, built
through the fast constructors because everything has been checked here.
"""

from __future__ import annotations

from collections.abc import Callable

from headwater.mqtt._model import (
    EMPTY_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    _fast_constructor,
    _set_publish_dup,
    _set_publish_packet_id,
    _set_publish_payload,
    _set_publish_properties,
    _set_publish_qos,
    _set_publish_retain,
    _set_publish_topic,
)
from headwater.mqtt._properties import WILL, read_properties
from headwater.mqtt._protocol import ProtocolVersion
from headwater.mqtt._wire import read_binary, read_string, read_u16
from headwater.mqtt.errors import MalformedPacket, ProtocolError, UnsupportedProtocolVersion
from headwater.mqtt.reasons import (
    AUTH_REASON_CODES,
    CONNACK_CODES_FROM_311,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    PUBACK_REASON_CODES,
    PUBCOMP_REASON_CODES,
    PUBREC_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    ReasonCode,
)

Reader = Callable[[bytes, int, int, int, ProtocolVersion], Packet]

MQTT5 = ProtocolVersion.MQTT5
# Reason code lookup without the cost of calling the enum; None = undefined.
_CODES: tuple[ReasonCode | None, ...] = tuple(
    ReasonCode(i) if i in ReasonCode._value2member_map_ else None for i in range(256)
)

_SUCCESS = ReasonCode.SUCCESS
_new_connect = _fast_constructor(Connect)
_new_will = _fast_constructor(Will)
_new_connack = _fast_constructor(Connack)
_new_suback = _fast_constructor(Suback)
_new_unsuback = _fast_constructor(Unsuback)
_new_subscribe = _fast_constructor(Subscribe)
_new_unsubscribe = _fast_constructor(Unsubscribe)
_new_options = _fast_constructor(SubscriptionOptions)
_new_disconnect = _fast_constructor(Disconnect)
_new_auth = _fast_constructor(Auth)

_object_new = object.__new__


def _new_publish(
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    packet_id: int | None,
    properties: Properties,
) -> Publish:
    # Unrolled _fast_constructor: this runs once per message the broker receives.
    obj: Publish = _object_new(Publish)
    _set_publish_topic(obj, topic)
    _set_publish_payload(obj, payload)
    _set_publish_qos(obj, qos)
    _set_publish_retain(obj, retain)
    _set_publish_dup(obj, dup)
    _set_publish_packet_id(obj, packet_id)
    _set_publish_properties(obj, properties)
    return obj


def _reason(value: int, allowed: frozenset[ReasonCode], packet: str) -> ReasonCode:
    code = _CODES[value]
    # Each packet's Reason Code section lists the codes it may carry; any
    # other value breaks e.g. [MQTT-3.4.2-1], [MQTT-3.9.3-2], [MQTT-3.11.3-2].
    if code is None or code not in allowed:
        raise ProtocolError(f"reason code 0x{value:02X} is not valid in {packet}")
    return code


def _packet_id(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    packet_id, pos = read_u16(buf, pos, end)
    # [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0): a non-zero Packet Identifier.
    if not packet_id:
        raise ProtocolError("packet identifier 0")
    return packet_id, pos


def _expect_end(pos: int, end: int, packet: str) -> None:
    if pos != end:
        raise MalformedPacket(f"{end - pos} unexpected bytes at the end of {packet}")


def _check_topic_name(topic: str) -> None:
    # [MQTT-3.3.2-2]: "The Topic Name in the PUBLISH packet MUST NOT contain
    # wildcard characters"; 5.0 answers with 0x90 Topic Name invalid.
    if "+" in topic or "#" in topic:
        raise ProtocolError(f"wildcard in topic name {topic!r}", ReasonCode.TOPIC_NAME_INVALID)


# -- CONNECT --------------------------------------------------------------------------------------


def read_protocol_version(buf: bytes, pos: int, end: int) -> ProtocolVersion:
    """The version a CONNECT asks for, read before anything else in it.

    Raises :class:`UnsupportedProtocolVersion` for a well-formed name/level
    other than ``MQTT``/4 or ``MQTT``/5, so the broker can answer with a
    CONNACK before closing; the rest of such a packet is not parsed, as its
    layout may differ.
    """
    name, pos = read_string(buf, pos, end)
    if pos >= end:
        raise MalformedPacket("CONNECT ends before its protocol level")
    level = buf[pos]
    # [MQTT-3.1.2-1]: the protocol name MUST be "MQTT";
    # [MQTT-3.1.2-2]: an unsupported level is answered with 0x01 (3.1.1) / 0x84 (5.0).
    if name != "MQTT" or level not in (4, 5):
        raise UnsupportedProtocolVersion(name, level)
    return ProtocolVersion(level)


def read_connect(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Connect:
    _, pos = read_string(buf, pos, end)  # the protocol name, see read_protocol_version
    pos += 1  # the protocol level
    if pos + 3 > end:
        raise MalformedPacket("CONNECT ends inside its variable header")
    connect_flags = buf[pos]
    keep_alive = (buf[pos + 1] << 8) | buf[pos + 2]
    pos += 3
    # [MQTT-3.1.2-3]: the reserved flag MUST be 0.
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    clean_start = bool(connect_flags & 0x02)
    will_flag = connect_flags & 0x04
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    has_password = connect_flags & 0x40
    has_username = connect_flags & 0x80
    if will_flag:
        # [MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5.0): Will QoS 3 is malformed.
        if will_qos == 3:
            raise MalformedPacket("CONNECT will QoS 3")
    # [MQTT-3.1.2-13]/[MQTT-3.1.2-15] (3.1.1), [MQTT-3.1.2-11]/[MQTT-3.1.2-13] (5.0):
    # without the Will Flag, Will QoS and Will Retain MUST be 0.
    elif will_qos or will_retain:
        raise MalformedPacket("CONNECT will QoS or retain set without the will flag")
    # [MQTT-3.1.2-22] (3.1.1): a password needs a user name (5.0 allows it alone).
    if has_password and not has_username and version != MQTT5:
        raise MalformedPacket("CONNECT password flag without the user name flag")
    properties = EMPTY_PROPERTIES
    if version == MQTT5:
        properties, pos = read_properties(buf, pos, end, PacketType.CONNECT)
        # §3.1.2.11.10: "It is a Protocol Error to include Authentication Data
        # if there is no Authentication Method".
        if properties.authentication_data is not None and properties.authentication_method is None:
            raise ProtocolError("CONNECT authentication data without a method")
    # [MQTT-3.1.3-4]: the ClientID MUST be a UTF-8 Encoded String.
    # Its length and content policy (empty ids, [MQTT-3.1.3-8]) is the broker's.
    client_id, pos = read_string(buf, pos, end)
    will = None
    if will_flag:
        will_properties = EMPTY_PROPERTIES
        if version == MQTT5:
            will_properties, pos = read_properties(buf, pos, end, WILL)
        will_topic, pos = read_string(buf, pos, end)
        # [MQTT-4.7.3-1]: topic names are at least one character long.
        if not will_topic:
            raise ProtocolError("empty will topic", ReasonCode.TOPIC_NAME_INVALID)
        _check_topic_name(will_topic)
        will_payload, pos = read_binary(buf, pos, end)
        will = _new_will(will_topic, will_payload, will_qos, will_retain, will_properties)
    username = None
    if has_username:
        username, pos = read_string(buf, pos, end)
    password = None
    if has_password:
        password, pos = read_binary(buf, pos, end)
    _expect_end(pos, end, "CONNECT")
    return _new_connect(client_id, clean_start, keep_alive, username, password, will, properties)


def read_connack(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Connack:
    if pos + 2 > end:
        raise MalformedPacket("CONNACK shorter than two bytes")
    ack_flags = buf[pos]
    value = buf[pos + 1]
    pos += 2
    # [MQTT-3.2.2-1] (5.0); §3.2.2.1 (3.1.1): bits 7-1 are reserved and MUST be 0.
    if ack_flags & 0xFE:
        raise MalformedPacket("CONNACK reserved flags are set")
    session_present = bool(ack_flags)
    properties = EMPTY_PROPERTIES
    if version == MQTT5:
        code = _reason(value, CONNACK_REASON_CODES, "CONNACK")
        properties, pos = read_properties(buf, pos, end, PacketType.CONNACK)
    else:
        maybe = CONNACK_CODES_FROM_311.get(value)
        if maybe is None:
            raise ProtocolError(f"CONNACK return code 0x{value:02X} is reserved")
        code = maybe
    # [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0): Session Present 0 with a failure.
    if session_present and code:
        raise ProtocolError("CONNACK refuses the connection but claims a session")
    _expect_end(pos, end, "CONNACK")
    return _new_connack(session_present, code, properties)


# -- PUBLISH and its acknowledgements -------------------------------------------------------------


def read_publish(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Publish:
    qos = (flags >> 1) & 0x03
    # [MQTT-3.3.1-4]: a PUBLISH MUST NOT have both QoS bits set.
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = flags >= 8
    # [MQTT-3.3.1-2]: the DUP flag MUST be set to 0 for all QoS 0 messages.
    if dup and not qos:
        raise MalformedPacket("PUBLISH with QoS 0 and DUP set")
    if pos + 2 > end:
        raise MalformedPacket("PUBLISH ends inside its topic length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("PUBLISH topic runs past the end of the packet")
    try:
        topic = buf[pos + 2 : stop].decode()
    except UnicodeDecodeError:
        # [MQTT-1.5.3-1] (3.1.1) / [MQTT-1.5.4-1] (5.0).
        raise MalformedPacket("PUBLISH topic is not well-formed UTF-8") from None
    # [MQTT-1.5.3-2] (3.1.1) / [MQTT-1.5.4-2] (5.0).
    if "\x00" in topic:
        raise MalformedPacket("PUBLISH topic contains U+0000")
    _check_topic_name(topic)
    pos = stop
    packet_id = None
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("PUBLISH ends inside its packet identifier")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        # [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0).
        if not packet_id:
            raise ProtocolError("PUBLISH packet identifier 0")
        pos += 2
    properties = EMPTY_PROPERTIES
    if version == MQTT5:
        if pos >= end:
            raise MalformedPacket("PUBLISH ends before its properties")
        if buf[pos]:
            properties, pos = read_properties(buf, pos, end, PacketType.PUBLISH)
        else:
            pos += 1
        # §3.3.2.1: a zero length Topic Name is allowed only with a Topic Alias;
        # without one it is a Protocol Error.
        if not topic and properties.topic_alias is None:
            raise ProtocolError("PUBLISH with an empty topic and no topic alias")
    elif not topic:
        # [MQTT-4.7.3-1]: topic names are at least one character long.
        raise ProtocolError("PUBLISH with an empty topic", ReasonCode.TOPIC_NAME_INVALID)
    return _new_publish(topic, buf[pos:end], qos, bool(flags & 1), dup, packet_id, properties)


def _ack_reader(
    cls: type[Puback | Pubrec | Pubrel | Pubcomp], allowed: frozenset[ReasonCode]
) -> Reader:
    new = _fast_constructor(cls)
    name = cls.__name__.upper()

    def read_ack(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Packet:
        if end - pos == 2:  # the common case in both versions: just a packet identifier
            packet_id = (buf[pos] << 8) | buf[pos + 1]
            if packet_id:
                return new(packet_id, _SUCCESS, EMPTY_PROPERTIES)
        packet_id, pos = _packet_id(buf, pos, end)
        code = ReasonCode.SUCCESS
        properties = EMPTY_PROPERTIES
        # §3.4.2.1: "The Reason Code and Property Length can be omitted if
        # the Reason Code is 0x00 (Success) and there are no Properties".
        if version == MQTT5 and pos < end:
            code = _reason(buf[pos], allowed, name)
            pos += 1
            # §3.4.2.2.1: a Remaining Length < 4 means no Property Length.
            if pos < end:
                properties, pos = read_properties(buf, pos, end, cls.packet_type)
        _expect_end(pos, end, name)
        return new(packet_id, code, properties)

    read_ack.__name__ = f"read_{cls.__name__.lower()}"
    return read_ack


read_puback = _ack_reader(Puback, PUBACK_REASON_CODES)
read_pubrec = _ack_reader(Pubrec, PUBREC_REASON_CODES)
read_pubrel = _ack_reader(Pubrel, PUBREL_REASON_CODES)
read_pubcomp = _ack_reader(Pubcomp, PUBCOMP_REASON_CODES)


# -- SUBSCRIBE / UNSUBSCRIBE and their acknowledgements -------------------------------------------


def read_subscribe(
    buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion
) -> Subscribe:
    packet_id, pos = _packet_id(buf, pos, end)
    properties = EMPTY_PROPERTIES
    v5 = version == MQTT5
    if v5:
        properties, pos = read_properties(buf, pos, end, PacketType.SUBSCRIBE)
    entries: list[tuple[str, SubscriptionOptions]] = []
    while pos < end:
        topic_filter, pos = read_string(buf, pos, end)
        if pos >= end:
            raise MalformedPacket("SUBSCRIBE entry without its options byte")
        options = buf[pos]
        pos += 1
        qos = options & 0x03
        # [MQTT-3.8.3-4] (3.1.1): bits 7-2 are reserved and MUST be 0;
        # [MQTT-3.8.3-5] (5.0): bits 7-6 are reserved and MUST be 0.
        if options & (0xC0 if v5 else 0xFC):
            raise MalformedPacket("SUBSCRIBE options reserved bits are set")
        # §3.8.3.1: QoS 3 is a Malformed Packet.
        if qos == 3:
            raise MalformedPacket("SUBSCRIBE with QoS 3")
        retain_handling = (options >> 4) & 0x03
        # §3.8.3.1 (5.0): "It is a Protocol Error to send a Retain Handling value of 3".
        if retain_handling == 3:
            raise ProtocolError("SUBSCRIBE with retain handling 3")
        no_local = bool(options & 0x04)
        # [MQTT-3.8.3-4] (5.0): No Local on a Shared Subscription is a Protocol Error.
        if no_local and topic_filter.startswith("$share/"):
            raise ProtocolError("SUBSCRIBE with no local on a shared subscription")
        entries.append(
            (topic_filter, _new_options(qos, no_local, bool(options & 0x08), retain_handling))
        )
    # [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (5.0): at least one Topic Filter.
    if not entries:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return _new_subscribe(packet_id, tuple(entries), properties)


_SUBACK_311 = {0x00: 0x00, 0x01: 0x01, 0x02: 0x02, 0x80: 0x80}


def read_suback(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Suback:
    packet_id, pos = _packet_id(buf, pos, end)
    properties = EMPTY_PROPERTIES
    if version == MQTT5:
        properties, pos = read_properties(buf, pos, end, PacketType.SUBACK)
        codes = tuple(_reason(value, SUBACK_REASON_CODES, "SUBACK") for value in buf[pos:end])
    else:
        # [MQTT-3.9.3-2] (3.1.1): return codes other than 0x00, 0x01, 0x02 and
        # 0x80 are reserved and MUST NOT be used.
        for value in buf[pos:end]:
            if value not in _SUBACK_311:
                raise ProtocolError(f"SUBACK return code 0x{value:02X} is reserved")
        codes = tuple(_CODES[value] for value in buf[pos:end])  # type: ignore[misc]
    if not codes:
        raise ProtocolError("SUBACK without return codes")
    return _new_suback(packet_id, codes, properties)


def read_unsubscribe(
    buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion
) -> Unsubscribe:
    packet_id, pos = _packet_id(buf, pos, end)
    properties = EMPTY_PROPERTIES
    if version == MQTT5:
        properties, pos = read_properties(buf, pos, end, PacketType.UNSUBSCRIBE)
    filters: list[str] = []
    while pos < end:
        topic_filter, pos = read_string(buf, pos, end)
        filters.append(topic_filter)
    # [MQTT-3.10.3-2]: an UNSUBSCRIBE without a payload is a Protocol Error.
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return _new_unsubscribe(packet_id, tuple(filters), properties)


def read_unsuback(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Unsuback:
    packet_id, pos = _packet_id(buf, pos, end)
    properties = EMPTY_PROPERTIES
    codes: tuple[ReasonCode, ...] = ()
    if version == MQTT5:
        properties, pos = read_properties(buf, pos, end, PacketType.UNSUBACK)
        codes = tuple(_reason(value, UNSUBACK_REASON_CODES, "UNSUBACK") for value in buf[pos:end])
        if not codes:
            raise ProtocolError("UNSUBACK without reason codes")
        pos = end
    _expect_end(pos, end, "UNSUBACK")
    return _new_unsuback(packet_id, codes, properties)


# -- the rest -------------------------------------------------------------------------------------

_PINGREQ = Pingreq()
_PINGRESP = Pingresp()


def read_pingreq(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Pingreq:
    _expect_end(pos, end, "PINGREQ")
    return _PINGREQ


def read_pingresp(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Pingresp:
    _expect_end(pos, end, "PINGRESP")
    return _PINGRESP


def _code_and_properties(
    buf: bytes,
    pos: int,
    end: int,
    packet_type: int,
    allowed: frozenset[ReasonCode],
    name: str,
) -> tuple[ReasonCode, Properties]:
    # §3.14.2.1 / §3.15.2.1: a Remaining Length of 0 means Success and no
    # properties; a Remaining Length of 1 means no Property Length.
    code = ReasonCode.SUCCESS
    properties = EMPTY_PROPERTIES
    if pos < end:
        code = _reason(buf[pos], allowed, name)
        pos += 1
        if pos < end:
            properties, pos = read_properties(buf, pos, end, packet_type)
    _expect_end(pos, end, name)
    return code, properties


def read_disconnect(
    buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion
) -> Disconnect:
    if version != MQTT5:
        _expect_end(pos, end, "DISCONNECT")
        return _new_disconnect(ReasonCode.NORMAL_DISCONNECTION, EMPTY_PROPERTIES)
    code, properties = _code_and_properties(
        buf, pos, end, PacketType.DISCONNECT, DISCONNECT_REASON_CODES, "DISCONNECT"
    )
    return _new_disconnect(code, properties)


def read_auth(buf: bytes, pos: int, end: int, flags: int, version: ProtocolVersion) -> Auth:
    code, properties = _code_and_properties(
        buf, pos, end, PacketType.AUTH, AUTH_REASON_CODES, "AUTH"
    )
    return _new_auth(code, properties)


READERS: dict[int, Reader] = {
    PacketType.CONNECT: read_connect,
    PacketType.CONNACK: read_connack,
    PacketType.PUBLISH: read_publish,
    PacketType.PUBACK: read_puback,
    PacketType.PUBREC: read_pubrec,
    PacketType.PUBREL: read_pubrel,
    PacketType.PUBCOMP: read_pubcomp,
    PacketType.SUBSCRIBE: read_subscribe,
    PacketType.SUBACK: read_suback,
    PacketType.UNSUBSCRIBE: read_unsubscribe,
    PacketType.UNSUBACK: read_unsuback,
    PacketType.PINGREQ: read_pingreq,
    PacketType.PINGRESP: read_pingresp,
    PacketType.DISCONNECT: read_disconnect,
    PacketType.AUTH: read_auth,
}
