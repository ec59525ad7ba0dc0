"""The edge side of the downlink: pull commands from the cloud over an outbound connection.

How this works: a :class:`Downlink` runs one loop of long polls against its
edge's queue in the cloud (:mod:`headwater.tiers.edgequeue`), over the lean
keep-alive HTTP client, so the only connection is the one the edge opens:
nothing has to reach the edge through its NAT or firewall. Each pull says
which commands the edge has stored (``ack``), how many it wants and how long
the cloud may hold the request open (``wait``); the answer is a CloudEvents
JSON batch and the offset to acknowledge (``Headwater-Last-Offset``). The
commands are handed to ``store`` (the runtime appends them to a local
Broker, durably), and only when that returned does the next pull carry the
acknowledgement. A failed store is retried before anything is pulled again;
a lost answer, a cut link or a killed edge only mean the cloud sends the same
commands again (at least once, never skipped).

Why long polls over HTTP, and not a WebSocket or MQTT to the cloud's broker:

- the acknowledgement *is* the next request: the edge's durable position
  travels in every pull, so resuming after a cut, a restart of either side or
  a NAT rebinding needs no session state on the connection, no per-message
  acks and no replay window (a WebSocket needs all three on top of the socket);
- it is plain HTTP/1.1 on the cloud's existing port, through any proxy or
  load balancer, with the same TLS, client certificates and bearer tokens as
  the uplink, and the same client code;
- it keeps the downlink independent of the MQTT client and broker (an MQTT
  persistent session would put the queue in the broker's session store, whose
  bounds and expiry are MQTT's, not the log's).

What it costs, measured with ``benchmarks/uplink.py --downlink`` over an
emulated WAN of 300 ms each way: a command sent to the cloud's Broker reached
the device in 0.31 s at the median (one one-way trip: the waiting pull answers
at once) and 0.42 s at most (it came while an answer was on its way, and
waited for the next pull); an idle edge pulls once per ``wait`` for about
1.2 KB on the wire (request, answer, TCP/IP, both ways), some 3.5 KB a minute
at the default 20 s. A WebSocket would save the second case's round trip and
some idle bytes, for the session machinery above.

Expired commands (``expiresat`` passed) are dropped here too, counted, before
the append, and ``knativebrokerttl`` is decremented on the way down: an event
that goes round between tiers (up in an Uplink, back down through an Edge)
loses one per round and dies as a reply loop does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlencode

from headwater.cloudevents import CloudEvent, InvalidEvent, from_http
from headwater.eventing._http1 import Http1Client, HttpError
from headwater.eventing.broker import TTL_EXTENSION, event_ttl
from headwater.eventing.expiry import expired
from headwater.logs import Throttle
from headwater.tiers._policy import new_backoff, next_wait
from headwater.tiers.limits import DEFAULT_PULL_EVENTS, DEFAULT_WAIT

__all__ = ["LAST_OFFSET_HEADER", "Downlink", "DownlinkStats", "hop"]

log = logging.getLogger(__name__)

LAST_OFFSET_HEADER: Final = "Headwater-Last-Offset"
"""The answer header naming the offset a pull acknowledges once its commands are stored."""

REQUEST_MARGIN: Final = 15.0
"""Seconds a pull may take beyond the wait it asked for (a slow link, a busy
cloud) before the edge gives up on it and pulls again."""

MAX_PULL_BYTES: Final = 16 * 1024 * 1024
"""The largest answer read: a thousand commands of up to 16 KiB each."""

Store = Callable[[list[CloudEvent]], Awaitable[None]]
"""``store(commands)``: append durably (raising: not stored, try again)."""


@dataclass(slots=True, eq=False)
class DownlinkStats:
    received: int = 0
    stored: int = 0
    expired: int = 0
    ttl_dropped: int = 0
    pulls: int = 0
    failed_attempts: int = 0
    connected: bool = False
    last_error: str | None = None
    last_error_at: float | None = None
    last_received_at: float | None = None
    acknowledged: int | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "received": self.received,
            "stored": self.stored,
            "expired": self.expired,
            "ttlDropped": self.ttl_dropped,
            "pulls": self.pulls,
            "failedAttempts": self.failed_attempts,
            "acknowledged": self.acknowledged,
            "lastReceivedAt": _text(self.last_received_at),
            "lastError": self.last_error,
            "lastErrorAt": _text(self.last_error_at),
        }


def _text(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment).astimezone().isoformat(timespec="seconds")


def hop(
    events: list[CloudEvent], stats: DownlinkStats, now: float | None = None
) -> list[CloudEvent]:
    """The commands worth storing: not expired, with ``knativebrokerttl`` one lower
    (those that reach zero are dropped, as the Broker drops reply loops)."""
    now = time.time() if now is None else now
    kept: list[CloudEvent] = []
    for event in events:
        if expired(event, now):
            stats.expired += 1
            continue
        ttl = event_ttl(event)
        if ttl is not None:
            if ttl <= 1:
                stats.ttl_dropped += 1
                log.warning(
                    "dropped command id=%s source=%s: %s reached 0 (a loop between tiers?)",
                    event.id,
                    event.source,
                    TTL_EXTENSION,
                )
                continue
            event = event.evolve({TTL_EXTENSION: ttl - 1})
        kept.append(event)
    return kept


class Downlink:
    """Pulls the commands of one edge until cancelled (see the module docstring)."""

    def __init__(
        self,
        url: str,
        client: Http1Client,
        store: Store,
        *,
        headers: Mapping[str, str] | None = None,
        max_events: int = DEFAULT_PULL_EVENTS,
        wait: float = DEFAULT_WAIT,
        backoff: tuple[float, float] | None = None,
        name: str | None = None,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        if wait < 0:
            raise ValueError("wait must not be negative")
        self.url = url
        self.name = name or url
        self.max_events = max_events
        self.wait = wait
        self._client = client
        self._store = store
        self._headers = {"accept-encoding": "gzip", **(headers or {})}
        self._backoff = backoff
        new_backoff(backoff)  # validate now, not at the first failure
        self.stats = DownlinkStats()
        self._throttle = Throttle(log)

    async def run(self) -> None:
        """Pull, store, acknowledge, until cancelled."""
        backoff = new_backoff(self._backoff)
        stats = self.stats
        ack: int | None = None
        while True:
            query = {"max": self.max_events, "wait": f"{self.wait:g}"}
            if ack is not None:
                query["ack"] = ack
            stats.pulls += 1
            try:
                async with asyncio.timeout(self.wait + REQUEST_MARGIN):
                    status, reason, headers, body = await self._client.post(
                        f"{self.url}?{urlencode(query)}", self._headers, b"", MAX_PULL_BYTES
                    )
            except (HttpError, TimeoutError) as exc:
                self._failed(f"no answer: {exc or 'timed out'}")
                await asyncio.sleep(next_wait(backoff))
                continue
            if status == 204:
                self._connected()
                backoff.reset()
                continue
            if status != 200:
                text = body[:200].decode("utf-8", "replace").strip()
                self._failed(f"HTTP {status} {reason}: {text}", connected=True)
                await asyncio.sleep(next_wait(backoff))
                continue
            try:
                commands, last = _decode(headers, body)
            except InvalidEvent as exc:
                # The cloud sent something unreadable: not stored, not acknowledged.
                self._failed(f"unreadable answer: {exc}", connected=True)
                await asyncio.sleep(next_wait(backoff))
                continue
            self._connected()
            backoff.reset()
            stats.received += len(commands)
            stats.last_received_at = time.time()
            await self._store_all(hop(commands, stats))
            ack = last
            stats.acknowledged = last

    async def _store_all(self, commands: list[CloudEvent]) -> None:
        """Store until it works: the acknowledgement waits for it."""
        if not commands:
            return
        backoff = new_backoff(self._backoff)
        while True:
            try:
                await self._store(commands)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(f"cannot store commands locally: {exc}", connected=True)
                await asyncio.sleep(next_wait(backoff))
                continue
            self.stats.stored += len(commands)
            return

    def _connected(self) -> None:
        if not self.stats.connected:
            log.info("%s: connected to %s", self.name, self.url)
        self.stats.connected = True

    def _failed(self, error: str, *, connected: bool = False) -> None:
        stats = self.stats
        stats.failed_attempts += 1
        stats.last_error = error
        stats.last_error_at = time.time()
        stats.connected = connected
        self._throttle.warning(
            ("failed", self.name), "%s: pulling from %s: %s; retrying", self.name, self.url, error
        )

    def status(self) -> dict[str, Any]:
        return {"url": self.url, **self.stats.snapshot()}


def _decode(headers: list[tuple[str, str]], body: bytes) -> tuple[list[CloudEvent], int]:
    last: int | None = None
    for name, value in headers:
        if name.lower() == LAST_OFFSET_HEADER.lower() and value.strip().isdigit():
            last = int(value)
    if last is None:
        raise InvalidEvent("headers", f"the answer has no {LAST_OFFSET_HEADER}")
    decoded = from_http(headers, body)
    return (decoded if isinstance(decoded, list) else [decoded]), last
