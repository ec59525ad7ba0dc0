"""MQTT data representations (§1.5 of both standards): read and write.

How this works: readers take the packet buffer (``bytes``), a position and the
end of the packet, and return ``(value, new_position)``; they never read past
``end`` and raise :class:`MalformedPacket` when a value does not fit or is
ill-formed. Writers return ``bytes``. Nothing here allocates more than the
value itself.
"""

from __future__ import annotations

from headwater.mqtt.errors import LocalProtocolError, MalformedPacket

MAX_STRING_LENGTH = 0xFFFF
MAX_VARIABLE_BYTE_INTEGER = 268_435_455


def read_u8(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise MalformedPacket("packet ends inside a byte field")
    return buf[pos], pos + 1


def read_u16(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside a two byte integer")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def read_u32(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    if pos + 4 > end:
        raise MalformedPacket("packet ends inside a four byte integer")
    return int.from_bytes(buf[pos : pos + 4], "big"), pos + 4


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """§1.5.5 Variable Byte Integer: at most four bytes, minimally encoded."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= end:
            raise MalformedPacket("packet ends inside a variable byte integer")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            # [MQTT-1.5.5-1] (5.0): "the minimum number of bytes necessary".
            if byte == 0 and i:
                raise MalformedPacket("variable byte integer is not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def read_binary(buf: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """§1.5.6 (5.0) Binary Data: a two byte length, then that many bytes."""
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside a length prefix")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("length prefix runs past the end of the packet")
    return buf[pos + 2 : stop], stop


def read_string(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """§1.5.3 (3.1.1) / §1.5.4 (5.0) UTF-8 Encoded String."""
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside a length prefix")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("string runs past the end of the packet")
    try:
        # Python's strict UTF-8 codec rejects overlong forms and encoded
        # surrogates U+D800..U+DFFF: [MQTT-1.5.3-1] (3.1.1) / [MQTT-1.5.4-1] (5.0).
        text = buf[pos + 2 : stop].decode()
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"ill-formed UTF-8 string: {exc.reason}") from None
    # [MQTT-1.5.3-2] (3.1.1) / [MQTT-1.5.4-2] (5.0): no U+0000.
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000")
    return text, stop


def write_varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL_VARINTS[value]
    if value > MAX_VARIABLE_BYTE_INTEGER:
        raise LocalProtocolError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = tuple(bytes((i,)) for i in range(0x80))


def write_binary(value: bytes) -> bytes:
    if len(value) > MAX_STRING_LENGTH:
        raise LocalProtocolError(f"binary data of {len(value)} bytes exceeds 65535")
    return len(value).to_bytes(2, "big") + value


def write_string(value: str) -> bytes:
    # [MQTT-1.5.3-2] (3.1.1) / [MQTT-1.5.4-2] (5.0): a sender must not put U+0000 in a string.
    if "\x00" in value:
        raise LocalProtocolError(f"string {value!r} contains U+0000")
    try:
        data = value.encode()
    except UnicodeEncodeError as exc:  # lone surrogates
        raise LocalProtocolError(f"string {value!r} is not valid Unicode") from exc
    if len(data) > MAX_STRING_LENGTH:
        raise LocalProtocolError(f"string of {len(data)} bytes exceeds 65535")
    return len(data).to_bytes(2, "big") + data
