"""MQTT codec: decode and encode of PUBLISH, Headwater vs paho-mqtt and amqtt.

What is measured, per side, for N PUBLISH packets with a 64-byte payload on a
4-level topic (QoS 0 and QoS 1; MQTT 3.1.1, and 5.0 where the peer speaks it):

* decode: a buffer holding N back-to-back packets, fed in 64 KiB chunks (what
  a socket read returns under load), turned into N message values.

  - Headwater: ``Decoder.receive_data`` + ``next_packet`` (framing, full
    validation: UTF-8, no wildcards, flags, packet id; a frozen ``Publish``).
  - paho-mqtt 2.x: ``paho.mqtt._packet.decode_publish`` (its pure PUBLISH
    parser, used by ``Client._handle_publish``). paho frames packets by
    reading the socket a byte at a time, which cannot be separated from its
    I/O, so this harness frames for it with a minimal Remaining Length loop
    (no validation) and paho is credited with that cheap framing.
  - amqtt: ``PublishPacket.from_stream`` on an ``asyncio.StreamReader``
    holding the bytes (its codec is async; the broker decodes that way).

* encode: N packets with distinct packet identifiers, from topic/payload to bytes.

  - Headwater: ``encode(Publish(...), version)`` (build the validated value,
    then encode), and ``encode_publish(...)`` (the broker's fan-out path with
    a pre-encoded topic).
  - paho-mqtt: ``Client._send_publish`` (how paho frames a PUBLISH), with the
    output queue stubbed out so that no socket is touched.
  - amqtt: ``PublishPacket.build(...).to_bytes()``.

Run: ``.venv/bin/python benchmarks/mqtt_codec.py [-n N] [--repeat R]``. The
best of R runs per case is reported (the machine is shared; the best run is
the least disturbed), with the ratio Headwater / peer.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho_client
from amqtt.adapters import StreamReaderAdapter
from amqtt.mqtt.publish import PublishPacket as AmqttPublish
from paho.mqtt import _packet as paho_packet
from paho.mqtt.enums import MQTTProtocolVersion

from headwater.mqtt.packets import (
    NEED_DATA,
    Decoder,
    ProtocolVersion,
    Publish,
    encode,
    encode_publish,
)

DEFAULT_N = 100_000
"""Packets per run: about a second for the slowest side on the reference machine."""

TOPIC = "devices/gw-1/sensor-17/temperature"
PAYLOAD = bytes(range(64))
CHUNK = 65536
V311 = ProtocolVersion.MQTT311
V5 = ProtocolVersion.MQTT5


def wire(n: int, qos: int, version: ProtocolVersion) -> bytes:
    return b"".join(
        encode(Publish(TOPIC, PAYLOAD, qos, packet_id=i % 65535 + 1 if qos else None), version)
        for i in range(n)
    )


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


# -- decode ---------------------------------------------------------------------------------------


def headwater_decode(data: bytes, n: int, version: ProtocolVersion) -> Callable[[], int]:
    parts = chunks(data)

    def run() -> int:
        decoder = Decoder(server=True, version=version)
        count = 0
        for part in parts:
            decoder.receive_data(part)
            while (packet := decoder.next_packet()) is not NEED_DATA:
                count += 1
        assert isinstance(packet, type(NEED_DATA))
        return count

    return run


def paho_decode(data: bytes, n: int, version: ProtocolVersion) -> Callable[[], int]:
    parts = chunks(data)
    protocol = MQTTProtocolVersion.MQTTv5 if version == V5 else MQTTProtocolVersion.MQTTv311
    decode_publish = paho_packet.decode_publish

    def run() -> int:
        buffer = b""
        count = 0
        for part in parts:
            buffer = buffer + part if buffer else part
            pos = 0
            while True:
                # Minimal framing for paho (see the module docstring).
                if len(buffer) - pos < 2:
                    break
                length = 0
                shift = 0
                header = 1
                while True:
                    if pos + header >= len(buffer):
                        length = -1
                        break
                    byte = buffer[pos + header]
                    header += 1
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if byte < 0x80:
                        break
                if length < 0 or pos + header + length > len(buffer):
                    break
                decode_publish(buffer[pos], buffer[pos + header : pos + header + length], protocol)
                pos += header + length
                count += 1
            buffer = buffer[pos:]
        return count

    return run


def amqtt_decode(data: bytes, n: int, version: ProtocolVersion) -> Callable[[], int] | None:
    if version != V311:
        return None  # amqtt speaks MQTT 3.1.1 only

    async def main() -> int:
        reader = asyncio.StreamReader(limit=len(data) + 1)
        reader.feed_data(data)
        reader.feed_eof()
        adapter = StreamReaderAdapter(reader)
        for _ in range(n):
            await AmqttPublish.from_stream(adapter)
        return n

    return lambda: asyncio.run(main())


# -- encode ---------------------------------------------------------------------------------------


def headwater_encode(n: int, qos: int, version: ProtocolVersion) -> Callable[[], int]:
    def run() -> int:
        for i in range(n):
            encode(Publish(TOPIC, PAYLOAD, qos, packet_id=i % 65535 + 1 if qos else None), version)
        return n

    return run


def headwater_encode_publish(n: int, qos: int, version: ProtocolVersion) -> Callable[[], int]:
    topic = TOPIC.encode()

    def run() -> int:
        for i in range(n):
            encode_publish(topic, PAYLOAD, version, qos=qos, packet_id=i % 65535 + 1)
        return n

    return run


class _NoSocket:
    """Stands in for paho's socket: ``_send_publish`` only checks that one is set."""

    def close(self) -> None:
        pass


def paho_encode(n: int, qos: int, version: ProtocolVersion) -> Callable[[], int]:
    protocol = paho_client.MQTTv5 if version == V5 else paho_client.MQTTv311
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=protocol)
    sent: list[Any] = []
    client._sock = _NoSocket()  # type: ignore[assignment]  # "connected": _send_publish checks it
    client._packet_queue = lambda command, packet, mid, qos, info=None: sent.append(packet)  # type: ignore[method-assign,assignment,misc]
    topic = TOPIC.encode()

    def run() -> int:
        for i in range(n):
            client._send_publish(i % 65535 + 1, topic, PAYLOAD, qos)
        sent.clear()
        return n

    return run


def amqtt_encode(n: int, qos: int, version: ProtocolVersion) -> Callable[[], int] | None:
    if version != V311:
        return None

    def run() -> int:
        for i in range(n):
            AmqttPublish.build(
                TOPIC, PAYLOAD, i % 65535 + 1 if qos else None, False, qos, False
            ).to_bytes()
        return n

    return run


def best_rate(run: Callable[[], int], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        count = run()
        best = min(best, (time.perf_counter() - start) / count)
    return 1.0 / best


def check_outputs(qos: int, version: ProtocolVersion) -> None:
    """All sides produce the same bytes and read back the same message."""
    ours = encode(Publish(TOPIC, PAYLOAD, qos, packet_id=1 if qos else None), version)
    assert encode_publish(TOPIC, PAYLOAD, version, qos=qos, packet_id=1) == ours
    protocol = paho_client.MQTTv5 if version == V5 else paho_client.MQTTv311
    client = paho_client.Client(paho_client.CallbackAPIVersion.VERSION2, protocol=protocol)
    sent: list[Any] = []
    client._sock = _NoSocket()  # type: ignore[assignment]
    client._packet_queue = lambda command, packet, mid, qos, info=None: sent.append(packet)  # type: ignore[method-assign,assignment,misc]
    client._send_publish(1, TOPIC.encode(), PAYLOAD, qos)
    assert bytes(sent[0]) == ours, (bytes(sent[0]), ours)
    if version == V311:
        theirs = AmqttPublish.build(TOPIC, PAYLOAD, 1 if qos else None, False, qos, False)
        assert theirs.to_bytes() == ours
    header = 2
    decoded = paho_packet.decode_publish(
        ours[0],
        ours[header:],
        MQTTProtocolVersion.MQTTv5 if version == V5 else MQTTProtocolVersion.MQTTv311,
    )
    assert decoded.topic == TOPIC.encode() and decoded.payload == PAYLOAD


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=DEFAULT_N, help="packets per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best counts")
    args = parser.parse_args()
    n: int = args.n

    print(f"PUBLISH, {len(PAYLOAD)}-byte payload, topic {TOPIC!r}, n={n}, best of {args.repeat}")
    print(
        f"{'case':<34}{'Headwater':>14}{'paho-mqtt':>14}{'amqtt':>14}{'HW/paho':>10}{'HW/amqtt':>10}"
    )
    for version in (V311, V5):
        for qos in (0, 1):
            check_outputs(qos, version)
            data = wire(n, qos, version)
            name = f"{'3.1.1' if version == V311 else '5.0'} QoS {qos}"
            decoders = (headwater_decode, paho_decode, amqtt_decode)
            encoders = (headwater_encode, paho_encode, amqtt_encode)
            decode_rates = rates([make(data, n, version) for make in decoders], args.repeat)
            encode_rates = rates([make(n, qos, version) for make in encoders], args.repeat)
            fast = rates([headwater_encode_publish(n, qos, version)], args.repeat)
            print_row(f"decode {name}", decode_rates, decode_rates[1:])
            print_row(f"encode {name}", encode_rates, encode_rates[1:])
            # The fan-out path against the peers' (only) way to encode.
            print_row(f"encode_publish {name}", [*fast, None, None], encode_rates[1:])


def rates(runs: list[Callable[[], int] | None], repeat: int) -> list[float | None]:
    return [None if run is None else best_rate(run, repeat) for run in runs]


def print_row(label: str, cells: list[float | None], peers: list[float | None]) -> None:
    ours = cells[0]
    assert ours is not None
    text = "".join(f"{'-' if rate is None else f'{rate:,.0f}/s':>14}" for rate in cells)
    ratios = "".join(f"{'-' if peer is None else f'{ours / peer:.2f}x':>10}" for peer in peers)
    print(f"{label:<34}{text}{ratios}")


if __name__ == "__main__":
    main()
