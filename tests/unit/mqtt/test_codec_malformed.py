"""Table-driven malformed and illegal packets: each raises the right error and code."""

from __future__ import annotations

import pytest

from headwater.mqtt.packets import (
    NEED_DATA,
    Connect,
    Decoder,
    MalformedPacket,
    MqttError,
    PacketTooLarge,
    ProtocolError,
    ProtocolVersion,
    Publish,
    ReasonCode,
    UnsupportedProtocolVersion,
    encode,
)

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
R = ReasonCode
MALFORMED = R.MALFORMED_PACKET
PROTOCOL = R.PROTOCOL_ERROR


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def s(text: bytes) -> bytes:
    """A length-prefixed string of raw bytes (which may be ill-formed on purpose)."""
    return len(text).to_bytes(2, "big") + text


def pub5(props: bytes, topic: bytes = b"t", first: int = 0x30) -> bytes:
    return frame(first, s(topic) + varint(len(props)) + props + b"payload")


def connect(flags: int, rest: bytes = s(b"c"), level: int = 4, name: bytes = b"MQTT") -> bytes:
    props = b"\x00" if level == 5 else b""
    return frame(0x10, s(name) + bytes((level, flags)) + b"\x00\x3c" + props + rest)


def sub(options: int, topic: bytes = b"a", props: bytes | None = None, first: int = 0x82) -> bytes:
    prefix = b"" if props is None else varint(len(props)) + props
    return frame(first, b"\x00\x01" + prefix + s(topic) + bytes((options,)))


# (version the decoder is set to, or None for a fresh server; receiving side; bytes; error; code)
CASES = [
    # -- fixed header ------------------------------------------------------------------------
    pytest.param(V311, True, b"\x30\xff\xff\xff\xff\x7f", MalformedPacket, MALFORMED,
                 id="remaining-length-5-bytes"),
    pytest.param(V5, True, b"\xc0\x80\x00", MalformedPacket, MALFORMED,
                 id="remaining-length-not-minimal"),
    pytest.param(V311, True, b"\x00\x00", MalformedPacket, MALFORMED, id="reserved-type-0"),
    pytest.param(V311, True, b"\xf0\x00", MalformedPacket, MALFORMED, id="auth-in-311"),
    pytest.param(V311, True, b"\x60\x02\x00\x01", MalformedPacket, MALFORMED,
                 id="pubrel-flags-0"),  # [MQTT-3.6.1-1]
    pytest.param(V311, True, sub(0, first=0x80), MalformedPacket, MALFORMED,
                 id="subscribe-flags-0"),  # [MQTT-3.8.1-1]
    pytest.param(V311, True, frame(0xA0, b"\x00\x01" + s(b"a")), MalformedPacket, MALFORMED,
                 id="unsubscribe-flags-0"),  # [MQTT-3.10.1-1]
    pytest.param(V311, True, b"\xc1\x00", MalformedPacket, MALFORMED, id="pingreq-flags"),
    pytest.param(V5, True, b"\xe4\x00", MalformedPacket, MALFORMED, id="disconnect-flags"),
    # -- direction and sequence ---------------------------------------------------------------
    pytest.param(None, True, b"\xc0\x00", ProtocolError, PROTOCOL, id="first-packet-not-connect"),
    pytest.param(V311, True, b"\x20\x02\x00\x00", ProtocolError, PROTOCOL, id="connack-to-server"),
    pytest.param(V311, False, sub(1), ProtocolError, PROTOCOL, id="subscribe-to-client"),
    pytest.param(V311, False, b"\xe0\x00", ProtocolError, PROTOCOL,
                 id="disconnect-from-311-server"),
    pytest.param(V311, False, connect(0x02), ProtocolError, PROTOCOL, id="connect-to-client"),
    # -- PUBLISH -----------------------------------------------------------------------------
    pytest.param(V311, True, frame(0x36, s(b"a") + b"\x00\x01"), MalformedPacket, MALFORMED,
                 id="publish-qos-3"),  # [MQTT-3.3.1-4]
    pytest.param(V311, True, frame(0x38, s(b"a")), MalformedPacket, MALFORMED,
                 id="publish-qos0-dup"),  # [MQTT-3.3.1-2]
    pytest.param(V311, True, frame(0x32, s(b"a") + b"\x00\x00"), ProtocolError, PROTOCOL,
                 id="publish-packet-id-0"),  # [MQTT-2.3.1-1]
    pytest.param(V311, True, frame(0x30, s(b"a/+")), ProtocolError, R.TOPIC_NAME_INVALID,
                 id="publish-topic-plus"),  # [MQTT-3.3.2-2]
    pytest.param(V5, True, pub5(b"", b"a/#"), ProtocolError, R.TOPIC_NAME_INVALID,
                 id="publish-topic-hash"),
    pytest.param(V311, True, frame(0x30, s(b"\xc3\x28")), MalformedPacket, MALFORMED,
                 id="publish-topic-bad-utf8"),  # [MQTT-1.5.3-1]
    pytest.param(V311, True, frame(0x30, s(b"\xed\xa0\x80")), MalformedPacket, MALFORMED,
                 id="publish-topic-surrogate"),
    pytest.param(V311, True, frame(0x30, s(b"\xc0\xaf")), MalformedPacket, MALFORMED,
                 id="publish-topic-overlong"),
    pytest.param(V311, True, frame(0x30, s(b"a\x00b")), MalformedPacket, MALFORMED,
                 id="publish-topic-nul"),  # [MQTT-1.5.3-2]
    pytest.param(V311, True, frame(0x30, s(b"")), ProtocolError, R.TOPIC_NAME_INVALID,
                 id="publish-311-empty-topic"),  # [MQTT-4.7.3-1]
    pytest.param(V5, True, pub5(b"", b""), ProtocolError, PROTOCOL,
                 id="publish-5-empty-topic-no-alias"),
    pytest.param(V311, True, frame(0x30, b"\x00\x05ab"), MalformedPacket, MALFORMED,
                 id="publish-topic-past-end"),
    pytest.param(V311, True, frame(0x32, s(b"a") + b"\x00"), MalformedPacket, MALFORMED,
                 id="publish-truncated-packet-id"),
    pytest.param(V5, True, frame(0x30, s(b"a")), MalformedPacket, MALFORMED,
                 id="publish-5-no-property-length"),
    # -- properties --------------------------------------------------------------------------
    pytest.param(V5, True, pub5(b"\x23\x00\x00", b""), ProtocolError, R.TOPIC_ALIAS_INVALID,
                 id="topic-alias-0"),  # [MQTT-3.3.2-8]
    pytest.param(V5, True, pub5(b"\x0b\x01"), ProtocolError, PROTOCOL,
                 id="subscription-id-from-client"),  # [MQTT-3.3.4-6]
    pytest.param(V5, True, pub5(b"\x02\x00\x00\x00\x01" * 2), ProtocolError, PROTOCOL,
                 id="duplicate-message-expiry"),
    pytest.param(V5, True, pub5(b"\x03" + s(b"a") + b"\x03" + s(b"b")), ProtocolError, PROTOCOL,
                 id="duplicate-content-type"),
    pytest.param(V5, True, pub5(b"\x11\x00\x00\x00\x01"), MalformedPacket, MALFORMED,
                 id="session-expiry-in-publish"),
    pytest.param(V5, True, pub5(b"\x7f\x00"), MalformedPacket, MALFORMED, id="unknown-property"),
    pytest.param(V5, True, pub5(b"\x80\x01"), MalformedPacket, MALFORMED,
                 id="two-byte-property-id"),
    pytest.param(V5, True, frame(0x30, s(b"t") + b"\x09\x01\x01"), MalformedPacket, MALFORMED,
                 id="property-length-past-end"),
    pytest.param(V5, True, pub5(b"\x02\x00\x00"), MalformedPacket, MALFORMED,
                 id="property-value-past-property-length"),
    pytest.param(V5, True, pub5(b"\x01\x02"), ProtocolError, PROTOCOL,
                 id="payload-format-indicator-2"),
    pytest.param(V5, True, pub5(b"\x08" + s(b"reply/+")), ProtocolError, PROTOCOL,
                 id="response-topic-wildcard"),  # [MQTT-3.3.2-14]
    pytest.param(V5, True, pub5(b"\x26" + s(b"k") + s(b"\xff")), MalformedPacket, MALFORMED,
                 id="user-property-bad-utf8"),
    pytest.param(V5, True, sub(1, props=b"\x0b\x01\x0b\x02"), ProtocolError, PROTOCOL,
                 id="subscribe-two-subscription-ids"),
    pytest.param(V5, True, sub(1, props=b"\x0b\x00"), ProtocolError, PROTOCOL,
                 id="subscription-id-0"),
    pytest.param(V5, True, sub(1, props=b"\x0b\x80\x00"), MalformedPacket, MALFORMED,
                 id="subscription-id-not-minimal"),
    pytest.param(V5, True, sub(1, props=b"\x0b\xff\xff\xff\xff\x01"), MalformedPacket, MALFORMED,
                 id="subscription-id-5-bytes"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00"), MalformedPacket,
                 MALFORMED, id="connect-5-truncated"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00\x3c\x03\x21\x00\x00"
                                   + s(b"c")),
                 ProtocolError, PROTOCOL, id="receive-maximum-0"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00\x3c\x05\x27\x00\x00\x00\x00"
                                   + s(b"c")),
                 ProtocolError, PROTOCOL, id="maximum-packet-size-0"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00\x3c\x02\x17\x02" + s(b"c")),
                 ProtocolError, PROTOCOL, id="request-problem-information-2"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00\x3c\x02\x18\x00" + s(b"c")),
                 MalformedPacket, MALFORMED, id="will-delay-in-connect-properties"),
    pytest.param(None, True, frame(0x10, s(b"MQTT") + b"\x05\x02\x00\x3c\x04\x16" + s(b"d")
                                   + s(b"c")),
                 ProtocolError, PROTOCOL, id="authentication-data-without-method"),
    # -- CONNECT -----------------------------------------------------------------------------
    pytest.param(None, True, connect(0x03), MalformedPacket, MALFORMED,
                 id="connect-reserved-flag"),  # [MQTT-3.1.2-3]
    pytest.param(None, True, connect(0x1E), MalformedPacket, MALFORMED,
                 id="connect-will-qos-3"),  # [MQTT-3.1.2-14]
    pytest.param(None, True, connect(0x22), MalformedPacket, MALFORMED,
                 id="connect-will-retain-without-will"),  # [MQTT-3.1.2-15]
    pytest.param(None, True, connect(0x0A), MalformedPacket, MALFORMED,
                 id="connect-will-qos-without-will"),  # [MQTT-3.1.2-13]
    pytest.param(None, True, connect(0x42, s(b"c") + s(b"pw")), MalformedPacket, MALFORMED,
                 id="connect-311-password-without-user"),  # [MQTT-3.1.2-22]
    pytest.param(None, True, connect(0x02, s(b"\xff")), MalformedPacket, MALFORMED,
                 id="connect-client-id-bad-utf8"),
    pytest.param(None, True, connect(0x02, s(b"c") + b"\x00"), MalformedPacket, MALFORMED,
                 id="connect-trailing-byte"),
    pytest.param(None, True, connect(0x82, s(b"c")), MalformedPacket, MALFORMED,
                 id="connect-user-flag-without-user"),
    pytest.param(None, True, connect(0x06, s(b"c") + s(b"w/+") + s(b"x")), ProtocolError,
                 R.TOPIC_NAME_INVALID, id="connect-will-topic-wildcard"),
    pytest.param(None, True, connect(0x06, s(b"c") + s(b"") + s(b"x")), ProtocolError,
                 R.TOPIC_NAME_INVALID, id="connect-will-topic-empty"),
    pytest.param(None, True, frame(0x10, s(b"MQTT")), MalformedPacket, MALFORMED,
                 id="connect-without-level"),
    # -- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------------------------
    pytest.param(V311, True, frame(0x82, b"\x00\x01"), ProtocolError, PROTOCOL,
                 id="subscribe-no-filters"),  # [MQTT-3.8.3-3]
    pytest.param(V311, True, sub(0x04), MalformedPacket, MALFORMED,
                 id="subscribe-311-reserved-bits"),  # [MQTT-3.8.3-4]
    pytest.param(V5, True, sub(0x40, props=b""), MalformedPacket, MALFORMED,
                 id="subscribe-5-reserved-bits"),  # [MQTT-3.8.3-5]
    pytest.param(V311, True, sub(0x03), MalformedPacket, MALFORMED, id="subscribe-qos-3"),
    pytest.param(V5, True, sub(0x30, props=b""), ProtocolError, PROTOCOL,
                 id="subscribe-retain-handling-3"),
    pytest.param(V5, True, sub(0x05, b"$share/g/a", props=b""), ProtocolError, PROTOCOL,
                 id="subscribe-no-local-on-shared"),  # [MQTT-3.8.3-4] (5.0)
    pytest.param(V311, True, frame(0x82, b"\x00\x01" + s(b"a")), MalformedPacket, MALFORMED,
                 id="subscribe-missing-options"),
    pytest.param(V311, True, sub(0x01, b"a\x00"), MalformedPacket, MALFORMED,
                 id="subscribe-filter-nul"),
    pytest.param(V311, True, frame(0x82, b"\x00\x00" + s(b"a") + b"\x00"), ProtocolError,
                 PROTOCOL, id="subscribe-packet-id-0"),
    pytest.param(V311, True, frame(0xA2, b"\x00\x01"), ProtocolError, PROTOCOL,
                 id="unsubscribe-no-filters"),  # [MQTT-3.10.3-2]
    # -- acknowledgements --------------------------------------------------------------------
    pytest.param(V311, True, b"\x40\x03\x00\x01\x00", MalformedPacket, MALFORMED,
                 id="puback-311-too-long"),
    pytest.param(V311, True, b"\x40\x01\x00", MalformedPacket, MALFORMED, id="puback-too-short"),
    pytest.param(V311, True, b"\x40\x02\x00\x00", ProtocolError, PROTOCOL, id="puback-id-0"),
    pytest.param(V5, True, b"\x40\x03\x00\x01\x81", ProtocolError, PROTOCOL,
                 id="puback-invalid-reason"),
    pytest.param(V5, True, b"\x62\x03\x00\x01\x10", ProtocolError, PROTOCOL,
                 id="pubrel-invalid-reason"),
    pytest.param(V5, True, b"\x40\x04\x00\x01\x00\x05", MalformedPacket, MALFORMED,
                 id="puback-property-length-past-end"),
    pytest.param(V5, True, b"\x40\x07\x00\x01\x00\x03\x23\x00\x01", MalformedPacket, MALFORMED,
                 id="puback-topic-alias-property"),
    pytest.param(V311, False, b"\x20\x02\x00\x06", ProtocolError, PROTOCOL,
                 id="connack-311-reserved-code"),
    pytest.param(V311, False, b"\x20\x02\x02\x00", MalformedPacket, MALFORMED,
                 id="connack-reserved-flags"),  # [MQTT-3.2.2-1]
    pytest.param(V311, False, b"\x20\x02\x01\x05", ProtocolError, PROTOCOL,
                 id="connack-session-present-with-failure"),  # [MQTT-3.2.2-4]
    pytest.param(V5, False, b"\x20\x03\x00\x10\x00", ProtocolError, PROTOCOL,
                 id="connack-5-invalid-reason"),
    pytest.param(V311, False, b"\x90\x03\x00\x01\x03", ProtocolError, PROTOCOL,
                 id="suback-311-reserved-code"),  # [MQTT-3.9.3-2]
    pytest.param(V5, False, b"\x90\x04\x00\x01\x00\x11", ProtocolError, PROTOCOL,
                 id="suback-5-invalid-reason"),
    pytest.param(V311, False, b"\x90\x02\x00\x01", ProtocolError, PROTOCOL,
                 id="suback-no-codes"),
    pytest.param(V311, False, b"\xb0\x03\x00\x01\x00", MalformedPacket, MALFORMED,
                 id="unsuback-311-with-payload"),
    pytest.param(V5, False, b"\xb0\x04\x00\x01\x00\x10", ProtocolError, PROTOCOL,
                 id="unsuback-5-invalid-reason"),
    pytest.param(V5, False, b"\xb0\x03\x00\x01\x00", ProtocolError, PROTOCOL,
                 id="unsuback-5-no-codes"),
    # -- the rest ----------------------------------------------------------------------------
    pytest.param(V311, True, b"\xc0\x01\x00", MalformedPacket, MALFORMED, id="pingreq-with-body"),
    pytest.param(V311, True, b"\xe0\x01\x00", MalformedPacket, MALFORMED,
                 id="disconnect-311-with-body"),
    pytest.param(V5, True, b"\xe0\x01\x05", ProtocolError, PROTOCOL,
                 id="disconnect-invalid-reason"),
    pytest.param(V5, True, b"\xe0\x03\x00\x01\x02", MalformedPacket, MALFORMED,
                 id="disconnect-property-runs-past"),
    pytest.param(V5, True, b"\xf0\x03\x00\x00\x00", MalformedPacket, MALFORMED,
                 id="auth-trailing-byte"),
    pytest.param(V5, True, b"\xf0\x01\x87", ProtocolError, PROTOCOL, id="auth-invalid-reason"),
]  # fmt: skip


@pytest.mark.parametrize(("version", "server", "data", "error", "code"), CASES)
def test_rejected(
    version: ProtocolVersion | None,
    server: bool,
    data: bytes,
    error: type[MqttError],
    code: ReasonCode,
) -> None:
    decoder = Decoder(server=server, version=version)
    decoder.receive_data(data)
    with pytest.raises(error) as caught:
        decoder.next_packet()
    assert caught.value.reason_code == code
    # The decoder is broken from now on: the same error, whatever arrives.
    decoder.receive_data(b"\xc0\x00")
    with pytest.raises(error) as again:
        decoder.next_packet()
    assert again.value is caught.value


@pytest.mark.parametrize(
    ("name", "level"),
    [
        pytest.param(b"MQIsdp", 3, id="mqtt-3.1"),
        pytest.param(b"MQTT", 3, id="level-3"),
        pytest.param(b"MQTT", 6, id="level-6"),
        pytest.param(b"MQTX", 4, id="bad-name"),
    ],
)
def test_unsupported_protocol_version_is_answerable(name: bytes, level: int) -> None:
    # [MQTT-3.1.2-2]: CONNACK 0x01 (3.1.1) / 0x84 (5.0), then close.
    decoder = Decoder()
    # The rest of the packet is not parsed: its layout may be another version's.
    decoder.receive_data(connect(0x02, s(b"c") + b"garbage", level=level, name=name))
    with pytest.raises(UnsupportedProtocolVersion) as caught:
        decoder.next_packet()
    err = caught.value
    assert isinstance(err, ProtocolError)
    assert err.reason_code == R.UNSUPPORTED_PROTOCOL_VERSION
    assert (err.protocol_name, err.protocol_level) == (name.decode(), level)
    from headwater.mqtt.packets import Connack

    answer = encode(Connack(reason_code=err.reason_code), err.answer_version)
    assert answer == b"\x20\x02\x00\x01"


def test_second_connect_is_a_protocol_error() -> None:
    decoder = Decoder()
    data = encode(Connect(client_id="a"), V5)
    decoder.receive_data(data + data)
    assert decoder.next_packet() == Connect(client_id="a")
    with pytest.raises(ProtocolError) as caught:  # [MQTT-3.1.0-2]
        decoder.next_packet()
    assert caught.value.reason_code == PROTOCOL


def test_packet_too_large_is_raised_from_the_header_alone() -> None:
    decoder = Decoder(version=V311, max_packet_size=100)
    ok = encode(Publish("t", b"x" * 95), V311)
    assert len(ok) == 100
    decoder.receive_data(ok)
    assert isinstance(decoder.next_packet(), Publish)
    # Only the fixed header of a 1 MB packet: no need to buffer the body to refuse it.
    decoder.receive_data(b"\x30\x80\x80\x40")
    with pytest.raises(PacketTooLarge) as caught:
        decoder.next_packet()
    assert caught.value.reason_code == R.PACKET_TOO_LARGE
    assert (caught.value.size, caught.value.limit) == (4 + (0x40 << 14), 100)


def test_incomplete_remaining_length_waits() -> None:
    decoder = Decoder(version=V311)
    for byte in b"\x30\x80\x80":
        decoder.receive_data(bytes((byte,)))
        assert decoder.next_packet() is NEED_DATA


def test_client_decoder_needs_a_version() -> None:
    with pytest.raises(ValueError, match="version"):
        Decoder(server=False)
