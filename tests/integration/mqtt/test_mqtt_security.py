"""Listeners (TCP, TLS, mTLS), authentication, ACLs, hooks, persistence; with Debian's
mosquitto_pub/mosquitto_sub, paho-mqtt and aiomqtt as the clients."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import aiomqtt
import pytest

from headwater.mqtt.auth import Access, Acl, AclRule, PasswordFile
from headwater.mqtt.broker import BrokerConfig, ClientInfo, Listener, server_tls_context
from headwater.mqtt.packets import (
    Properties,
    Puback,
    Publish,
    Pubrec,
    ReasonCode,
    Suback,
    Subscribe,
    SubscriptionOptions,
)
from headwater.mqtt.session import Message
from tests.helpers import wait_until_blocking
from tests.integration.mqtt._clients import V5, V311, BrokerThread, Paho, Raw
from tests.integration.mqtt.conftest import MakeBroker

pytestmark = pytest.mark.integration

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


def _sub(port: int, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MOSQUITTO_SUB, "-p", str(port), "-h", "127.0.0.1", "-W", "10", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _pub(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MOSQUITTO_PUB, "-p", str(port), "-h", "127.0.0.1", *args],
        capture_output=True,
        text=True,
        timeout=20,
    )


def _wait_subscribed(broker: BrokerThread, n: int = 1) -> None:
    wait_until_blocking(
        lambda: len(broker.call(lambda: list(broker.broker.router.filters()))) >= n,  # type: ignore[union-attr]
    )


@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_mosquitto_clients_pub_sub_and_retained(broker: BrokerThread, version: str) -> None:
    assert (
        _pub(broker.port(), "-V", version, "-t", "r/1", "-m", "kept", "-r", "-q", "1").returncode
        == 0
    )
    sub = _sub(broker.port(), "-V", version, "-t", "r/#", "-C", "3", "-v", "-q", "2")
    _wait_subscribed(broker)
    for qos in ("0", "2"):
        assert (
            _pub(broker.port(), "-V", version, "-t", "r/2", "-m", f"q{qos}", "-q", qos).returncode
            == 0
        )
    out, err = sub.communicate(timeout=15)
    assert sub.returncode == 0, err
    assert out.splitlines() == ["r/1 kept", "r/2 q0", "r/2 q2"]


def test_tls_listener_with_mosquitto_clients(
    make_broker: MakeBroker, certificates: dict[str, Path]
) -> None:
    context = server_tls_context(certificates["server"], certificates["server-key"])
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0, ssl=context),)))
    tls = ["--cafile", str(certificates["ca"])]
    sub = _sub(broker.port(), *tls, "-t", "secure/#", "-C", "1")
    _wait_subscribed(broker)
    assert _pub(broker.port(), *tls, "-t", "secure/x", "-m", "hello").returncode == 0
    out, err = sub.communicate(timeout=15)
    assert out.strip() == "hello", err
    # A plaintext client cannot talk to the TLS listener.
    assert _pub(broker.port(), "-t", "secure/x", "-m", "plain").returncode != 0


def test_mtls_certificate_identity_and_acl(
    make_broker: MakeBroker, certificates: dict[str, Path]
) -> None:
    context = server_tls_context(
        certificates["server"],
        certificates["server-key"],
        cafile=certificates["ca"],
        require_client_cert=True,
    )
    acl = Acl(
        [AclRule("devices/%u/#", Access.WRITE), AclRule("devices/#", Access.READ, user="ops")]
    )
    seen: list[ClientInfo] = []

    async def on_connect(info: ClientInfo) -> None:
        seen.append(info)

    broker = make_broker(
        BrokerConfig(
            listeners=(
                Listener(port=0, ssl=context, cert_username="cn", allow_anonymous=False),
                Listener(port=0),
            ),
            acl=acl,
            passwords=_passwords("ops", "ops-secret"),
        ),
        on_connect=on_connect,
    )
    watcher = Paho(broker.port(1), "ops", username="ops", password="ops-secret")
    watcher.subscribe("devices/#", 1)
    cert = ["--cafile", str(certificates["ca"]), "--cert", str(certificates["client"])]
    cert += ["--key", str(certificates["client-key"])]
    # The certificate's CN (device-1) is the username: its own subtree is allowed...
    assert (
        _pub(
            broker.port(), *cert, "-i", "d1", "-t", "devices/device-1/t", "-m", "21.5", "-q", "1"
        ).returncode
        == 0
    )
    assert watcher.get().payload == b"21.5"
    # ...another device's subtree is not (3.1.1: dropped, and logged).
    _pub(broker.port(), *cert, "-i", "d1", "-t", "devices/device-2/t", "-m", "spoof", "-q", "1")
    assert watcher.nothing(0.5)
    assert broker.broker.stats.denied_publish == 1  # type: ignore[union-attr]
    assert any(info.username == "device-1" for info in seen)
    # Without a client certificate the TLS handshake fails.
    no_cert = _pub(broker.port(), "--cafile", str(certificates["ca"]), "-t", "devices/x", "-m", "x")
    assert no_cert.returncode != 0


def _passwords(*pairs: str) -> PasswordFile:
    passwords = PasswordFile()
    for user, password in zip(pairs[::2], pairs[1::2], strict=True):
        passwords.add_user(user, password)
    return passwords


@pytest.mark.parametrize(
    ("v5", "bad", "anonymous"),
    [
        # paho reports the 3.1.1 return codes 4 and 5 under their 5.0 names too.
        (False, 0x86, 0x87),
        (True, 0x86, 0x87),
    ],
)
def test_password_authentication(
    make_broker: MakeBroker, tmp_path: Path, v5: bool, bad: int, anonymous: int
) -> None:
    path = tmp_path / "passwd"
    _passwords("alice", "wonderland").save(path)
    config = BrokerConfig(
        listeners=(Listener(port=0, allow_anonymous=False),), passwords=PasswordFile.load(path)
    )
    broker = make_broker(config)
    good = Paho(broker.port(), "a", v5=v5, username="alice", password="wonderland")
    assert good.connack()[0] == 0
    wrong = Paho(broker.port(), "b", v5=v5, username="alice", password="nope")
    assert wrong.connack()[0] == bad  # bad user name or password
    nobody = Paho(broker.port(), "c", v5=v5)
    assert nobody.connack()[0] == anonymous  # not authorized
    # An auth failure closes that connection only.
    good.subscribe("x", 0)
    good.publish("x", "still fine")
    assert good.get().payload == b"still fine"
    assert broker.broker.stats.auth_failures == 2  # type: ignore[union-attr]
    # On the wire: 3.1.1 return code 0x04, 5.0 reason code 0x86 (the codec names both).
    raw = Raw(broker.port(), V5 if v5 else V311)
    connack = raw.connect("r", username="alice", password=b"x")
    assert connack.reason_code == ReasonCode.BAD_USER_NAME_OR_PASSWORD
    assert raw.is_closed()
    # Users can be added at run time through the API.
    config.passwords.add_user("bob", "builder")  # type: ignore[union-attr]
    assert Paho(broker.port(), "d", v5=v5, username="bob", password="builder").connack()[0] == 0


def test_anonymous_default_depends_on_loopback() -> None:
    assert Listener(host="127.0.0.1").anonymous_allowed
    assert Listener(host="::1").anonymous_allowed
    assert not Listener(host="0.0.0.0").anonymous_allowed
    assert not Listener(host="192.168.1.10").anonymous_allowed
    assert Listener(host="0.0.0.0", allow_anonymous=True).anonymous_allowed


@pytest.mark.parametrize("version", [V311, V5])
def test_acl_denials(make_broker: MakeBroker, version) -> None:  # type: ignore[no-untyped-def]
    acl = Acl.parse("pattern readwrite devices/%c/#\ntopic read public/#\n")
    broker = make_broker(BrokerConfig(listeners=(Listener(port=0),), acl=acl))
    client = Raw(broker.port(), version)
    client.connect("dev1")
    client.send(
        Subscribe(
            1,
            (
                ("devices/dev1/#", SubscriptionOptions(qos=1)),
                ("devices/#", SubscriptionOptions(qos=1)),
                ("public/news", SubscriptionOptions(qos=0)),
            ),
        )
    )
    suback = client.recv()
    assert isinstance(suback, Suback)
    # Denied SUBSCRIBE: 0x80 (3.1.1) / 0x87 (5.0).
    expected = [1, 0x87, 0] if version == V5 else [1, 0x80, 0]
    assert encode_suback_codes(suback) == expected
    client.send(Publish("devices/dev2/cmd", b"x", 1, packet_id=5))
    ack = client.recv()
    if version == V5:
        assert ack == Puback(5, ReasonCode.NOT_AUTHORIZED)  # denied PUBLISH: 0x87
    else:
        assert ack == Puback(5)  # 3.1.1: acknowledged and dropped
    client.send(Publish("devices/dev2/cmd", b"x", 2, packet_id=6))
    assert client.recv() == (Pubrec(6, ReasonCode.NOT_AUTHORIZED) if version == V5 else Pubrec(6))
    client.send(Publish("devices/dev1/state", b"ok", 1, packet_id=7))
    packets = client.recv_all()
    assert Puback(7) in packets
    assert any(isinstance(p, Publish) and p.payload == b"ok" for p in packets)
    assert broker.broker.stats.denied_subscribe == 1  # type: ignore[union-attr]
    assert broker.broker.stats.denied_publish == 2  # type: ignore[union-attr]


def encode_suback_codes(suback: Suback) -> list[int]:
    return [int(code) for code in suback.reason_codes]


@pytest.mark.parametrize("version", [V311, V5])
def test_on_publish_delays_ack_until_hook_completes(make_broker: MakeBroker, version) -> None:  # type: ignore[no-untyped-def]
    journal: list[tuple[str, bytes]] = []

    async def on_publish(
        info: ClientInfo, message: Message, packet_id: int | None, dup: bool
    ) -> ReasonCode | None:
        await asyncio.sleep(0.3)  # a durable append
        if message.payload == b"reject":
            return ReasonCode.QUOTA_EXCEEDED
        journal.append((info.client_id, message.payload))
        return None

    broker = make_broker(on_publish=on_publish)
    sub = Raw(broker.port(), V5)
    sub.connect("sub")
    sub.send(Subscribe(1, (("j", SubscriptionOptions(qos=1)),)))
    sub.recv()
    client = Raw(broker.port(), version)
    client.connect("dev")
    started = time.monotonic()
    client.send(Publish("j", b"event", 1, packet_id=1))
    assert client.recv() == Puback(1)
    assert time.monotonic() - started >= 0.29
    assert journal == [("dev", b"event")]  # appended before the PUBACK
    assert isinstance(sub.recv(), Publish)
    client.send(Publish("j", b"reject", 1, packet_id=2))
    if version == V5:
        assert client.recv() == Puback(2, ReasonCode.QUOTA_EXCEEDED)
    else:
        assert client.is_closed()  # no ack: the client will resend later
    assert sub.recv_all(0.5) == []  # a refused message is not routed


def test_hooks_and_in_process_publish(make_broker: MakeBroker) -> None:
    events: list[str] = []

    async def on_connect(info: ClientInfo) -> None:
        events.append(f"connect {info.client_id} {info.protocol_version.name}")

    async def on_disconnect(info: ClientInfo) -> None:
        events.append(f"disconnect {info.client_id}")

    broker = make_broker(on_connect=on_connect, on_disconnect=on_disconnect)
    client = Paho(broker.port(), "hooked", v5=False)
    client.subscribe("cmd/#", 1)
    broker.run(broker.broker.publish("cmd/x", b"from inside", qos=1, retain=True))  # type: ignore[union-attr]
    message = client.get()
    assert (message.payload, message.qos) == (b"from inside", 1)
    client.close()
    wait_until_blocking(lambda: len(events) == 2)
    assert events == ["connect hooked MQTT311", "disconnect hooked"]
    assert broker.broker.retained.get("cmd/x") is not None  # type: ignore[union-attr]


async def test_aiomqtt_client(broker: BrokerThread) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port(), identifier="aio") as client:
        await client.subscribe("aio/#", qos=1)
        await client.publish("aio/1", b"one", qos=1)
        await client.publish("aio/2", b"two", qos=2, retain=True)
        got = []
        async with asyncio.timeout(5):
            async for message in client.messages:
                got.append((str(message.topic), message.payload))
                if len(got) == 2:
                    break
    assert got == [("aio/1", b"one"), ("aio/2", b"two")]
    async with aiomqtt.Client(
        "127.0.0.1", broker.port(), protocol=aiomqtt.ProtocolVersion.V5
    ) as late:
        await late.subscribe("aio/#")
        async with asyncio.timeout(5):
            message = await anext(aiter(late.messages))
        assert message.payload == b"two" and message.retain


def test_sessions_and_retained_survive_restart(make_broker: MakeBroker, tmp_path: Path) -> None:
    config = BrokerConfig(listeners=(Listener(port=0),), data_dir=tmp_path / "data")
    first = make_broker(config)
    sub = Raw(first.port(), V5)
    sub.connect("keeper", clean_start=False, properties=Properties(session_expiry_interval=3600))
    sub.send(Subscribe(1, (("k/#", SubscriptionOptions(qos=1)),)))
    sub.recv()
    sub.close()
    pub = Paho(first.port(), "pub")
    pub.publish("k/retained", "last value", 1, retain=True)
    for i in range(3):
        pub.publish("k/queued", f"q{i}", 1)
    pub.close()
    wait_until_blocking(
        lambda: first.call(lambda: len(first.broker.sessions["keeper"].queue)) == 4,  # type: ignore[union-attr]
    )
    first.stop()

    second = make_broker(config)
    again = Raw(second.port(), V5)
    connack = again.connect(
        "keeper", clean_start=False, properties=Properties(session_expiry_interval=3600)
    )
    assert connack.session_present
    payloads = [p.payload for p in again.recv_all() if isinstance(p, Publish)]
    assert payloads == [b"last value", b"q0", b"q1", b"q2"]
    late = Paho(second.port(), "late")
    late.subscribe("k/retained", 0)
    assert late.get().payload == b"last value"


def test_tls_context_rejects_old_protocols(certificates: dict[str, Path]) -> None:
    context = server_tls_context(certificates["server"], certificates["server-key"])
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_websocket_over_tls(make_broker: MakeBroker, certificates: dict[str, Path]) -> None:
    context = server_tls_context(certificates["server"], certificates["server-key"])
    broker = make_broker(
        BrokerConfig(listeners=(Listener(port=0, ssl=context, websocket=True, path="/mqtt"),))
    )
    client_tls = ssl.create_default_context(cafile=str(certificates["ca"]))
    client = Paho(broker.port(), "wss", transport="websockets", tls=client_tls)
    assert client.connack()[0] == 0
    client.subscribe("wss/#", 1)
    client.publish("wss/1", "secure socket", 1)
    assert client.get().payload == b"secure socket"
    assert broker.broker.addresses[0][0].label.startswith("wss://")  # type: ignore[union-attr]
