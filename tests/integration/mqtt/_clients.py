"""Test clients and a broker harness for the MQTT integration tests.

* :class:`BrokerThread` runs a real :class:`MqttBroker` on its own event loop in a
  thread, so that blocking clients (paho, ``mosquitto_pub``, raw sockets) can
  drive it from the test thread.
* :class:`Raw` is a blocking raw-socket client built on the codec: it sends exact
  packets and returns exactly what the broker answered (DUP flags, packet ids,
  reason codes), which real clients hide.
* :class:`Paho` wraps a paho-mqtt 2.x client with queues for what arrives.
* :func:`make_certificates` writes a CA, a server and a client certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import queue
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties as PahoProperties

from headwater.mqtt.broker import BrokerConfig, MqttBroker
from headwater.mqtt.packets import (
    NEED_DATA,
    Connack,
    Connect,
    Decoder,
    Packet,
    ProtocolVersion,
    encode,
)

T = TypeVar("T")
TIMEOUT = 5.0
V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5


class BrokerThread:
    """A broker on a private event loop in a daemon thread."""

    def __init__(self, config: BrokerConfig, **hooks: Any) -> None:
        self.config = config
        self.hooks = hooks
        self.loop: asyncio.AbstractEventLoop | None = None
        self.broker: MqttBroker | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BrokerThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with MqttBroker(self.config, **self.hooks) as broker:
            self.broker = broker
            self._ready.set()
            await self._stop.wait()

    def port(self, index: int = 0) -> int:
        assert self.broker is not None
        return self.broker.port(index)

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the broker's loop (to read state without races)."""
        assert self.loop is not None
        result: queue.Queue[T] = queue.Queue()
        self.loop.call_soon_threadsafe(lambda: result.put(fn()))
        return result.get(timeout=TIMEOUT)

    def run(self, coro: Awaitable[T]) -> T:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT * 3)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        if self._thread.is_alive():
            raise RuntimeError("broker did not stop")


#: Clients opened by the current test; the ``_close_clients`` fixture closes them.
OPEN: list[Raw | Paho] = []


def close_all() -> None:
    while OPEN:
        client = OPEN.pop()
        with contextlib.suppress(Exception):
            client.close()


class Raw:
    """A blocking MQTT client on a raw socket, packet by packet."""

    def __init__(
        self, port: int, version: ProtocolVersion = V5, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        OPEN.append(self)
        self.version = version
        self.decoder = Decoder(server=False, version=version)

    def send(self, packet: Packet) -> None:
        self.sock.sendall(encode(packet, self.version))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = TIMEOUT) -> Packet:
        deadline = time.monotonic() + timeout
        while True:
            packet = self.decoder.next_packet()
            if packet is not NEED_DATA:
                return packet  # type: ignore[return-value]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no packet")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the broker")
            self.decoder.receive_data(data)

    def recv_all(self, quiet: float = 0.3) -> list[Packet]:
        """Every packet until ``quiet`` seconds pass without one."""
        packets: list[Packet] = []
        while True:
            try:
                packets.append(self.recv(quiet))
            except TimeoutError:
                return packets

    def connect(self, client_id: str = "", **fields: Any) -> Connack:
        self.send(Connect(client_id=client_id, **fields))
        connack = self.recv()
        assert isinstance(connack, Connack), connack
        return connack

    def is_closed(self, timeout: float = TIMEOUT) -> bool:
        """True once the broker closed the connection (packets before that are skipped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not data:
                return True
        return False

    def close(self) -> None:
        self.sock.close()


class Paho:
    """A paho-mqtt 2.x client with queues for messages, CONNACKs and DISCONNECTs."""

    def __init__(
        self,
        port: int,
        client_id: str = "",
        *,
        v5: bool = True,
        clean: bool = True,
        keepalive: int = 60,
        username: str | None = None,
        password: str | None = None,
        properties: PahoProperties | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        will_properties: PahoProperties | None = None,
        transport: str = "tcp",
        tls: ssl.SSLContext | None = None,
        ws_path: str = "/mqtt",
        connect: bool = True,
    ) -> None:
        self.v5 = v5
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.connacks: queue.Queue[tuple[int, bool, Any]] = queue.Queue()
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else clean,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            transport=transport,  # type: ignore[arg-type]
            reconnect_on_failure=False,
        )
        if transport == "websockets":
            client.ws_set_options(path=ws_path)
        if tls is not None:
            client.tls_set_context(tls)
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(*will, properties=will_properties)
        client.on_message = lambda c, u, m: self.messages.put(m)
        client.on_connect = lambda c, u, flags, rc, props: self.connacks.put(
            (rc.value, flags.session_present, props)
        )
        client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc.value)
        client.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(
            [code.value for code in codes]
        )
        self.client = client
        OPEN.append(self)
        if connect:
            self.connect(port, clean=clean, keepalive=keepalive, properties=properties)

    def connect(
        self, port: int, *, clean: bool = True, keepalive: int = 60, properties: Any = None
    ) -> None:
        kwargs: dict[str, Any] = {"keepalive": keepalive}
        if self.v5:
            kwargs["clean_start"] = clean
            kwargs["properties"] = properties
        self.client.connect("127.0.0.1", port, **kwargs)
        self.client.loop_start()

    def connack(self) -> tuple[int, bool, Any]:
        return self.connacks.get(timeout=TIMEOUT)

    def subscribe(self, topic: str, qos: int = 0, **options: Any) -> list[int]:
        properties = options.pop("properties", None)
        if self.v5:
            opts = paho.SubscribeOptions(qos=qos, **options)
            self.client.subscribe(topic, options=opts, properties=properties)
        else:
            self.client.subscribe(topic, qos)
        return self.subacks.get(timeout=TIMEOUT)

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: PahoProperties | None = None,
    ) -> paho.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(TIMEOUT)
        return info

    def get(self, timeout: float = TIMEOUT) -> paho.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def nothing(self, timeout: float = 0.3) -> bool:
        try:
            message = self.messages.get(timeout=timeout)
        except queue.Empty:
            return True
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # Closes the connection if still open and paho's wake-up socket pair, which
        # paho otherwise leaves to the garbage collector (a ResourceWarning).
        self.client._reset_sockets()


def paho_properties(packet_type: int, **values: Any) -> PahoProperties:
    props = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def publish_properties(**values: Any) -> PahoProperties:
    return paho_properties(PacketTypes.PUBLISH, **values)


def connect_properties(**values: Any) -> PahoProperties:
    return paho_properties(PacketTypes.CONNECT, **values)


def will_properties(**values: Any) -> PahoProperties:
    return paho_properties(PacketTypes.WILLMESSAGE, **values)


def subscribe_properties(**values: Any) -> PahoProperties:
    return paho_properties(PacketTypes.SUBSCRIBE, **values)


def make_certificates(directory: Path) -> dict[str, Path]:
    """CA, server (localhost/127.0.0.1) and client (CN=device-1) certificates, PEM."""
    now = datetime.datetime.now(datetime.UTC)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("headwater test CA"))
        .issuer_name(name("headwater test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, san: list[x509.GeneralName], usage: x509.ObjectIdentifier) -> tuple[Any, Any]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return k, cert

    from cryptography.x509.oid import ExtendedKeyUsageOID

    server_key, server = leaf(
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key, client = leaf(
        "device-1", [x509.DNSName("device-1.example")], ExtendedKeyUsageOID.CLIENT_AUTH
    )
    paths: dict[str, Path] = {}

    def write(label: str, obj: Any, private: bool = False) -> None:
        path = directory / f"{label}.pem"
        if private:
            data = obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        else:
            data = obj.public_bytes(serialization.Encoding.PEM)
        path.write_bytes(data)
        paths[label] = path

    write("ca", ca)
    write("server", server)
    write("server-key", server_key, private=True)
    write("client", client)
    write("client-key", client_key, private=True)
    return paths
