"""A TUN device that hands every packet back after a fixed delay: the WAN's latency.

How this works: this kernel has no ``netem`` queueing discipline, so the delay
of an emulated WAN is made here. Run inside a network namespace (``ip netns
exec NS python tests/netns_relay.py DEV SECONDS``), it creates the TUN device
``DEV`` (no packet information header), prints ``ready`` and then forwards:
every IP packet the kernel routes into ``DEV`` is written back into it
``SECONDS`` later, and the kernel routes it on from there as if it had
arrived on ``DEV``. :mod:`tests.netns` routes the traffic that crosses the
WAN namespace through it. Order is kept (a constant delay); the loss and the
rate limit of the link are the kernel's (nftables and ``tbf``), not this
relay's. It runs until killed.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MTU = 65535


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def relay(fd: int, delay: float) -> None:
    waiting: collections.deque[tuple[float, bytes]] = collections.deque()
    while True:
        timeout = None
        if waiting:
            timeout = max(0.0, waiting[0][0] - time.monotonic())
        readable, _, _ = select.select([fd], [], [], timeout)
        now = time.monotonic()
        if readable:
            while True:
                try:
                    packet = os.read(fd, MTU)
                except BlockingIOError:
                    break
                waiting.append((now + delay, packet))
        while waiting and waiting[0][0] <= now:
            _, packet = waiting.popleft()
            # The device going away, or a packet refused: a lost packet.
            with contextlib.suppress(OSError):
                os.write(fd, packet)


def main() -> None:
    name, delay = sys.argv[1], float(sys.argv[2])
    fd = open_tun(name)
    print("ready", flush=True)
    relay(fd, delay)


if __name__ == "__main__":
    main()
