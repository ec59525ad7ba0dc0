"""Packet values validate what a caller could get wrong; the encoder refuses the rest."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from headwater.mqtt.packets import (
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    LocalProtocolError,
    MqttError,
    Pingreq,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
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
from headwater.mqtt.reasons import connack_code_311

V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5
R = ReasonCode

INVALID_VALUES: list[object] = [
    pytest.param(lambda: Publish("t", qos=3), id="publish-qos-3"),
    pytest.param(lambda: Publish("t", qos=1), id="publish-qos1-no-id"),
    pytest.param(lambda: Publish("t", qos=1, packet_id=0), id="publish-id-0"),
    pytest.param(lambda: Publish("t", qos=2, packet_id=65536), id="publish-id-too-big"),
    pytest.param(lambda: Publish("t", packet_id=1), id="publish-qos0-with-id"),
    pytest.param(lambda: Publish("t", dup=True), id="publish-qos0-dup"),
    pytest.param(lambda: Publish("a/+"), id="publish-wildcard-plus"),
    pytest.param(lambda: Publish("#"), id="publish-wildcard-hash"),
    pytest.param(lambda: Puback(0), id="puback-id-0"),
    pytest.param(lambda: Puback(1, R.PACKET_IDENTIFIER_NOT_FOUND), id="puback-wrong-code"),
    pytest.param(lambda: Pubrel(1, R.QUOTA_EXCEEDED), id="pubrel-wrong-code"),
    pytest.param(lambda: Connack(True, R.NOT_AUTHORIZED), id="connack-refused-with-session"),
    pytest.param(lambda: Connack(reason_code=R.GRANTED_QOS_1), id="connack-wrong-code"),
    pytest.param(lambda: Connect(keep_alive=70000), id="connect-keep-alive"),
    pytest.param(
        lambda: Connect(properties=Properties(authentication_data=b"x")),
        id="connect-auth-data-without-method",
    ),
    pytest.param(lambda: Will("w/+"), id="will-topic-wildcard"),
    pytest.param(lambda: Will(""), id="will-topic-empty"),
    pytest.param(lambda: Will("w", qos=3), id="will-qos-3"),
    pytest.param(lambda: Subscribe(1, ()), id="subscribe-empty"),
    pytest.param(
        lambda: Subscribe(1, (("$share/g/t", SubscriptionOptions(no_local=True)),)),
        id="subscribe-no-local-shared",
    ),
    pytest.param(lambda: SubscriptionOptions(qos=3), id="options-qos-3"),
    pytest.param(lambda: SubscriptionOptions(retain_handling=3), id="options-retain-handling-3"),
    pytest.param(lambda: Suback(1, (R.NO_MATCHING_SUBSCRIBERS,)), id="suback-wrong-code"),
    pytest.param(lambda: Unsubscribe(1, ()), id="unsubscribe-empty"),
    pytest.param(lambda: Unsuback(1, (R.GRANTED_QOS_1,)), id="unsuback-wrong-code"),
    pytest.param(lambda: Disconnect(R.CONTINUE_AUTHENTICATION), id="disconnect-wrong-code"),
]


@pytest.mark.parametrize("build", INVALID_VALUES)
def test_invalid_values_are_refused(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        build()
    assert caught.value.reason_code == R.IMPLEMENTATION_SPECIFIC_ERROR
    assert isinstance(caught.value, ValueError)


UNENCODABLE: list[object] = [
    pytest.param(V5, Publish("t", properties=Properties(session_expiry_interval=1)),
                 id="property-not-allowed-in-publish"),
    pytest.param(V5, Publish("t", properties=Properties(message_expiry_interval=-1)),
                 id="u32-negative"),
    pytest.param(V5, Publish("t", properties=Properties(topic_alias=0x10000)), id="u16-overflow"),
    pytest.param(V5, Publish("t", properties=Properties(topic_alias=0)), id="topic-alias-0"),
    pytest.param(V5, Publish("t", properties=Properties(payload_format_indicator=2)),
                 id="payload-format-2"),
    pytest.param(V5, Publish("t", properties=Properties(subscription_identifiers=(0,))),
                 id="subscription-id-0"),
    pytest.param(V5, Publish("t", properties=Properties(subscription_identifiers=(1 << 28,))),
                 id="subscription-id-too-big"),
    pytest.param(V5, Subscribe(1, (("t", SubscriptionOptions()),),
                               Properties(subscription_identifiers=(1, 2))),
                 id="subscribe-two-subscription-ids"),
    pytest.param(V5, Connect(will=Will("w", properties=Properties(topic_alias=1))),
                 id="will-property-not-allowed"),
    pytest.param(V5, Connect(properties=Properties(user_properties=(("a\x00", "b"),))),
                 id="user-property-nul"),
    pytest.param(V311, Connect(password=b"p"), id="311-password-without-user"),
    pytest.param(V311, Connack(reason_code=R.PACKET_TOO_LARGE), id="311-connack-no-code"),
    pytest.param(V5, Unsuback(1), id="5-unsuback-without-codes"),
    pytest.param(V311, Publish("a\x00b"), id="topic-nul"),
    pytest.param(V311, Publish("\ud800"), id="topic-lone-surrogate"),
    pytest.param(V311, Publish("t" * 65536), id="topic-too-long"),
    pytest.param(V311, Connect(client_id="c" * 65536), id="client-id-too-long"),
    pytest.param(V311, Connect(client_id="c", username="u", password=b"p" * 65536),
                 id="password-too-long"),
]  # fmt: skip


@pytest.mark.parametrize(("version", "packet"), UNENCODABLE)
def test_unencodable_packets_raise_local_errors(version: ProtocolVersion, packet: object) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet, version)  # type: ignore[arg-type]


def test_encode_publish_checks_what_framing_needs() -> None:
    with pytest.raises(LocalProtocolError):
        encode_publish("t", b"", V5, qos=1)
    with pytest.raises(LocalProtocolError):
        encode_publish(b"t" * 65536, b"", V5)
    with pytest.raises(LocalProtocolError):
        encode_publish("\udfff", b"", V5)


def test_encode_properties_is_canonical_and_ordered() -> None:
    props = Properties(
        user_properties=(("b", "2"), ("a", "1"), ("b", "3")),
        content_type="c",
        message_expiry_interval=1,
    )
    # Identifier order, user properties in their own order [MQTT-3.3.2-18].
    assert encode_properties(props) == (
        b"\x02\x00\x00\x00\x01"
        + b"\x03\x00\x01c"
        + b"\x26\x00\x01b\x00\x012"
        + b"\x26\x00\x01a\x00\x011"
        + b"\x26\x00\x01b\x00\x013"
    )
    assert encode_properties(Properties()) == b""


def test_connack_code_311_mapping() -> None:
    assert connack_code_311(R.SUCCESS) == 0
    assert connack_code_311(R.UNSUPPORTED_PROTOCOL_VERSION) == 1
    assert connack_code_311(R.CLIENT_IDENTIFIER_NOT_VALID) == 2
    assert connack_code_311(R.NOT_AUTHORIZED) == 5
    assert connack_code_311(R.PACKET_TOO_LARGE) is None


def test_reason_code_names() -> None:
    assert R(0x8E).name == "SESSION_TAKEN_OVER"
    assert R(0x00) is R.SUCCESS is R.NORMAL_DISCONNECTION is R.GRANTED_QOS_0
    assert R.QUOTA_EXCEEDED.is_failure
    assert not R.NO_MATCHING_SUBSCRIBERS.is_failure


def test_decoder_releases_a_fully_parsed_buffer() -> None:
    decoder = Decoder(version=V311)
    decoder.receive_data(encode(Pingreq(), V311) * 3)
    for _ in range(3):
        assert decoder.next_packet() == Pingreq()
    assert decoder.next_packet() is NEED_DATA
    assert decoder.unprocessed_data == b""


def test_errors_form_one_hierarchy() -> None:
    from headwater.mqtt import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), MqttError)


def test_protocol_versions_have_one_label_each_way() -> None:
    for version in ProtocolVersion:
        assert ProtocolVersion.from_label(version.label) is version
    assert [v.label for v in ProtocolVersion] == ["3.1.1", "5.0"]
    assert ProtocolVersion.from_label(None) is ProtocolVersion.MQTT311
