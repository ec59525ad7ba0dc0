"""The MQTT packet values: frozen, slotted dataclasses, validated once.

How this works: each control packet of MQTT 3.1.1 and 5.0 is one dataclass
whose ``__post_init__`` checks the rules a caller could get wrong when building
one by hand (QoS range, packet identifiers, reason codes valid for the packet)
and raises :class:`LocalProtocolError`. The decoder has already checked the
wire rules, so it builds packets through :func:`_fast_constructor`, which skips
``__init__``/``__post_init__`` (twice as fast for a frozen dataclass; PUBLISH
decoding is the broker's hot path).

Reason codes use the MQTT 5.0 names for both versions; fields that 3.1.1 has no
room for (properties, most reason codes) are dropped when encoding for 3.1.1
and take their defaults when decoding 3.1.1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

from headwater.mqtt.errors import LocalProtocolError
from headwater.mqtt.reasons import (
    AUTH_REASON_CODES,
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

__all__ = [
    "EMPTY_PROPERTIES",
    "Auth",
    "Connack",
    "Connect",
    "Disconnect",
    "Packet",
    "PacketType",
    "Pingreq",
    "Pingresp",
    "Properties",
    "Puback",
    "Pubcomp",
    "Publish",
    "Pubrec",
    "Pubrel",
    "Suback",
    "Subscribe",
    "SubscriptionOptions",
    "Unsuback",
    "Unsubscribe",
    "Will",
]

MAX_PACKET_ID = 0xFFFF
# §1.5.5 Variable Byte Integer: the largest value four bytes can hold; also the
# largest Remaining Length and the largest Subscription Identifier.
MAX_VARIABLE_BYTE_INTEGER = 268_435_455


class PacketType:
    """The MQTT Control Packet type numbers (§2.1.2, the high nibble of byte 1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


@dataclass(frozen=True, slots=True, repr=False)
class Properties:
    """The MQTT 5.0 properties of a packet (§2.2.2.2), one field per property.

    ``None`` (or an empty tuple) means absent. ``user_properties`` keeps the
    (name, value) pairs in wire order, duplicates included [MQTT-3.3.2-18];
    ``subscription_identifiers`` keeps every identifier a PUBLISH carries
    (a SUBSCRIBE carries at most one). Which packet may carry which property
    is checked by the codec, not here.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __repr__(self) -> str:
        """Only the properties present: a packet's repr stays readable in logs."""
        present = (
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) not in (None, ())
        )
        return f"Properties({', '.join(present)})"


EMPTY_PROPERTIES = Properties()


def _check_packet_id(packet_id: int) -> None:
    # [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0): a non-zero 16-bit Packet Identifier.
    if not 0 < packet_id <= MAX_PACKET_ID:
        raise LocalProtocolError(f"packet identifier {packet_id} outside 1..65535")


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise LocalProtocolError(f"QoS {qos} is not 0, 1 or 2")


def _check_reason(code: ReasonCode, allowed: frozenset[ReasonCode], packet: object) -> None:
    if code not in allowed:
        name = packet if isinstance(packet, str) else type(packet).__name__.upper()
        raise LocalProtocolError(f"reason code {code!r} is not valid in {name}")


@dataclass(frozen=True, slots=True)
class Will:
    """The will message of a CONNECT (§3.1.2.5, §3.1.3.2..3.1.3.4)."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_qos(self.qos)
        # [MQTT-3.1.3-11] (3.1.1) / [MQTT-3.1.3-12] (5.0): the Will Topic is a
        # Topic Name: at least one character [MQTT-4.7.3-1], no wildcards.
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise LocalProtocolError(f"invalid will topic {self.topic!r}")


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT (§3.1). ``clean_start`` is 3.1.1's CleanSession flag."""

    packet_type: ClassVar[int] = PacketType.CONNECT

    client_id: str = ""
    clean_start: bool = True
    keep_alive: int = 0
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        if not 0 <= self.keep_alive <= 0xFFFF:
            raise LocalProtocolError(f"keep alive {self.keep_alive} outside 0..65535")
        props = self.properties
        # §3.1.2.11.10: no Authentication Data without an Authentication Method.
        if props.authentication_data is not None and props.authentication_method is None:
            raise LocalProtocolError("authentication data without an authentication method")


@dataclass(frozen=True, slots=True)
class Connack:
    """CONNACK (§3.2). For 3.1.1 the reason code maps to a return code."""

    packet_type: ClassVar[int] = PacketType.CONNACK

    session_present: bool = False
    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, CONNACK_REASON_CODES, "CONNACK")
        # [MQTT-3.2.2-4] (3.1.1) / [MQTT-3.2.2-6] (5.0): Session Present 0 on failure.
        if self.session_present and self.reason_code != ReasonCode.SUCCESS:
            raise LocalProtocolError("a refused CONNACK must have session_present=False")


@dataclass(frozen=True, slots=True, init=False)
class Publish:
    """PUBLISH (§3.3). ``packet_id`` is None exactly when ``qos`` is 0.

    In 5.0 an empty ``topic`` with a ``topic_alias`` property refers to an
    alias set earlier on the connection; resolving it is the broker's job.
    """

    packet_type: ClassVar[int] = PacketType.PUBLISH

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None
    properties: Properties

    def __init__(
        self,
        topic: str,
        payload: bytes = b"",
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> None:
        # Written out rather than generated: a frozen dataclass __init__ goes
        # through object.__setattr__ per field, twice as slow as the slot
        # setters, and PUBLISH is built once per message the broker sends.
        if qos == 0:
            # [MQTT-2.3.1-5] (3.1.1) / [MQTT-2.2.1-2] (5.0): no Packet Identifier at QoS 0.
            if packet_id is not None:
                raise LocalProtocolError("a QoS 0 PUBLISH has no packet identifier")
            # [MQTT-3.3.1-2]: the DUP flag MUST be set to 0 for all QoS 0 messages.
            if dup:
                raise LocalProtocolError("a QoS 0 PUBLISH cannot have dup=True")
        elif qos != 1 and qos != 2:
            raise LocalProtocolError(f"QoS {qos} is not 0, 1 or 2")
        # [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0): a non-zero 16-bit identifier.
        elif packet_id is None or not 0 < packet_id <= MAX_PACKET_ID:
            raise LocalProtocolError(f"a QoS {qos} PUBLISH needs a packet identifier in 1..65535")
        # [MQTT-3.3.2-2]: the Topic Name MUST NOT contain wildcard characters.
        if "+" in topic or "#" in topic:
            raise LocalProtocolError(f"wildcard in PUBLISH topic {topic!r}")
        _set_publish_topic(self, topic)
        _set_publish_payload(self, payload)
        _set_publish_qos(self, qos)
        _set_publish_retain(self, retain)
        _set_publish_dup(self, dup)
        _set_publish_packet_id(self, packet_id)
        _set_publish_properties(self, properties)


@dataclass(frozen=True, slots=True, init=False)
class _Ack:
    """Shared shape of PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4..§3.7)."""

    allowed_reason_codes: ClassVar[frozenset[ReasonCode]] = frozenset()

    packet_id: int
    reason_code: ReasonCode
    properties: Properties

    def __init__(
        self,
        packet_id: int,
        reason_code: ReasonCode = ReasonCode.SUCCESS,
        properties: Properties = EMPTY_PROPERTIES,
    ) -> None:
        # Written out for speed, as Publish's: one ack per QoS 1/2 message.
        # [MQTT-2.3.1-1] (3.1.1) / [MQTT-2.2.1-3] (5.0): a non-zero 16-bit identifier.
        if not 0 < packet_id <= MAX_PACKET_ID:
            raise LocalProtocolError(f"packet identifier {packet_id} outside 1..65535")
        _check_reason(reason_code, self.allowed_reason_codes, self)
        _set_ack_packet_id(self, packet_id)
        _set_ack_reason_code(self, reason_code)
        _set_ack_properties(self, properties)


@dataclass(frozen=True, slots=True, init=False)
class Puback(_Ack):
    """PUBACK (§3.4): the answer to a QoS 1 PUBLISH."""

    packet_type: ClassVar[int] = PacketType.PUBACK
    allowed_reason_codes: ClassVar[frozenset[ReasonCode]] = PUBACK_REASON_CODES


@dataclass(frozen=True, slots=True, init=False)
class Pubrec(_Ack):
    """PUBREC (§3.5): the first answer to a QoS 2 PUBLISH."""

    packet_type: ClassVar[int] = PacketType.PUBREC
    allowed_reason_codes: ClassVar[frozenset[ReasonCode]] = PUBREC_REASON_CODES


@dataclass(frozen=True, slots=True, init=False)
class Pubrel(_Ack):
    """PUBREL (§3.6): the answer to PUBREC."""

    packet_type: ClassVar[int] = PacketType.PUBREL
    allowed_reason_codes: ClassVar[frozenset[ReasonCode]] = PUBREL_REASON_CODES


@dataclass(frozen=True, slots=True, init=False)
class Pubcomp(_Ack):
    """PUBCOMP (§3.7): the answer to PUBREL, which ends a QoS 2 flow."""

    packet_type: ClassVar[int] = PacketType.PUBCOMP
    allowed_reason_codes: ClassVar[frozenset[ReasonCode]] = PUBCOMP_REASON_CODES


@dataclass(frozen=True, slots=True)
class SubscriptionOptions:
    """The options byte of one SUBSCRIBE entry (§3.8.3.1).

    3.1.1 carries only ``qos``; the other fields keep their defaults there.
    ``retain_handling``: 0 send retained messages on subscribe, 1 only if the
    subscription is new, 2 never.
    """

    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0

    def __post_init__(self) -> None:
        _check_qos(self.qos)
        # [MQTT-3.8.3-5] (5.0) context: Retain Handling 3 is a Protocol Error.
        if self.retain_handling not in (0, 1, 2):
            raise LocalProtocolError(f"retain handling {self.retain_handling} is not 0, 1 or 2")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE (§3.8): (topic filter, options) pairs in wire order.

    The codec checks only the wire rules (UTF-8, no U+0000, options bits). A
    filter whose *syntax* is wrong (``a/#/b``, ``a+``, ``""``, a bad
    ``$share/``) still decodes, so that the broker can refuse just that entry
    in the SUBACK (0x80 in 3.1.1, 0x8F Topic Filter invalid in 5.0) rather than
    closing the connection; see ``headwater.mqtt.topics.validate_topic_filter``.
    """

    packet_type: ClassVar[int] = PacketType.SUBSCRIBE

    packet_id: int
    subscriptions: tuple[tuple[str, SubscriptionOptions], ...]
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        # [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (5.0): at least one Topic Filter.
        if not self.subscriptions:
            raise LocalProtocolError("a SUBSCRIBE needs at least one topic filter")
        for topic_filter, options in self.subscriptions:
            # [MQTT-3.8.3-4] (5.0): No Local on a Shared Subscription is a Protocol Error.
            if options.no_local and topic_filter.startswith("$share/"):
                raise LocalProtocolError(f"no_local on shared subscription {topic_filter!r}")


@dataclass(frozen=True, slots=True)
class Suback:
    """SUBACK (§3.9): one reason code per SUBSCRIBE entry, in order [MQTT-3.8.4-6].

    For 3.1.1 each code is sent as its granted QoS, or 0x80 for any failure.
    """

    packet_type: ClassVar[int] = PacketType.SUBACK

    packet_id: int
    reason_codes: tuple[ReasonCode, ...]
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        for code in self.reason_codes:
            _check_reason(code, SUBACK_REASON_CODES, "SUBACK")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE (§3.10). Filter syntax is left to the broker, as in SUBSCRIBE."""

    packet_type: ClassVar[int] = PacketType.UNSUBSCRIBE

    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        # [MQTT-3.10.3-2]: the payload MUST contain at least one Topic Filter.
        if not self.topic_filters:
            raise LocalProtocolError("an UNSUBSCRIBE needs at least one topic filter")


@dataclass(frozen=True, slots=True)
class Unsuback:
    """UNSUBACK (§3.11). 3.1.1 has no payload: ``reason_codes`` is dropped/empty."""

    packet_type: ClassVar[int] = PacketType.UNSUBACK

    packet_id: int
    reason_codes: tuple[ReasonCode, ...] = ()
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        for code in self.reason_codes:
            _check_reason(code, UNSUBACK_REASON_CODES, "UNSUBACK")


@dataclass(frozen=True, slots=True)
class Pingreq:
    """PINGREQ (§3.12)."""

    packet_type: ClassVar[int] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class Pingresp:
    """PINGRESP (§3.13)."""

    packet_type: ClassVar[int] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT (§3.14). In 3.1.1 it has no body and only a client sends it."""

    packet_type: ClassVar[int] = PacketType.DISCONNECT

    reason_code: ReasonCode = ReasonCode.NORMAL_DISCONNECTION
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, DISCONNECT_REASON_CODES, "DISCONNECT")


@dataclass(frozen=True, slots=True)
class Auth:
    """AUTH (§3.15), MQTT 5.0 only: a step of enhanced authentication."""

    packet_type: ClassVar[int] = PacketType.AUTH

    reason_code: ReasonCode = ReasonCode.SUCCESS
    properties: Properties = EMPTY_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, AUTH_REASON_CODES, "AUTH")


Packet = (
    Connect
    | Connack
    | Publish
    | Puback
    | Pubrec
    | Pubrel
    | Pubcomp
    | Subscribe
    | Suback
    | Unsubscribe
    | Unsuback
    | Pingreq
    | Pingresp
    | Disconnect
    | Auth
)

_T = TypeVar("_T")


def _fast_constructor(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for ``cls`` that skips ``__init__`` and validation.

    Only for values the decoder has already validated against the wire rules.
    It sets the slots through their member descriptors, which is about twice as
    fast as a frozen dataclass ``__init__``.
    """
    setters = tuple(_slot_setter(cls, f.name) for f in fields(cls))  # type: ignore[arg-type]
    new = object.__new__

    if len(setters) == 3:  # the acknowledgements, on the QoS 1/2 hot path: unrolled
        set0, set1, set2 = setters

        def make3(value0: Any, value1: Any, value2: Any) -> _T:
            obj = new(cls)
            set0(obj, value0)
            set1(obj, value1)
            set2(obj, value2)
            return obj

        return make3

    def make(*values: Any) -> _T:
        obj = new(cls)
        for setter, value in zip(setters, values, strict=True):
            setter(obj, value)
        return obj

    return make


def _slot_setter(cls: type, name: str) -> Callable[[Any, Any], None]:
    """The ``__set__`` of slot ``name``: it bypasses the frozen ``__setattr__``."""
    descriptor: Any = getattr(cls, name)  # a member descriptor, possibly inherited
    setter: Callable[[Any, Any], None] = descriptor.__set__
    return setter


_set_publish_topic = _slot_setter(Publish, "topic")
_set_publish_payload = _slot_setter(Publish, "payload")
_set_publish_qos = _slot_setter(Publish, "qos")
_set_publish_retain = _slot_setter(Publish, "retain")
_set_publish_dup = _slot_setter(Publish, "dup")
_set_publish_packet_id = _slot_setter(Publish, "packet_id")
_set_publish_properties = _slot_setter(Publish, "properties")
_set_ack_packet_id = _slot_setter(_Ack, "packet_id")
_set_ack_reason_code = _slot_setter(_Ack, "reason_code")
_set_ack_properties = _slot_setter(_Ack, "properties")
