"""Fuzz: whatever bytes arrive, the decoder only ever raises MqttError.

Random bytes mostly die in the fixed header, so a second test mutates valid
packets (flip, insert, delete, truncate, re-frame) to reach the readers. Any
packet that does decode must be a valid value (its dataclass validation
accepts it) and must survive encode/decode unchanged.
"""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.mqtt.packets import (
    NEED_DATA,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MqttError,
    Packet,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5

# (server side?, preset version) pairs the fuzzers decode with.
SIDES = st.sampled_from([(True, None), (True, V311), (True, V5), (False, V311), (False, V5)])

SEEDS: list[Packet] = [
    Connect(
        client_id="c",
        username="u",
        password=b"p",
        will=Will("w", b"x", 1, True, Properties(will_delay_interval=1, content_type="t")),
        properties=Properties(session_expiry_interval=1, user_properties=(("a", "b"),)),
    ),
    Connack(True, properties=Properties(receive_maximum=5, assigned_client_identifier="x")),
    Publish(
        "a/b", b"data", 1, packet_id=3, properties=Properties(topic_alias=2, response_topic="r")
    ),
    Puback(3, ReasonCode.QUOTA_EXCEEDED, Properties(reason_string="no")),
    Subscribe(
        4,
        (("a/#", SubscriptionOptions(1, True, True, 1)),),
        Properties(subscription_identifiers=(9,)),
    ),
    Suback(4, (ReasonCode.GRANTED_QOS_1, ReasonCode.NOT_AUTHORIZED)),
    Unsubscribe(5, ("a/#", "b")),
    Unsuback(5, (ReasonCode.SUCCESS,)),
    Pingreq(),
    Disconnect(ReasonCode.SERVER_BUSY, Properties(server_reference="s")),
    Auth(ReasonCode.CONTINUE_AUTHENTICATION, Properties(authentication_method="m")),
]


_FROM_SERVER = (Connack, Suback, Unsuback)


def seeds() -> list[tuple[bool, ProtocolVersion, bytes]]:
    """(server side?, version, encoded packet) for every seed both versions can carry."""
    out = []
    for packet in SEEDS:
        for version in (V311, V5):
            try:
                data = encode(packet, version)
            except MqttError:  # AUTH has no 3.1.1 form
                continue
            out.append((not isinstance(packet, _FROM_SERVER), version, data))
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = n >> 7, n & 0x7F
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def check_decoder(server: bool, version: ProtocolVersion | None, data: bytes) -> None:
    decoder = Decoder(server=server, version=version, max_packet_size=4096)
    decoder.receive_data(data)
    for _ in range(len(data) + 1):  # each packet consumes at least two bytes
        try:
            packet = decoder.next_packet()
        except MqttError:
            return
        if packet is NEED_DATA:
            return
        # The decoder only builds values the public constructors accept...
        if dataclasses.fields(packet):  # type: ignore[arg-type]
            assert dataclasses.replace(packet) == packet  # type: ignore[type-var]
        # ...and that encode back to something that decodes to them.
        assert decoder.version is not None
        again = Decoder(server=server, version=decoder.version)
        again.receive_data(encode(packet, decoder.version))
        assert again.next_packet() == packet
    raise AssertionError("decoder did not make progress")


@settings(max_examples=1500, deadline=None)
@given(side=SIDES, data=st.binary(max_size=200))
def test_random_bytes_only_raise_mqtt_errors(
    side: tuple[bool, ProtocolVersion | None], data: bytes
) -> None:
    check_decoder(*side, data)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bool, ProtocolVersion | None, bytes]:
    """A seed packet with a damaged body, usually re-framed with a consistent length."""
    server, version, packet = draw(st.sampled_from(seeds()))
    header = 2
    while packet[header - 1] & 0x80:
        header += 1
    first = packet[0]
    body = bytearray(packet[header:])
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "first"]))
        pos = draw(st.integers(0, max(len(body) - 1, 0)))
        if kind == "flip" and body:
            body[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and body:
            body[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            body[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and body:
            del body[pos : pos + draw(st.integers(1, 3))]
        elif kind == "truncate":
            del body[pos:]
        elif kind == "first":
            first ^= 1 << draw(st.integers(0, 7))
    if draw(st.integers(0, 4)):
        # A consistent Remaining Length, so the readers (not the framing) see the damage.
        data = bytes((first,)) + _varint(len(body)) + body
    else:
        data = bytes((first,)) + packet[1:header] + body
    # A server decoder usually has to see a CONNECT first: preset its version.
    preset = None if packet[0] == 0x10 and server else version
    return server, draw(st.sampled_from([preset, preset, V311, V5])), data


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_mutated_packets_only_raise_mqtt_errors(
    case: tuple[bool, ProtocolVersion | None, bytes],
) -> None:
    check_decoder(*case)


@settings(max_examples=300, deadline=None)
@given(case=mutated(), cuts=st.lists(st.integers(0, 500), max_size=5))
def test_chunking_does_not_change_the_outcome(
    case: tuple[bool, ProtocolVersion | None, bytes], cuts: list[int]
) -> None:
    server, version, data = case

    def run(chunks: list[bytes]) -> list[object]:
        decoder = Decoder(server=server, version=version, max_packet_size=4096)
        out: list[object] = []
        for chunk in chunks:
            decoder.receive_data(chunk)
            while True:
                try:
                    packet = decoder.next_packet()
                except MqttError as exc:
                    return [*out, (type(exc), exc.reason_code)]
                if packet is NEED_DATA:
                    break
                out.append(packet)
        return out

    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    assert run(chunks) == run([data])
