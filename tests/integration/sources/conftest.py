"""Fixtures for the MQTT source/sink tests: a real Mosquitto, an HTTP receiver, paho clients."""

from __future__ import annotations

import getpass
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.helpers import Receiver
from tests.servers import LOOPBACK, ManagedServer, find_executable, free_port

TIMEOUT = 10.0


class Mosquitto(ManagedServer):
    """Debian's mosquitto on an ephemeral loopback port, persistence in ``data_dir``."""

    name = "mosquitto"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.binary = find_executable("mosquitto", "/usr/sbin/mosquitto")
        self.port = free_port()  # mosquitto cannot report a random port; kept across restarts

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def _command(self, port: int) -> list[str]:
        config = self.data_dir / "mosquitto.conf"
        config.write_text(
            f"listener {port} {LOOPBACK}\n"
            "allow_anonymous true\n"
            # Run as root, mosquitto switches to the `mosquitto` user, which cannot
            # write the test's data directory: stay who we are.
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {self.data_dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            "log_dest stdout\n"
        )
        return [self.binary, "-c", str(config)]


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "mosquitto") as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver.serving() as r:
        yield r


class Device:
    """A paho-mqtt client on its own network thread; received messages are kept."""

    def __init__(self, port: int, client_id: str, *, v5: bool = True) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        )
        self.v5 = v5
        self.received: list[paho.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self._lock = threading.Condition()
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.subacks: set[int] = set()
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(LOOPBACK, port)
        self.client.loop_start()
        deadline = TIMEOUT
        while not self.client.is_connected() and deadline > 0:
            threading.Event().wait(0.01)
            deadline -= 0.01
        assert self.client.is_connected(), "paho did not connect"

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.received.append(message)
            self._lock.notify_all()

    def _on_publish(
        self, client: paho.Client, userdata: object, mid: int, reason: object, props: object
    ) -> None:
        with self._lock:
            self.acks[mid] = int(getattr(reason, "value", 0) or 0)
            self._lock.notify_all()

    def _on_subscribe(
        self, client: paho.Client, userdata: object, mid: int, codes: object, props: object
    ) -> None:
        with self._lock:
            self.subacks.add(mid)
            self._lock.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        """Subscribe and wait for the SUBACK (a fixed pause loses the race under load)."""
        # Not under self._lock: paho runs callbacks (which take it) holding its own locks.
        result, mid = self.client.subscribe(topic, qos)
        assert result == paho.MQTT_ERR_SUCCESS
        with self._lock:
            assert self._lock.wait_for(lambda: mid in self.subacks, TIMEOUT), "no SUBACK"

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        *,
        content_type: str | None = None,
        user_properties: list[tuple[str, str]] | None = None,
    ) -> int:
        """Publish and wait for the ack; returns the PUBACK reason code (0 for QoS 0)."""
        props = None
        if self.v5 and (content_type or user_properties):
            props = Properties(PacketTypes.PUBLISH)
            if content_type:
                props.ContentType = content_type
            if user_properties:
                props.UserProperty = user_properties
        info = self.client.publish(topic, payload, qos, properties=props)
        if qos == 0:
            return 0
        with self._lock:
            assert self._lock.wait_for(lambda: info.mid in self.acks, TIMEOUT), "no PUBACK"
            return self.acks[info.mid]

    def wait_messages(self, count: int, timeout: float = TIMEOUT) -> list[paho.MQTTMessage]:
        with self._lock:
            self._lock.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        for _ in range(200):  # the network thread sends DISCONNECT and closes the socket
            if self.client.socket() is None:
                break
            threading.Event().wait(0.01)
        self.client.loop_stop()
        # Closes the connection if still open and paho's internal wake-up socket pair,
        # which paho otherwise leaves to the garbage collector (a ResourceWarning).
        self.client._reset_sockets()
