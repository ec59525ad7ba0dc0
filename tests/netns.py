"""An edge behind NAT, a WAN that can be cut or made bad, and a cloud: network namespaces.

How this works: :class:`Wan` builds four network namespaces joined by veth
pairs, as a gateway at a site reaches a cloud::

    edge 10.10.1.2 --- 10.10.1.1 nat 10.10.2.2 --- 10.10.2.1 wan 10.10.3.1 --- 10.10.3.2 cloud

``nat`` masquerades the edge's traffic (the edge is behind NAT: the cloud has
no route to 10.10.1.0/24, so it can only answer connections the edge
opened). ``wan`` is the link itself: :meth:`Wan.cut` takes its cloud-side
veth down (the link is really cut: packets go nowhere), :meth:`Wan.restore`
brings it back, :meth:`Wan.shape` makes it slow and lossy. Each test run gets
namespaces of its own (the test's pid and a random tag in the names), and
everything is removed on exit, processes started in them first (a process
keeps its namespace alive), also when the test failed; namespaces left by a
run that was killed are removed by the next one.

What :meth:`Wan.shape` emulates, since this kernel has no ``netem``: the rate
with ``tbf`` on both of the link's veths (each direction), the loss with an
nftables rule dropping a random share of the packets leaving the link
(``numgen random``, each direction), and the delay with a userspace TUN
relay (:mod:`tests.netns_relay`) through which the link's traffic is routed,
each direction. That is ``netem delay D loss L rate R`` on *both* ends'
egress: the round trip grows by twice the delay. Not emulated: jitter,
reordering, duplication and corruption.

The test process reaches into the namespaces without routes of its own: a
:class:`NetnsThread` is a thread that entered a namespace (``setns``), and
sockets it creates live there (an MQTT client of a device at the edge, an
HTTP receiver behind the cloud, calls to a Headwater's admin API).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

T = TypeVar("T")

EDGE: Final = "10.10.1.2"
NAT_INSIDE: Final = "10.10.1.1"
NAT_OUTSIDE: Final = "10.10.2.2"
WAN_NAT_SIDE: Final = "10.10.2.1"
WAN_CLOUD_SIDE: Final = "10.10.3.1"
CLOUD: Final = "10.10.3.2"

PREFIX: Final = "hwt"
"""Namespaces of these tests are named ``hwt<pid>x<tag>-<role>``."""

RELAY: Final = Path(__file__).with_name("netns_relay.py")
CLONE_NEWNET: Final = 0x40000000
READY_TIMEOUT: Final = 10.0


class NetnsError(RuntimeError):
    """Network namespaces cannot be made here (not root, or a tool is missing)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def in_ns(ns: str, *argv: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True, timeout=30
    )
    if check and result.returncode != 0:
        raise NetnsError(f"{ns}: {' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout


def require() -> None:
    """Fail loudly (never skip) when the machine cannot run these tests."""
    if os.geteuid() != 0:
        raise NetnsError("network namespace tests need root (CI runs them as root)")
    for tool in ("ip", "nft", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise NetnsError(f"{tool} is not installed (run `make servers`)")


def sweep_leftovers() -> None:
    """Remove namespaces of earlier runs whose process is gone (a run that was killed)."""
    listed = ip("netns", "list", check=False).stdout
    for line in listed.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.match(rf"{PREFIX}(\d+)x[0-9a-f]+-", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            _kill_pids(ip("netns", "pids", name, check=False).stdout.split())
            ip("netns", "del", name, check=False)


def _kill_pids(pids: Sequence[str]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)


_libc = ctypes.CDLL(None, use_errno=True)


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns``."""
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({ns}): {os.strerror(errno)}")
    finally:
        os.close(fd)


class NetnsThread:
    """One thread inside a namespace: what it runs makes sockets there."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix=f"netns-{ns}", initializer=enter, initargs=(ns,)
        )

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Wan:
    """The four namespaces (see the module docstring); use as a context manager."""

    def __init__(self) -> None:
        require()
        sweep_leftovers()
        tag = f"{PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        self.edge, self.nat, self.wan, self.cloud = (
            f"{tag}-{role}" for role in ("edge", "nat", "wan", "cloud")
        )
        self._processes: list[subprocess.Popen[str]] = []
        self._threads: list[NetnsThread] = []
        self._relay: subprocess.Popen[str] | None = None
        self._made: list[str] = []

    # -- building ---------------------------------------------------------------------

    def __enter__(self) -> Wan:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in (self.edge, self.nat, self.wan, self.cloud):
            ip("netns", "add", ns)
            self._made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        self._link(self.edge, "e0", EDGE, self.nat, "n0", NAT_INSIDE)
        self._link(self.nat, "n1", NAT_OUTSIDE, self.wan, "w0", WAN_NAT_SIDE)
        self._link(self.wan, "w1", WAN_CLOUD_SIDE, self.cloud, "c0", CLOUD)
        ip("-n", self.edge, "route", "add", "default", "via", NAT_INSIDE)
        ip("-n", self.nat, "route", "add", "default", "via", WAN_NAT_SIDE)
        # The cloud can answer the NAT's address, and has no route to the edge's network.
        ip("-n", self.cloud, "route", "add", "10.10.2.0/24", "via", WAN_CLOUD_SIDE)
        for ns in (self.nat, self.wan):
            in_ns(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        in_ns(
            self.nat,
            "nft",
            "-f",
            "-",
            stdin="table ip nat {\n chain post {\n  type nat hook postrouting priority 100;\n"
            '  oifname "n1" masquerade\n }\n}\n',
        )
        in_ns(
            self.wan,
            "nft",
            "-f",
            "-",
            stdin="table inet link {\n chain forward {\n"
            "  type filter hook forward priority 0; policy accept;\n }\n}\n",
        )

    @staticmethod
    def _link(a: str, a_if: str, a_ip: str, b: str, b_if: str, b_ip: str) -> None:
        ip("link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b)
        ip("-n", a, "addr", "add", f"{a_ip}/24", "dev", a_if)
        ip("-n", b, "addr", "add", f"{b_ip}/24", "dev", b_if)
        ip("-n", a, "link", "set", a_if, "up")
        ip("-n", b, "link", "set", b_if, "up")

    # -- the link ---------------------------------------------------------------------

    def cut(self) -> None:
        """Cut the WAN: its cloud-side veth goes down, and nothing crosses until restore()."""
        ip("-n", self.wan, "link", "set", "w1", "down")

    def restore(self) -> None:
        ip("-n", self.wan, "link", "set", "w1", "up")

    def shape(self, *, rate: str | None = None, loss: int = 0, delay: float = 0.0) -> None:
        """Make the link slow (``rate``, tc syntax), lossy (``loss`` percent) and long
        (``delay`` seconds), in each direction (see the module docstring)."""
        if rate is not None:
            for dev in ("w0", "w1"):
                # A 1 Mbit/s line with a quarter second of buffer, as a DSL modem has.
                in_ns(
                    self.wan,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "16kb",
                    "latency",
                    "250ms",
                )
        if loss:
            in_ns(
                self.wan,
                "nft",
                "add",
                "rule",
                "inet",
                "link",
                "forward",
                "oifname",
                '{ "w0", "w1" }',
                "numgen",
                "random",
                "mod",
                "100",
                "<",
                str(loss),
                "counter",
                "drop",
            )
        if delay:
            self._start_relay(delay)

    def _start_relay(self, delay: float) -> None:
        relay = subprocess.Popen(
            ["ip", "netns", "exec", self.wan, sys.executable, str(RELAY), "tun0", str(delay)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._relay = relay
        assert relay.stdout is not None
        if relay.stdout.readline().strip() != "ready":
            raise NetnsError("the delay relay did not start")
        ip("-n", self.wan, "link", "set", "tun0", "up")
        for key in ("all", "default", "tun0", "w0", "w1"):
            in_ns(self.wan, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
        # Everything that enters the link from either side goes through the relay first.
        ip("-n", self.wan, "route", "add", "default", "dev", "tun0", "table", "100")
        for dev in ("w0", "w1"):
            ip("-n", self.wan, "rule", "add", "iif", dev, "table", "100")

    def dropped(self) -> int:
        """Packets the loss rule dropped so far."""
        out = in_ns(self.wan, "nft", "-j", "list", "chain", "inet", "link", "forward")
        total = 0
        for item in json.loads(out)["nftables"]:
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def wire_bytes(self) -> int:
        """Bytes that crossed the link so far, both ways (the cloud-side veth's counters)."""
        out = ip("-n", self.wan, "-j", "-s", "link", "show", "w1").stdout
        stats = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]) + int(stats["tx"]["bytes"])

    # -- processes and threads ---------------------------------------------------------

    def popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start ``argv`` inside ``ns``; it is killed when the namespaces go."""
        process = subprocess.Popen(["ip", "netns", "exec", ns, *argv], text=True, **kwargs)
        self._processes.append(process)
        return process

    def thread(self, ns: str) -> NetnsThread:
        thread = NetnsThread(ns)
        self._threads.append(thread)
        return thread

    def close(self) -> None:
        for process in [*self._processes, *([self._relay] if self._relay else [])]:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        for thread in self._threads:
            thread.close()
        for ns in self._made:
            _kill_pids(ip("netns", "pids", ns, check=False).stdout.split())
            ip("netns", "del", ns, check=False)
        self._made.clear()


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll state another process changes, failing with ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g}s waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def wan() -> Iterator[Wan]:
    with Wan() as link:
        yield link
