"""An uplink's counters and gauges, and how its backlog and send rate are judged.

How this works: :class:`UplinkStats` holds what ``describe uplink`` and
``/metrics`` show; the uplink refreshes the gauges every second from the
log's stream info (the consumer's lag is the backlog; its bytes are
estimated from the stream's average event size) and from its lanes (the
oldest unsent event). :class:`SendRate` averages the accepted events over
the last :data:`RATE_WINDOW` seconds, and :func:`at_risk` names the
retention limits a backlog has come close to, which the uplink warns about
once a minute: past them, events are dropped before they were ever sent.
"""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from headwater.cloudevents import CloudEvent
from headwater.eventing import LatencyHistogram
from headwater.log import StreamConfig

__all__ = [
    "AT_RISK_FRACTION",
    "RATE_WINDOW",
    "SendRate",
    "UplinkStats",
    "at_risk",
    "event_time",
    "now_text",
]

RATE_WINDOW: Final = 10.0
"""The send rate is the average over this many seconds."""

AT_RISK_FRACTION: Final = 0.8
"""A backlog past this fraction of a retention limit is warned about (once a minute)."""


@dataclass(slots=True, eq=False)
class UplinkStats:
    """Counters and gauges of an uplink, read for ``describe`` and ``/metrics``.

    ``sent``: events the receiver accepted (2xx). ``requests``: requests made
    (each attempt). ``failed_attempts``: requests that failed or were refused.
    ``dead_lettered``: events refused for good and handed to ``on_refused``.
    ``dropped_unsent``: events retention removed before the uplink read them.
    ``backlog_events``: events after the durable position (the consumer's lag);
    ``backlog_bytes``: their size, estimated from the stream's average event
    size; ``oldest_unsent_age``: seconds since the oldest event not yet
    accepted was made (its ``time``, else when the uplink read it).
    ``wire_bytes``/``raw_bytes``: request bodies sent, after and before gzip.
    """

    sent: int = 0
    requests: int = 0
    failed_attempts: int = 0
    dead_lettered: int = 0
    filtered: int = 0
    expired: int = 0
    dropped_unsent: int = 0
    backlog_events: int = 0
    backlog_bytes: int = 0
    oldest_unsent_age: float | None = None
    send_rate: float = 0.0
    wire_bytes: int = 0
    raw_bytes: int = 0
    in_flight: int = 0
    link: str = "unknown"
    last_error: str | None = None
    last_error_at: str | None = None
    last_sent_at: str | None = None
    at_risk: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def snapshot(self) -> dict[str, Any]:
        return {
            "link": self.link,
            "sent": self.sent,
            "sendRate": round(self.send_rate, 1),
            "backlogEvents": self.backlog_events,
            "backlogBytes": self.backlog_bytes,
            "oldestUnsentAgeSeconds": (
                None if self.oldest_unsent_age is None else round(self.oldest_unsent_age, 3)
            ),
            "droppedUnsent": self.dropped_unsent,
            "retentionAtRisk": self.at_risk,
            "deadLettered": self.dead_lettered,
            "filtered": self.filtered,
            "expired": self.expired,
            "requests": self.requests,
            "failedAttempts": self.failed_attempts,
            "inFlight": self.in_flight,
            "wireBytes": self.wire_bytes,
            "rawBytes": self.raw_bytes,
            "lastSentAt": self.last_sent_at,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at,
            "latencySeconds": self.latency.snapshot(),
        }


def now_text() -> str:
    """Now, as local time in ISO 8601 (seconds)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


class SendRate:
    """Events accepted per second, averaged over the last :data:`RATE_WINDOW` seconds."""

    __slots__ = ("_samples",)

    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def update(self, now: float, sent: int) -> float:
        """Record the ``sent`` total at ``now``; the rate over the window."""
        samples = self._samples
        samples.append((now, sent))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        first_time, first_sent = samples[0]
        return (sent - first_sent) / (now - first_time) if now > first_time else 0.0


def at_risk(config: StreamConfig, stats: UplinkStats) -> str | None:
    """What of the retention limits the unsent backlog is close to; None when none."""
    reasons = []
    if config.max_events and stats.backlog_events >= AT_RISK_FRACTION * config.max_events:
        reasons.append(f"{stats.backlog_events} of at most {config.max_events} events")
    if config.max_bytes and stats.backlog_bytes >= AT_RISK_FRACTION * config.max_bytes:
        reasons.append(f"{stats.backlog_bytes} of at most {config.max_bytes} bytes")
    age = stats.oldest_unsent_age
    if config.max_age and age is not None and age >= AT_RISK_FRACTION * config.max_age:
        reasons.append(f"oldest unsent {age:.0f}s of at most {config.max_age:g}s")
    return "; ".join(reasons) or None


def event_time(event: CloudEvent, default: float) -> float:
    """When an event was made: its ``time`` attribute, else ``default``."""
    value = event.get("time")
    if type(value) is str:
        with contextlib.suppress(ValueError):
            return min(datetime.fromisoformat(value).timestamp(), default)
    return default
