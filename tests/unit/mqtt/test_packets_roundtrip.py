"""Round trips of every packet type, both versions, three ways (h11's test_io).

Each sample is encoded, then decoded from the whole buffer, from one byte at a
time, and with trailing bytes that must stay untouched in the decoder. Golden
byte strings pin the wire format against hand-assembled packets.
"""

from __future__ import annotations

from typing import Any

import pytest

from headwater.mqtt._properties import PROPERTY_TABLE, WILL
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    NEED_DATA,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    LocalProtocolError,
    Packet,
    PacketType,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
    encode_properties,
    encode_publish,
)

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
R = ReasonCode

# A value of the right type for each property, chosen to be non-trivial.
_SAMPLE_VALUES: dict[str, Any] = {
    "payload_format_indicator": 1,
    "message_expiry_interval": 3600,
    "content_type": "application/json",
    "response_topic": "reply/to/me",
    "correlation_data": b"\x00\x01corr",
    "subscription_identifiers": (7,),
    "session_expiry_interval": 0xFFFFFFFF,
    "assigned_client_identifier": "auto-1234",
    "server_keep_alive": 120,
    "authentication_method": "SCRAM-SHA-1",
    "authentication_data": b"\xffdata",
    "request_problem_information": 0,
    "will_delay_interval": 30,
    "request_response_information": 1,
    "response_information": "resp/",
    "server_reference": "other.example:1883",
    "reason_string": "because ☃",
    "receive_maximum": 20,
    "topic_alias_maximum": 10,
    "topic_alias": 3,
    "maximum_qos": 1,
    "retain_available": 0,
    "user_properties": (("k", "v1"), ("k", "v2"), ("ü", "")),
    "maximum_packet_size": 1 << 20,
    "wildcard_subscription_available": 1,
    "subscription_identifier_available": 0,
    "shared_subscription_available": 1,
}


def full_properties(packet_type: int) -> Properties:
    """Every property allowed in ``packet_type`` (0: will), with a sample value."""
    values = {
        spec.name: _SAMPLE_VALUES[spec.name]
        for spec in PROPERTY_TABLE
        if spec.packets & (1 << packet_type)
    }
    return Properties(**values)


def test_every_property_has_a_sample() -> None:
    assert {spec.name for spec in PROPERTY_TABLE} == set(_SAMPLE_VALUES)


P = PacketType
SAMPLES_BOTH: list[Packet] = [
    Connect(client_id="dev-1"),
    Connect(
        client_id="",
        clean_start=False,
        keep_alive=65535,
        username="user",
        password=b"\x00secret",
        will=Will("last/will", b"gone", qos=2, retain=True),
    ),
    Connect(client_id="x", will=Will("w", b"", qos=0)),
    Connack(),
    Connack(session_present=True),
    Connack(reason_code=R.NOT_AUTHORIZED),
    Connack(reason_code=R.BAD_USER_NAME_OR_PASSWORD),
    Connack(reason_code=R.UNSUPPORTED_PROTOCOL_VERSION),
    Connack(reason_code=R.CLIENT_IDENTIFIER_NOT_VALID),
    Connack(reason_code=R.SERVER_UNAVAILABLE),
    Publish("a/b", b"payload"),
    Publish("a", b"", qos=1, packet_id=1, retain=True),
    Publish("ünïcode/☃", b"\x00" * 300, qos=2, packet_id=65535, dup=True),
    Publish("/", b"x" * 20000, qos=1, packet_id=77),
    Puback(1),
    Pubrec(2),
    Pubrel(3),
    Pubcomp(65535),
    Subscribe(5, (("a/+/c", SubscriptionOptions(qos=1)), ("#", SubscriptionOptions(qos=2)))),
    Suback(5, (R.GRANTED_QOS_1, R.GRANTED_QOS_0, R.GRANTED_QOS_2, R.UNSPECIFIED_ERROR)),
    Unsubscribe(6, ("a/+/c", "#")),
    Pingreq(),
    Pingresp(),
]
SAMPLES_V5_ONLY: list[Packet] = [
    Connect(
        client_id="dev-5",
        username=None,
        password=b"pw-without-user",
        properties=full_properties(P.CONNECT),
        will=Will("w/t", b"bye", qos=1, properties=full_properties(WILL)),
    ),
    Connack(session_present=True, properties=full_properties(P.CONNACK)),
    Connack(reason_code=R.QUOTA_EXCEEDED, properties=Properties(reason_string="full")),
    Publish("t", b"p", qos=1, packet_id=9, properties=full_properties(P.PUBLISH)),
    Publish("", b"aliased", properties=Properties(topic_alias=1)),
    Publish("t", b"", properties=Properties(subscription_identifiers=(1, 268_435_455, 128, 16384))),
    Puback(1, R.NO_MATCHING_SUBSCRIBERS),
    Puback(1, R.NOT_AUTHORIZED, full_properties(P.PUBACK)),
    Puback(1, R.SUCCESS, Properties(user_properties=(("a", "b"),))),
    Pubrec(2, R.QUOTA_EXCEEDED, full_properties(P.PUBREC)),
    Pubrel(3, R.PACKET_IDENTIFIER_NOT_FOUND),
    Pubrel(3, R.SUCCESS, full_properties(P.PUBREL)),
    Pubcomp(4, R.PACKET_IDENTIFIER_NOT_FOUND, full_properties(P.PUBCOMP)),
    Subscribe(
        7,
        (
            ("a/b", SubscriptionOptions(1, no_local=True, retain_as_published=True)),
            ("$share/g/a/#", SubscriptionOptions(2, retain_handling=2)),
            ("x", SubscriptionOptions(0, retain_handling=1)),
        ),
        full_properties(P.SUBSCRIBE),
    ),
    Suback(
        7,
        (R.GRANTED_QOS_1, R.TOPIC_FILTER_INVALID, R.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED),
        full_properties(P.SUBACK),
    ),
    Unsubscribe(8, ("a/b",), full_properties(P.UNSUBSCRIBE)),
    Unsuback(8, (R.SUCCESS, R.NO_SUBSCRIPTION_EXISTED, R.TOPIC_FILTER_INVALID)),
    Unsuback(8, (R.NOT_AUTHORIZED,), full_properties(P.UNSUBACK)),
    Disconnect(),
    Disconnect(R.DISCONNECT_WITH_WILL_MESSAGE),
    Disconnect(R.SESSION_TAKEN_OVER, full_properties(P.DISCONNECT)),
    Auth(),
    Auth(R.CONTINUE_AUTHENTICATION, full_properties(P.AUTH)),
    Auth(R.RE_AUTHENTICATE),
]
SAMPLES_311_ONLY: list[Packet] = [Unsuback(8), Disconnect()]

CASES = [
    *(pytest.param(V311, p, id=f"311-{i}-{type(p).__name__}") for i, p in enumerate(SAMPLES_BOTH)),
    *(pytest.param(V5, p, id=f"5-{i}-{type(p).__name__}") for i, p in enumerate(SAMPLES_BOTH)),
    *(pytest.param(V5, p, id=f"5x-{i}-{type(p).__name__}") for i, p in enumerate(SAMPLES_V5_ONLY)),
    *(
        pytest.param(V311, p, id=f"311x-{i}-{type(p).__name__}")
        for i, p in enumerate(SAMPLES_311_ONLY)
    ),
]

_FROM_CLIENT = {Connect, Publish, Puback, Pubrec, Pubrel, Pubcomp, Subscribe, Unsubscribe}
_FROM_CLIENT |= {Pingreq, Disconnect, Auth}


def decoder_for(packet: Packet, version: ProtocolVersion) -> Decoder:
    """A decoder on the side that receives ``packet``.

    A server decoder learns the version from a CONNECT; for the other client
    packets it is preset, as if the CONNECT had been decoded already.
    """
    server = type(packet) in _FROM_CLIENT
    if isinstance(packet, Publish) and packet.properties.subscription_identifiers:
        server = False  # only a server sends them [MQTT-3.3.4-6]
    preset = None if isinstance(packet, Connect) else version
    return Decoder(server=server, version=preset)


def drain(decoder: Decoder) -> list[Packet]:
    out: list[Packet] = []
    for _ in range(1000):
        packet = decoder.next_packet()
        if packet is NEED_DATA:
            return out
        out.append(packet)
    raise AssertionError("decoder never asked for more data")


@pytest.mark.parametrize(("version", "packet"), CASES)
def test_whole_buffer(version: ProtocolVersion, packet: Packet) -> None:
    data = encode(packet, version)
    decoder = decoder_for(packet, version)
    decoder.receive_data(data)
    assert drain(decoder) == [packet]
    assert decoder.unprocessed_data == b""
    if isinstance(packet, Connect):
        assert decoder.version == version
    # Encoding is canonical: decoding and re-encoding gives the same bytes.
    assert encode(packet, version) == data


@pytest.mark.parametrize(("version", "packet"), CASES)
def test_byte_by_byte(version: ProtocolVersion, packet: Packet) -> None:
    data = encode(packet, version)
    decoder = decoder_for(packet, version)
    for i in range(len(data) - 1):
        decoder.receive_data(data[i : i + 1])
        assert decoder.next_packet() is NEED_DATA
    decoder.receive_data(data[-1:])
    assert decoder.next_packet() == packet
    assert decoder.next_packet() is NEED_DATA


@pytest.mark.parametrize(("version", "packet"), CASES)
def test_trailing_bytes_stay_buffered(version: ProtocolVersion, packet: Packet) -> None:
    data = encode(packet, version)
    # A partial next packet: a PUBLISH fixed header announcing more than follows.
    trailing = b"\x30\x7f\x00\x03abc"
    decoder = decoder_for(packet, version)
    decoder.receive_data(data + trailing)
    assert decoder.next_packet() == packet
    assert decoder.unprocessed_data == trailing
    assert decoder.next_packet() is NEED_DATA
    assert decoder.unprocessed_data == trailing


@pytest.mark.parametrize("version", [V311, V5])
def test_stream_of_packets_in_odd_chunks(version: ProtocolVersion) -> None:
    connect = Connect(client_id="stream", keep_alive=10)
    packets: list[Packet] = [connect]
    packets += [
        Publish(f"t/{i}", bytes([i]) * i, qos=i % 3, packet_id=i + 1 if i % 3 else None)
        for i in range(200)
    ]
    packets += [Pingreq(), Disconnect()]
    data = b"".join(encode(p, version) for p in packets)
    decoder = Decoder(server=True)
    out: list[Packet] = []
    size = 1
    pos = 0
    while pos < len(data):
        decoder.receive_data(data[pos : pos + size])
        pos += size
        size = size * 7 % 61 + 1  # sizes that straddle every boundary sooner or later
        out += drain(decoder)
    assert out == packets
    assert decoder.version == version


# -- golden bytes ---------------------------------------------------------------------------------

GOLDEN = [
    pytest.param(
        V311,
        Connect(client_id="c", keep_alive=60),
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c",
        id="connect-311",
    ),
    pytest.param(
        V5,
        Connect(client_id="c", keep_alive=60, properties=Properties(session_expiry_interval=10)),
        b"\x10\x13\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x0a\x00\x01c",
        id="connect-5",
    ),
    pytest.param(
        V311,
        Connect(client_id="c", username="u", password=b"p", will=Will("w", b"x", 1, True)),
        b"\x10\x19\x00\x04MQTT\x04\xee\x00\x00\x00\x01c\x00\x01w\x00\x01x\x00\x01u\x00\x01p",
        id="connect-311-will-auth",
    ),
    pytest.param(V311, Connack(True), b"\x20\x02\x01\x00", id="connack-311"),
    pytest.param(
        V311, Connack(reason_code=R.NOT_AUTHORIZED), b"\x20\x02\x00\x05", id="connack-311-refused"
    ),
    pytest.param(V5, Connack(), b"\x20\x03\x00\x00\x00", id="connack-5"),
    pytest.param(V311, Publish("a/b", b"hi"), b"\x30\x07\x00\x03a/bhi", id="publish-qos0"),
    pytest.param(
        V5,
        Publish("a", b"hi", qos=1, packet_id=10, retain=True, dup=True),
        b"\x3b\x08\x00\x01a\x00\x0a\x00hi",
        id="publish-5-qos1",
    ),
    pytest.param(V5, Puback(1), b"\x40\x02\x00\x01", id="puback-5-short"),
    pytest.param(V5, Puback(1, R.QUOTA_EXCEEDED), b"\x40\x03\x00\x01\x97", id="puback-5-code"),
    pytest.param(V311, Pubrel(1), b"\x62\x02\x00\x01", id="pubrel"),
    pytest.param(
        V5,
        Subscribe(1, (("a", SubscriptionOptions(2, True, True, 2)),)),
        b"\x82\x07\x00\x01\x00\x00\x01a\x2e",
        id="subscribe-5",
    ),
    pytest.param(
        V311,
        Suback(1, (R.GRANTED_QOS_1, R.NOT_AUTHORIZED)),
        b"\x90\x04\x00\x01\x01\x80",
        id="suback-311-failure-is-0x80",
    ),
    pytest.param(V311, Unsuback(1), b"\xb0\x02\x00\x01", id="unsuback-311"),
    pytest.param(V5, Disconnect(), b"\xe0\x00", id="disconnect-5-short"),
    pytest.param(V5, Disconnect(R.SERVER_BUSY), b"\xe0\x01\x89", id="disconnect-5-code"),
    pytest.param(V311, Pingreq(), b"\xc0\x00", id="pingreq"),
    pytest.param(V5, Auth(), b"\xf0\x00", id="auth-short"),
]


@pytest.mark.parametrize(("version", "packet", "data"), GOLDEN)
def test_golden_bytes(version: ProtocolVersion, packet: Packet, data: bytes) -> None:
    assert encode(packet, version) == data


def test_remaining_length_boundaries() -> None:
    # §2.2.3 / §1.5.5: 127 takes one byte, 128 two, 16384 three, 2097152 four.
    for body, header in ((127, 2), (128, 3), (16383, 3), (16384, 4), (2_097_152, 5)):
        topic = "t"
        payload = b"p" * (body - 3)
        data = encode(Publish(topic, payload), V311)
        assert len(data) == header + body
        decoder = Decoder(server=True, version=V311)
        decoder.receive_data(data)
        assert decoder.next_packet() == Publish(topic, payload)


# -- what 3.1.1 cannot carry ----------------------------------------------------------------------


def test_mqtt311_drops_properties_and_ack_codes() -> None:
    props = Properties(user_properties=(("a", "b"),), message_expiry_interval=5)
    assert encode(Publish("t", b"x", properties=props), V311) == encode(Publish("t", b"x"), V311)
    assert encode(Puback(1, R.QUOTA_EXCEEDED), V311) == b"\x40\x02\x00\x01"
    assert encode(Unsuback(1, (R.SUCCESS,)), V311) == b"\xb0\x02\x00\x01"


def test_mqtt311_connack_codes_map_both_ways() -> None:
    for code, wire in (
        (R.SERVER_BUSY, 0x03),
        (R.BANNED, 0x05),
        (R.BAD_AUTHENTICATION_METHOD, 0x05),
    ):
        assert encode(Connack(reason_code=code), V311) == bytes((0x20, 2, 0, wire))
    with pytest.raises(LocalProtocolError):  # [MQTT-3.2.2-6]: close without CONNACK
        encode(Connack(reason_code=R.PACKET_TOO_LARGE), V311)


def test_auth_cannot_be_encoded_for_311() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Auth(), V311)


# -- the fan-out fast path ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [V311, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_encode_publish_matches_encode(version: ProtocolVersion, qos: int) -> None:
    props = Properties(user_properties=(("a", "1"),), content_type="text/plain")
    packet = Publish(
        "a/ü", b"body", qos=qos, retain=True, packet_id=5 if qos else None, properties=props
    )
    cached = encode_properties(props)
    for topic in ("a/ü", "a/ü".encode()):
        fast = encode_publish(
            topic, b"body", version, qos=qos, retain=True, packet_id=packet.packet_id,
            properties=cached,
        )  # fmt: skip
        assert fast == encode(packet, version)


def test_cached_properties_can_be_extended_per_subscriber() -> None:
    base = Properties(user_properties=(("a", "1"),))
    cached = encode_properties(base)
    per_subscriber = encode_properties(Properties(subscription_identifiers=(42,)))
    data = encode_publish("t", b"x", V5, properties=cached + per_subscriber)
    decoder = Decoder(server=False, version=V5)
    decoder.receive_data(data)
    got = decoder.next_packet()
    assert isinstance(got, Publish)
    assert got.properties == Properties(
        user_properties=(("a", "1"),), subscription_identifiers=(42,)
    )


def test_decoded_publish_without_properties_shares_the_empty_value() -> None:
    decoder = Decoder(server=True, version=V5)
    decoder.receive_data(encode(Publish("t", b"x"), V5))
    packet = decoder.next_packet()
    assert isinstance(packet, Publish)
    assert packet.properties is EMPTY_PROPERTIES


def test_large_packet_in_small_chunks_is_joined_once() -> None:
    # 4 MiB in 4 KiB chunks: the decoder waits until the whole packet is there
    # instead of re-joining its buffer on every chunk (which would copy ~2 GiB).
    packet = Publish("big", bytes(4 << 20), qos=1, packet_id=1)
    data = encode(packet, V5)
    decoder = Decoder(server=True, version=V5)
    starts = range(0, len(data) - 4096, 4096)
    for count, start in enumerate(starts, 1):
        decoder.receive_data(data[start : start + 4096])
        assert decoder.next_packet() is NEED_DATA
        # White-box: the chunks stay unjoined while the packet is incomplete.
        assert len(decoder._chunks) == count - 1
    decoder.receive_data(data[len(starts) * 4096 :])
    assert decoder.next_packet() == packet
    assert decoder.unprocessed_data == b""
