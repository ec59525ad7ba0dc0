"""An uplink's lanes: the events it read and has not had accepted yet, per lane.

Each lane sends one request at a time (see :mod:`headwater.tiers.uplink`):
``pending`` are the events waiting for its next batch, ``in_flight`` those of
the request under way. The oldest of them, by the events' own ``time``, is how
far behind the uplink is (``oldestUnsentAgeSeconds`` in its status).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from dataclasses import dataclass, field

from headwater.cloudevents import CloudEvent
from headwater.tiers._uplink_status import event_time

__all__ = ["Item", "Lane", "oldest_unsent_age"]


@dataclass(slots=True)
class Item:
    """One event read from the log, encoded for its batch (None: not encoded yet)."""

    offset: int
    event: CloudEvent
    encoded: bytes | None
    size: int
    read_at: float


@dataclass(slots=True, eq=False)
class Lane:
    index: int
    pending: collections.deque[Item] = field(default_factory=collections.deque)
    pending_bytes: int = 0
    in_flight: list[Item] = field(default_factory=list)
    first_at: float = 0.0
    wake: asyncio.Event = field(default_factory=asyncio.Event)


def oldest_unsent_age(lanes: Iterable[Lane], now: float) -> float | None:
    """Seconds since the oldest event not yet accepted was made (None: none waits)."""
    oldest: float | None = None
    for lane in lanes:
        head = lane.in_flight[0] if lane.in_flight else (lane.pending[0] if lane.pending else None)
        if head is None:
            continue
        made = event_time(head.event, head.read_at)
        if oldest is None or made < oldest:
            oldest = made
    return None if oldest is None else max(0.0, now - oldest)
