"""MQTT reason codes, and which of them each packet type may carry.

How this works: :class:`ReasonCode` names every MQTT 5.0 reason code (§2.4).
The codec uses these names for both protocol versions: a 3.1.1 CONNACK return
code or SUBACK return code is translated at the wire (see
:data:`CONNACK_CODES_311`), so the broker thinks in one vocabulary. The
``*_REASON_CODES`` sets list the codes each packet may carry; a decoder that
meets another code raises a protocol error.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AUTH_REASON_CODES",
    "CONNACK_CODES_311",
    "CONNACK_CODES_FROM_311",
    "CONNACK_REASON_CODES",
    "DISCONNECT_REASON_CODES",
    "PUBACK_REASON_CODES",
    "PUBCOMP_REASON_CODES",
    "PUBREC_REASON_CODES",
    "PUBREL_REASON_CODES",
    "SUBACK_REASON_CODES",
    "UNSUBACK_REASON_CODES",
    "ReasonCode",
    "connack_code_311",
]


class ReasonCode(IntEnum):
    """MQTT 5.0 reason codes (§2.4). A value >= 0x80 means failure."""

    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

    @property
    def is_failure(self) -> bool:
        """True for codes >= 0x80 (§2.4: "a failure")."""
        return self >= 0x80


_R = ReasonCode

# §3.2.2.2 Connect Reason Code.
CONNACK_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {
        _R.SUCCESS,
        _R.UNSPECIFIED_ERROR,
        _R.MALFORMED_PACKET,
        _R.PROTOCOL_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.UNSUPPORTED_PROTOCOL_VERSION,
        _R.CLIENT_IDENTIFIER_NOT_VALID,
        _R.BAD_USER_NAME_OR_PASSWORD,
        _R.NOT_AUTHORIZED,
        _R.SERVER_UNAVAILABLE,
        _R.SERVER_BUSY,
        _R.BANNED,
        _R.BAD_AUTHENTICATION_METHOD,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_TOO_LARGE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
        _R.RETAIN_NOT_SUPPORTED,
        _R.QOS_NOT_SUPPORTED,
        _R.USE_ANOTHER_SERVER,
        _R.SERVER_MOVED,
        _R.CONNECTION_RATE_EXCEEDED,
    }
)

# §3.4.2.1 PUBACK Reason Code; §3.5.2.1 PUBREC uses the same list.
PUBACK_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {
        _R.SUCCESS,
        _R.NO_MATCHING_SUBSCRIBERS,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_NAME_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.PAYLOAD_FORMAT_INVALID,
    }
)
PUBREC_REASON_CODES = PUBACK_REASON_CODES

# §3.6.2.1 PUBREL Reason Code; §3.7.2.1 PUBCOMP uses the same list.
PUBREL_REASON_CODES: frozenset[ReasonCode] = frozenset({_R.SUCCESS, _R.PACKET_IDENTIFIER_NOT_FOUND})
PUBCOMP_REASON_CODES = PUBREL_REASON_CODES

# §3.9.3 SUBACK Payload.
SUBACK_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {
        _R.GRANTED_QOS_0,
        _R.GRANTED_QOS_1,
        _R.GRANTED_QOS_2,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
        _R.QUOTA_EXCEEDED,
        _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)

# §3.11.3 UNSUBACK Payload.
UNSUBACK_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {
        _R.SUCCESS,
        _R.NO_SUBSCRIPTION_EXISTED,
        _R.UNSPECIFIED_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.TOPIC_FILTER_INVALID,
        _R.PACKET_IDENTIFIER_IN_USE,
    }
)

# §3.14.2.1 Disconnect Reason Code (both directions; the codec does not police
# which side may send which code, the broker does).
DISCONNECT_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {
        _R.NORMAL_DISCONNECTION,
        _R.DISCONNECT_WITH_WILL_MESSAGE,
        _R.UNSPECIFIED_ERROR,
        _R.MALFORMED_PACKET,
        _R.PROTOCOL_ERROR,
        _R.IMPLEMENTATION_SPECIFIC_ERROR,
        _R.NOT_AUTHORIZED,
        _R.SERVER_BUSY,
        _R.SERVER_SHUTTING_DOWN,
        _R.KEEP_ALIVE_TIMEOUT,
        _R.SESSION_TAKEN_OVER,
        _R.TOPIC_FILTER_INVALID,
        _R.TOPIC_NAME_INVALID,
        _R.RECEIVE_MAXIMUM_EXCEEDED,
        _R.TOPIC_ALIAS_INVALID,
        _R.PACKET_TOO_LARGE,
        _R.MESSAGE_RATE_TOO_HIGH,
        _R.QUOTA_EXCEEDED,
        _R.ADMINISTRATIVE_ACTION,
        _R.PAYLOAD_FORMAT_INVALID,
        _R.RETAIN_NOT_SUPPORTED,
        _R.QOS_NOT_SUPPORTED,
        _R.USE_ANOTHER_SERVER,
        _R.SERVER_MOVED,
        _R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED,
        _R.CONNECTION_RATE_EXCEEDED,
        _R.MAXIMUM_CONNECT_TIME,
        _R.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
        _R.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
    }
)

# §3.15.2.1 Authenticate Reason Code.
AUTH_REASON_CODES: frozenset[ReasonCode] = frozenset(
    {_R.SUCCESS, _R.CONTINUE_AUTHENTICATION, _R.RE_AUTHENTICATE}
)

# MQTT 3.1.1 §3.2.2.3 Connect Return code, keyed by the 5.0 code the broker
# uses. A 5.0 code missing here has no 3.1.1 equivalent: "If none of the return
# codes listed in Table 3.1 are deemed applicable, then the Server MUST close
# the Network Connection without sending a CONNACK [MQTT-3.2.2-6]".
CONNACK_CODES_311: dict[ReasonCode, int] = {
    _R.SUCCESS: 0x00,
    _R.UNSUPPORTED_PROTOCOL_VERSION: 0x01,
    _R.CLIENT_IDENTIFIER_NOT_VALID: 0x02,
    _R.SERVER_UNAVAILABLE: 0x03,
    _R.SERVER_BUSY: 0x03,
    _R.USE_ANOTHER_SERVER: 0x03,
    _R.SERVER_MOVED: 0x03,
    _R.CONNECTION_RATE_EXCEEDED: 0x03,
    _R.QUOTA_EXCEEDED: 0x03,
    _R.BAD_USER_NAME_OR_PASSWORD: 0x04,
    _R.NOT_AUTHORIZED: 0x05,
    _R.BANNED: 0x05,
    _R.BAD_AUTHENTICATION_METHOD: 0x05,
}

# Decoding a 3.1.1 CONNACK: the wire code back to the canonical 5.0 name.
CONNACK_CODES_FROM_311: dict[int, ReasonCode] = {
    0x00: _R.SUCCESS,
    0x01: _R.UNSUPPORTED_PROTOCOL_VERSION,
    0x02: _R.CLIENT_IDENTIFIER_NOT_VALID,
    0x03: _R.SERVER_UNAVAILABLE,
    0x04: _R.BAD_USER_NAME_OR_PASSWORD,
    0x05: _R.NOT_AUTHORIZED,
}


def connack_code_311(code: ReasonCode) -> int | None:
    """The MQTT 3.1.1 CONNACK return code for ``code``, or None if there is none.

    None means the broker must close without a CONNACK [MQTT-3.2.2-6].
    """
    return CONNACK_CODES_311.get(code)
