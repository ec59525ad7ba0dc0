"""The sans-IO MQTT 3.1.1 / 5.0 codec: bytes in, packets out; packets in, bytes out.

How this works (h11's shape): a :class:`Decoder` per connection direction is
fed whatever bytes arrive (``receive_data``) and hands out whole packets
(``next_packet``) or :data:`NEED_DATA`; chunking is arbitrary and bytes after a
packet stay buffered for the next call. It frames the packet (fixed header,
Remaining Length, ``max_packet_size``), checks the direction and the fixed
header flags, then calls the reader for the packet type
(``_readers.READERS``). :func:`encode` is the inverse through
``_writers.WRITERS``; :func:`encode_publish` frames a PUBLISH from cached
parts for fan-out.

A server-side decoder starts with ``version=None``: the first packet must be a
CONNECT [MQTT-3.1.0-1], which fixes the version for the rest of the
connection; a second CONNECT is a protocol error [MQTT-3.1.0-2]. Every error is
an :class:`MqttError` carrying the reason code to answer with; after one the
decoder is broken and the connection must close.

What is left to the broker, on purpose: topic filter *syntax* in SUBSCRIBE
and UNSUBSCRIBE, which is answered per filter (0x80 in 3.1.1, 0x8F in 5.0)
rather than by closing, so the decoder accepts any well-formed string there
and ``headwater.mqtt.topics.validate_topic_filter`` judges it; topic alias
resolution and limits; receive maximum; the empty client id policy;
authentication; and the optional UTF-8 check of payloads whose Payload Format
Indicator is 1 (0x99).
"""

from __future__ import annotations

from enum import Enum
from typing import Final, Literal

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
)
from headwater.mqtt._properties import encode_properties
from headwater.mqtt._protocol import ProtocolVersion
from headwater.mqtt._readers import READERS, read_protocol_version, read_publish
from headwater.mqtt._writers import WRITERS, encode_publish
from headwater.mqtt.errors import (
    LocalProtocolError,
    MalformedPacket,
    MqttError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from headwater.mqtt.reasons import ReasonCode

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "EMPTY_PROPERTIES",
    "NEED_DATA",
    "Auth",
    "Connack",
    "Connect",
    "Decoder",
    "Disconnect",
    "LocalProtocolError",
    "MalformedPacket",
    "MqttError",
    "Packet",
    "PacketTooLarge",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "ProtocolError",
    "ProtocolVersion",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "ReasonCode",
    "Suback",
    "Subscribe",
    "SubscriptionOptions",
    "Unsuback",
    "Unsubscribe",
    "UnsupportedProtocolVersion",
    "Will",
    "encode",
    "encode_properties",
    "encode_publish",
]


class _NeedData(Enum):
    """The type of :data:`NEED_DATA` (an enum, so that ``is NEED_DATA`` narrows types)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA
"""Returned by :meth:`Decoder.next_packet` until a whole packet is buffered."""

# §2.2.3 (3.1.1) / §1.5.5 (5.0): the largest Remaining Length is 268,435,455,
# so the largest packet is that plus a 5 byte fixed header. The broker should
# pass its own, much smaller, limit.
DEFAULT_MAX_PACKET_SIZE = 268_435_455 + 5

# Fixed header flags (low nibble of byte 1) each packet type MUST carry;
# PUBLISH (None) has real flags. [MQTT-2.2.2-1]/[MQTT-2.2.2-2] (3.1.1),
# [MQTT-2.1.3-1] (5.0): other values make a Malformed Packet.
_FLAGS: tuple[int | None, ...] = (
    -1,  # 0: reserved, never valid
    0x0,  # CONNECT
    0x0,  # CONNACK
    None,  # PUBLISH
    0x0,  # PUBACK
    0x0,  # PUBREC
    0x2,  # PUBREL [MQTT-3.6.1-1]
    0x0,  # PUBCOMP
    0x2,  # SUBSCRIBE [MQTT-3.8.1-1]
    0x0,  # SUBACK
    0x2,  # UNSUBSCRIBE [MQTT-3.10.1-1]
    0x0,  # UNSUBACK
    0x0,  # PINGREQ
    0x0,  # PINGRESP
    0x0,  # DISCONNECT
    0x0,  # AUTH
)

_P = PacketType
# The packet types each side may receive (§2.1.2 "Direction of flow").
_FROM_CLIENT = frozenset(
    {_P.CONNECT, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP}
    | {_P.SUBSCRIBE, _P.UNSUBSCRIBE, _P.PINGREQ, _P.DISCONNECT, _P.AUTH}
)
_FROM_SERVER = frozenset(
    {_P.CONNACK, _P.PUBLISH, _P.PUBACK, _P.PUBREC, _P.PUBREL, _P.PUBCOMP}
    | {_P.SUBACK, _P.UNSUBACK, _P.PINGRESP, _P.DISCONNECT, _P.AUTH}
)
_MQTT5 = ProtocolVersion.MQTT5


class Decoder:
    """Incremental MQTT decoder for one direction of one connection.

    ``server=True`` decodes what a client sends (the broker's side). A client
    side decoder needs ``version`` up front, since CONNACK does not say it.
    ``max_packet_size`` counts the whole packet, fixed header included, as
    MQTT 5.0's Maximum Packet Size does (§3.1.2.11.4). End of stream is the
    caller's business: bytes left in :attr:`unprocessed_data` at EOF are a
    truncated packet. After raising, the decoder raises the same error again.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_connected",
        "_error",
        "_need",
        "_pending",
        "_pos",
        "_receivable",
        "max_packet_size",
        "server",
        "version",
    )

    def __init__(
        self,
        *,
        server: bool = True,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        version: ProtocolVersion | None = None,
    ) -> None:
        if not server and version is None:
            raise ValueError("a client-side Decoder needs the protocol version")
        if max_packet_size < 2:
            raise ValueError("max_packet_size must allow the two byte fixed header")
        self.server = server
        self.max_packet_size = max_packet_size
        self.version: ProtocolVersion | None = version
        self._receivable = _FROM_CLIENT if server else _FROM_SERVER
        self._connected = False  # a CONNECT has been decoded
        self._buf = b""  # bytes being parsed, from _pos on
        self._pos = 0
        self._chunks: list[bytes] = []  # received, not yet joined onto _buf
        self._pending = 0  # total length of _chunks
        self._need = 2  # bytes the next packet needs at least (a fixed header)
        self._error: MqttError | None = None

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; an empty ``data`` is ignored."""
        if data:
            self._chunks.append(bytes(data))
            self._pending += len(data)

    @property
    def buffered(self) -> int:
        """Bytes held: received and not yet returned as part of a packet."""
        return len(self._buf) - self._pos + self._pending

    def release(self) -> None:
        """Drop every byte held (the connection is gone); ``next_packet`` raises after it."""
        self._buf = b""
        self._pos = 0
        self._chunks.clear()
        self._pending = 0
        self._error = self._error or MalformedPacket("the decoder was released")

    @property
    def unprocessed_data(self) -> bytes:
        """The bytes received but not yet returned as part of a packet."""
        return b"".join([self._buf[self._pos :], *self._chunks])

    def next_packet(self) -> Packet | Literal[_NeedData.NEED_DATA]:
        """The next whole packet, or :data:`NEED_DATA`. Raises :class:`MqttError`."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos + self._pending
        if available < self._need:
            return NEED_DATA
        if self._chunks:
            # Join only once enough bytes have arrived for the next packet, so
            # a large packet arriving in many chunks is copied O(n) times.
            if pos == len(buf) and len(self._chunks) == 1:
                buf = self._chunks[0]
            else:
                buf = b"".join([buf[pos:], *self._chunks])
            self._buf = buf
            pos = self._pos = 0
            self._chunks.clear()
            self._pending = 0
        try:
            packet = self._next(buf, pos, available)
        except MqttError as exc:
            self._error = exc
            raise
        if self._pos == len(buf):
            # Everything parsed: do not keep the last chunk alive while idle.
            self._buf = b""
            self._pos = 0
        return packet

    def _next(self, buf: bytes, pos: int, available: int) -> Packet | Literal[_NeedData.NEED_DATA]:
        first = buf[pos]
        # §2.2.3 (3.1.1) / §1.5.5 (5.0): the Remaining Length, 1 to 4 bytes.
        length = buf[pos + 1]
        header = 2
        if length >= 0x80:
            length &= 0x7F
            shift = 7
            while True:
                if header == 5:
                    raise MalformedPacket("remaining length longer than four bytes")
                if header >= available:
                    self._need = header + 1
                    return NEED_DATA
                byte = buf[pos + header]
                header += 1
                length |= (byte & 0x7F) << shift
                if byte < 0x80:
                    # [MQTT-1.5.5-1] (5.0): encoded with the minimum number of bytes.
                    if not byte:
                        raise MalformedPacket("remaining length is not minimally encoded")
                    break
                shift += 7
        total = header + length
        if total > self.max_packet_size:
            raise PacketTooLarge(total, self.max_packet_size)
        if total > available:
            self._need = total
            return NEED_DATA
        start = pos + header
        end = pos + total
        self._pos = end
        self._need = 2
        packet_type = first >> 4
        flags = first & 0x0F
        version = self.version
        if packet_type == 3 and version is not None:
            # The hot path: no table lookups for PUBLISH.
            packet = read_publish(buf, start, end, flags, version)
            if self.server and packet.properties.subscription_identifiers:
                # [MQTT-3.3.4-6]: a client MUST NOT send a Subscription Identifier.
                raise ProtocolError("PUBLISH from a client carries a subscription identifier")
            return packet
        expected = _FLAGS[packet_type]
        if packet_type == 0 or (packet_type == _P.AUTH and version != _MQTT5):
            # Packet type 0 is reserved in both versions, 15 in 3.1.1 (§2.2.1).
            raise MalformedPacket(f"reserved packet type {packet_type}")
        if expected is not None and flags != expected:
            raise MalformedPacket(f"invalid fixed header flags 0x{flags:X} for type {packet_type}")
        if packet_type not in self._receivable:
            raise ProtocolError(f"packet type {packet_type} cannot flow in this direction")
        if packet_type == _P.CONNECT:
            # [MQTT-3.1.0-2]: a second CONNECT is a Protocol Error.
            if self._connected:
                raise ProtocolError("second CONNECT on the connection")
            version = read_protocol_version(buf, start, end)
            connect = READERS[packet_type](buf, start, end, flags, version)
            self.version = version
            self._connected = True
            return connect
        if version is None:
            # [MQTT-3.1.0-1]: the first packet from the client MUST be CONNECT.
            raise ProtocolError(f"packet type {packet_type} before CONNECT")
        if packet_type == _P.DISCONNECT and not self.server and version != _MQTT5:
            # 3.1.1 §3.14: DISCONNECT flows from the client to the server only.
            raise ProtocolError("DISCONNECT from an MQTT 3.1.1 server")
        return READERS[packet_type](buf, start, end, flags, version)


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """The bytes of ``packet`` for a connection speaking ``version``.

    What 3.1.1 cannot carry is left out: properties, and reason codes of the
    acknowledgements and DISCONNECT. CONNACK and SUBACK codes are mapped to
    3.1.1 return codes. Raises :class:`LocalProtocolError` when the packet
    cannot be expressed (AUTH in 3.1.1, a CONNACK code 3.1.1 lacks, a property
    in the wrong packet, a string too long).
    """
    return WRITERS[type(packet)](packet, version)
