"""Event expiry: the ``expiresat`` extension, and the one rule every hop applies.

How this works: a command to an actuator is only worth delivering while it is
fresh ("open the vent" an hour late is worse than never). A producer says
until when an event is worth delivering with the ``expiresat`` extension, an
RFC 3339 timestamp (a CloudEvents Timestamp; as a string in the binary and
JSON encodings, like ``time``). Every hop that holds an event for later
checks it before handing it on and drops an expired event with a count
instead of delivering it: a Trigger's or Subscription's delivery (before the
first attempt and before every retry), an ``Edge`` queue in the cloud (when
the event is queued and when the edge pulls it) and the edge's ``Downlink``
(before its durable append). An event without the extension never expires;
one whose ``expiresat`` cannot be read is not dropped (it is delivered, and
the problem is the producer's to see), since dropping a command for a typo
would fail silently in the other direction.

There is no CloudEvents extension for this (the MQTT binding has the message
expiry interval, which is relative and only lives as long as one MQTT hop), so
the name is Headwater's; an absolute time survives any number of hops and
store-and-forward delays without being rewritten on the way.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Final

from headwater.cloudevents import CloudEvent

__all__ = ["EXPIRES_AT", "expired", "expires_at"]

EXPIRES_AT: Final = "expiresat"
"""The extension's name: the time after which the event is not delivered."""


def expires_at(event: CloudEvent) -> float | None:
    """The event's expiry as seconds since the epoch; None without a readable one."""
    value: Any = event.get(EXPIRES_AT)
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp() if value.tzinfo is not None else None
    if type(value) is not str:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:  # RFC 3339 requires an offset; a local time is ambiguous
        return None
    return moment.timestamp()


def expired(event: CloudEvent, now: float | None = None) -> bool:
    """Whether ``event`` carries an ``expiresat`` that lies in the past (at ``now``)."""
    if EXPIRES_AT not in event:  # the common case: one lookup
        return False
    deadline = expires_at(event)
    return deadline is not None and deadline <= (time.time() if now is None else now)
