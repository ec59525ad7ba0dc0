"""Log lines that cannot flood: repeats of one kind of line are summarised.

How this works: a :class:`Throttle` wraps a :class:`logging.Logger`. Each
call names a *key* (what repeats: ``("peer-abort", listener)``, a Trigger's
name, ...). The first line of a key is written at once; further lines of the
same key within ``interval`` seconds are counted, not written, and the next
line after the interval says how many were left out
(``... (and 406 more like it in the last 60 s)``). Every call, written or
not, counts in :attr:`Throttle.counts`, which ``/metrics`` can expose, so
nothing is hidden: it is summarised.

A peer's misbehaviour (an aborted upload, a malformed request, a slow client)
is a WARNING through a throttle, never a traceback: tracebacks are for
Headwater's own bugs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_MAX_KEYS", "Throttle"]

DEFAULT_INTERVAL: Final = 60.0
"""Seconds between two lines of one key: one line a minute per kind of trouble
is enough to see it in a console, and little enough never to flood one."""

DEFAULT_MAX_KEYS: Final = 4096
"""Keys remembered at most. Keys come from configuration (Trigger names) or a
fixed set of kinds, but a key built from a peer's address must not grow memory
without bound: past this, the oldest key is forgotten (its next line is
written at once, which is the safe side)."""


@dataclass(slots=True)
class _Window:
    last_written: float
    suppressed: int = 0


class Throttle:
    """At most one log line per key per ``interval``, with a count of the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        #: Calls per key, written or not (for metrics and tests).
        self.counts: dict[Hashable, int] = {}

    def log(self, level: int, key: Hashable, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval.

        Returns whether a line was written.
        """
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if len(counts) > self.max_keys:
            counts.pop(next(iter(counts)))
        if not self.logger.isEnabledFor(level):
            return False
        now = self._clock()
        windows = self._windows
        window = windows.get(key)
        if window is not None and now - window.last_written < self.interval:
            window.suppressed += 1
            return False
        if window is not None and window.suppressed:
            msg = f"{msg} (and {window.suppressed} more like it in the last %.0f s)"
            args = (*args, now - window.last_written)
        if window is None:
            if len(windows) >= self.max_keys:
                windows.pop(next(iter(windows)))
            windows[key] = _Window(now)
        else:
            window.last_written = now
            window.suppressed = 0
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, msg, *args)

    def info(self, key: Hashable, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def total(self, key: Hashable) -> int:
        """Calls made with ``key`` so far (written and summarised)."""
        return self.counts.get(key, 0)
