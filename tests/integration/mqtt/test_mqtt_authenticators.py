"""Authenticators (a device registry) decide before the password file, with their own ACLs."""

from __future__ import annotations

import pytest

from headwater.mqtt.auth import Acl, PasswordFile
from headwater.mqtt.broker import BrokerConfig, Listener
from headwater.mqtt.config import Credentials, Identity
from headwater.mqtt.packets import (
    Disconnect,
    ProtocolVersion,
    Puback,
    Publish,
    ReasonCode,
)
from tests.helpers import wait_until_blocking
from tests.integration.mqtt._clients import V5, V311, Raw
from tests.integration.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.integration


class Registry:
    """Knows device-1 (secret s3cret), may publish under devices/device-1/# only."""

    def __init__(self) -> None:
        self.seen: list[Credentials] = []

    async def authenticate(self, credentials: Credentials) -> Identity | ReasonCode | None:
        self.seen.append(credentials)
        if credentials.username != "device-1":
            return None  # not a device: the password file decides
        if credentials.password != b"s3cret":
            return ReasonCode.BAD_USER_NAME_OR_PASSWORD
        acl = Acl.parse("pattern write devices/%u/#\n")
        return Identity("device:device-1", "device-1", acl, {"site": "a"})


@pytest.mark.parametrize("version", [V311, V5])
def test_an_authenticator_decides_first_and_brings_its_acl(
    make_broker: MakeBroker, version: ProtocolVersion
) -> None:
    passwords = PasswordFile()
    passwords.add_user("alice", "a-pass")
    registry = Registry()
    broker = make_broker(
        BrokerConfig(listeners=(Listener(port=0),), passwords=passwords),
        authenticators=[registry],
    )
    device = Raw(broker.port(), version)
    assert device.connect("d1", username="device-1", password=b"s3cret").reason_code == 0
    device.send(Publish("devices/device-1/t", b"ok", 1, packet_id=1))
    assert device.recv() == Puback(1)
    device.send(Publish("devices/device-2/t", b"no", 1, packet_id=2))
    denied = ReasonCode.NOT_AUTHORIZED if version == V5 else ReasonCode.SUCCESS
    assert device.recv() == Puback(2, denied)
    info = broker.call(lambda: broker.broker._online["d1"].info)  # type: ignore[union-attr]
    assert info.user == "device:device-1" and info.labels == {"site": "a"}
    wrong = Raw(broker.port(), version)
    connack = wrong.connect("d2", username="device-1", password=b"guess")
    assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    # Not the registry's business: the password file still works.
    person = Raw(broker.port(), version)
    assert person.connect("p", username="alice", password=b"a-pass").reason_code == 0
    assert [c.username for c in registry.seen] == ["device-1", "device-1", "alice"]


def test_disconnect_cuts_off_a_user_at_once(make_broker: MakeBroker) -> None:
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),)), authenticators=[Registry()])
    device = Raw(broker.port(), V5)
    device.connect("d1", username="device-1", password=b"s3cret")
    other = Raw(broker.port(), V5)
    other.connect("o")
    assert broker.call(lambda: broker.broker.disconnect(user="device:device-1")) == 1  # type: ignore[union-attr]
    assert device.recv() == Disconnect(ReasonCode.NOT_AUTHORIZED)
    assert device.is_closed()
    wait_until_blocking(
        lambda: broker.call(lambda: broker.broker.connected_clients) == ["o"],  # type: ignore[union-attr]
    )
