"""Retry delays: capped exponential backoff, with full jitter where many clients retry.

How this works: a :class:`Backoff` hands out the next delay with
:meth:`Backoff.next` and starts over with :meth:`Backoff.reset` once the thing
being retried works again. Delay ``n`` (from 0) is ``initial * factor**n``
capped at ``maximum``; with ``jitter`` it is drawn uniformly between 0 and
that ("full jitter", which spreads a crowd of reconnecting clients best:
AWS Architecture Blog, "Exponential Backoff And Jitter", 2015). Pure: no
clock, no sleeping; the caller waits.

Every loop in Headwater that retries something it does not control (a broker
connection, a log that is unavailable, a crashed process, a remote endpoint)
takes its delays from here, so that each has a named initial delay and cap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]

#: Exponent beyond which the delay is the cap anyway (2**30 x any sane initial).
_MAX_EXPONENT = 30


@dataclass(slots=True)
class Backoff:
    """Delays ``initial``, ``initial*factor``, ... up to ``maximum`` (seconds)."""

    initial: float
    maximum: float
    factor: float = 2.0
    jitter: bool = False
    attempt: int = 0
    _random: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")

    def peek(self) -> float:
        """The cap of the next delay (what :meth:`next` returns without jitter)."""
        exponent = min(self.attempt, _MAX_EXPONENT)
        return min(self.maximum, self.initial * self.factor**exponent)

    def next(self) -> float:
        """The delay before the next attempt; each call moves one step up."""
        ceiling = self.peek()
        self.attempt += 1
        return self._random.uniform(0, ceiling) if self.jitter else ceiling

    def reset(self) -> None:
        """The retried thing worked: the next delay is ``initial`` again."""
        self.attempt = 0
