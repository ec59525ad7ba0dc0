"""A wake-up for waiters on "something changed": log streams, state buckets.

How this works: one :class:`asyncio.Event` per generation. A waiter takes the
current event *before* it looks for what it waits for, and waits on it only if
it found nothing; ``notify`` sets that event and starts a new generation, so a
change that lands between the look and the wait still wakes the waiter, and
nothing is ever cleared under a waiter's feet.
"""

from __future__ import annotations

import asyncio

__all__ = ["Signal"]


class Signal:
    """Wakes every waiter on the next :meth:`notify`."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event: asyncio.Event | None = None

    def waiter(self) -> asyncio.Event:
        """Take this before looking for entries, then wait on it if there were none."""
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()
