"""Property tests: every packet type round-trips through encode/decode, any chunking.

The strategies draw packets valid for the version: for 3.1.1 no properties and
only the reason codes 3.1.1 can carry, since those are dropped on the wire.
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.mqtt._properties import PROPERTY_TABLE, WILL
from headwater.mqtt.packets import (
    EMPTY_PROPERTIES,
    NEED_DATA,
    Auth,
    Connack,
    Connect,
    Decoder,
    Disconnect,
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
    Suback,
    Subscribe,
    SubscriptionOptions,
    Unsuback,
    Unsubscribe,
    Will,
    encode,
)
from headwater.mqtt.reasons import (
    AUTH_REASON_CODES,
    CONNACK_CODES_FROM_311,
    CONNACK_REASON_CODES,
    DISCONNECT_REASON_CODES,
    PUBACK_REASON_CODES,
    PUBREL_REASON_CODES,
    SUBACK_REASON_CODES,
    UNSUBACK_REASON_CODES,
    ReasonCode,
)

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
P = PacketType

# Any Unicode scalar value but U+0000 (surrogates cannot be UTF-8 encoded).
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12
)
topic_names = text.filter(lambda t: t and "+" not in t and "#" not in t)
binary = st.binary(max_size=40)
packet_ids = st.integers(1, 0xFFFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
zero_one = st.integers(0, 1)
varints = st.integers(1, 268_435_455)

_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "payload_format_indicator": zero_one,
    "message_expiry_interval": u32,
    "content_type": text,
    "response_topic": topic_names,
    "correlation_data": binary,
    "session_expiry_interval": u32,
    "assigned_client_identifier": text,
    "server_keep_alive": u16,
    "authentication_method": text,
    "authentication_data": binary,
    "request_problem_information": zero_one,
    "will_delay_interval": u32,
    "request_response_information": zero_one,
    "response_information": text,
    "server_reference": text,
    "reason_string": text,
    "receive_maximum": st.integers(1, 0xFFFF),
    "topic_alias_maximum": u16,
    "topic_alias": st.integers(1, 0xFFFF),
    "maximum_qos": zero_one,
    "retain_available": zero_one,
    "user_properties": st.lists(st.tuples(text, text), max_size=4).map(tuple),
    "maximum_packet_size": st.integers(1, 0xFFFFFFFF),
    "wildcard_subscription_available": zero_one,
    "subscription_identifier_available": zero_one,
    "shared_subscription_available": zero_one,
}


@st.composite
def properties(draw: st.DrawFn, packet_type: int) -> Properties:
    values: dict[str, Any] = {}
    for spec in PROPERTY_TABLE:
        if not spec.packets & (1 << packet_type) or not draw(st.booleans()):
            continue
        if spec.name == "subscription_identifiers":
            most = 4 if packet_type == P.PUBLISH else 1
            values[spec.name] = tuple(draw(st.lists(varints, min_size=1, max_size=most)))
        else:
            values[spec.name] = draw(_VALUES[spec.name])
    if "authentication_data" in values:
        # §3.1.2.11.10: no Authentication Data without an Authentication Method.
        values.setdefault("authentication_method", "m")
    return Properties(**values)


def props_for(version: ProtocolVersion, packet_type: int) -> st.SearchStrategy[Properties]:
    return properties(packet_type) if version == V5 else st.just(EMPTY_PROPERTIES)


def codes(version: ProtocolVersion, allowed: frozenset[ReasonCode]) -> st.SearchStrategy[Any]:
    return st.sampled_from(sorted(allowed)) if version == V5 else st.just(ReasonCode.SUCCESS)


@st.composite
def wills(draw: st.DrawFn, version: ProtocolVersion) -> Will:
    return Will(
        draw(topic_names),
        draw(binary),
        draw(st.integers(0, 2)),
        draw(st.booleans()),
        draw(props_for(version, WILL)),
    )


@st.composite
def connects(draw: st.DrawFn, version: ProtocolVersion) -> Connect:
    username = draw(st.none() | text)
    password_allowed = username is not None or version == V5
    return Connect(
        client_id=draw(text),
        clean_start=draw(st.booleans()),
        keep_alive=draw(u16),
        username=username,
        password=draw(st.none() | binary) if password_allowed else None,
        will=draw(st.none() | wills(version)),
        properties=draw(props_for(version, P.CONNECT)),
    )


@st.composite
def connacks(draw: st.DrawFn, version: ProtocolVersion) -> Connack:
    allowed = CONNACK_REASON_CODES if version == V5 else frozenset(CONNACK_CODES_FROM_311.values())
    code = draw(st.sampled_from(sorted(allowed)))
    return Connack(
        session_present=draw(st.booleans()) if code == 0 else False,
        reason_code=code,
        properties=draw(props_for(version, P.CONNACK)),
    )


@st.composite
def publishes(draw: st.DrawFn, version: ProtocolVersion) -> Publish:
    qos = draw(st.integers(0, 2))
    props = draw(props_for(version, P.PUBLISH))
    topic = draw(topic_names | st.just("")) if props.topic_alias else draw(topic_names)
    return Publish(
        topic,
        draw(st.binary(max_size=300)),
        qos,
        draw(st.booleans()),
        draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None,
        props,
    )


def acks(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    return st.one_of(
        *(
            st.builds(cls, packet_ids, codes(version, allowed), props_for(version, ptype))
            for cls, allowed, ptype in (
                (Puback, PUBACK_REASON_CODES, P.PUBACK),
                (Pubrec, PUBACK_REASON_CODES, P.PUBREC),
                (Pubrel, PUBREL_REASON_CODES, P.PUBREL),
                (Pubcomp, PUBREL_REASON_CODES, P.PUBCOMP),
            )
        )
    )


@st.composite
def subscribes(draw: st.DrawFn, version: ProtocolVersion) -> Subscribe:
    entries = []
    for topic_filter in draw(st.lists(text, min_size=1, max_size=4)):
        if version == V5:
            options = SubscriptionOptions(
                draw(st.integers(0, 2)),
                draw(st.booleans()) and not topic_filter.startswith("$share/"),
                draw(st.booleans()),
                draw(st.integers(0, 2)),
            )
        else:
            options = SubscriptionOptions(draw(st.integers(0, 2)))
        entries.append((topic_filter, options))
    return Subscribe(draw(packet_ids), tuple(entries), draw(props_for(version, P.SUBSCRIBE)))


@st.composite
def subacks(draw: st.DrawFn, version: ProtocolVersion) -> Suback:
    allowed = (
        SUBACK_REASON_CODES if version == V5 else frozenset(ReasonCode(c) for c in (0, 1, 2, 0x80))
    )
    reason_codes = draw(st.lists(st.sampled_from(sorted(allowed)), min_size=1, max_size=5))
    return Suback(draw(packet_ids), tuple(reason_codes), draw(props_for(version, P.SUBACK)))


@st.composite
def unsubacks(draw: st.DrawFn, version: ProtocolVersion) -> Unsuback:
    if version == V311:
        return Unsuback(draw(packet_ids))
    reason_codes = draw(
        st.lists(st.sampled_from(sorted(UNSUBACK_REASON_CODES)), min_size=1, max_size=5)
    )
    return Unsuback(draw(packet_ids), tuple(reason_codes), draw(properties(P.UNSUBACK)))


def client_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    """Packets a client sends (decoded by a server decoder)."""
    options: list[st.SearchStrategy[Packet]] = [
        publishes(version).filter(lambda p: not p.properties.subscription_identifiers),
        acks(version),
        subscribes(version),
        st.builds(
            Unsubscribe,
            packet_ids,
            st.lists(text, min_size=1, max_size=4).map(tuple),
            props_for(version, P.UNSUBSCRIBE),
        ),
        st.just(Pingreq()),
        st.builds(
            Disconnect, codes(version, DISCONNECT_REASON_CODES), props_for(version, P.DISCONNECT)
        ),
    ]
    if version == V5:
        options.append(
            st.builds(Auth, st.sampled_from(sorted(AUTH_REASON_CODES)), properties(P.AUTH))
        )
    return st.one_of(options)


def server_packets(version: ProtocolVersion) -> st.SearchStrategy[Packet]:
    """Packets a server sends (decoded by a client decoder)."""
    options: list[st.SearchStrategy[Packet]] = [
        connacks(version),
        publishes(version),
        acks(version),
        subacks(version),
        unsubacks(version),
        st.just(Pingresp()),
    ]
    if version == V5:
        options += [
            st.builds(
                Disconnect, codes(version, DISCONNECT_REASON_CODES), properties(P.DISCONNECT)
            ),
            st.builds(Auth, st.sampled_from(sorted(AUTH_REASON_CODES)), properties(P.AUTH)),
        ]
    return st.one_of(options)


versions = st.sampled_from([V311, V5])


def decode_in_chunks(decoder: Decoder, data: bytes, cuts: list[int]) -> list[Packet]:
    out: list[Packet] = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, stop in itertools.pairwise(bounds):
        decoder.receive_data(data[start:stop])
        while (packet := decoder.next_packet()) is not NEED_DATA:
            out.append(packet)
    return out


@settings(max_examples=300, deadline=None)
@given(data=st.data(), version=versions, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_client_session_round_trips(
    data: st.DataObject, version: ProtocolVersion, cuts: list[int]
) -> None:
    connect = data.draw(connects(version))
    packets: list[Packet] = [connect, *data.draw(st.lists(client_packets(version), max_size=6))]
    wire = b"".join(encode(p, version) for p in packets)
    decoder = Decoder(server=True)
    assert decode_in_chunks(decoder, wire, cuts) == packets
    assert decoder.version == version
    assert decoder.unprocessed_data == b""


@settings(max_examples=300, deadline=None)
@given(data=st.data(), version=versions, cuts=st.lists(st.integers(0, 10_000), max_size=6))
def test_server_packets_round_trip(
    data: st.DataObject, version: ProtocolVersion, cuts: list[int]
) -> None:
    packets = data.draw(st.lists(server_packets(version), min_size=1, max_size=6))
    wire = b"".join(encode(p, version) for p in packets)
    decoder = Decoder(server=False, version=version)
    assert decode_in_chunks(decoder, wire, cuts) == packets
    # Canonical encoding: what was decoded encodes to the same bytes.
    assert b"".join(encode(p, version) for p in packets) == wire
