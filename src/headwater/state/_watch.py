"""What both backends share: the watch loop.

How this works: every write through a store object notifies its bucket's
:class:`~headwater._signal.Signal`; a watcher takes the signal's current
waiter *before* it looks for changes, so a write that lands between the look
and the wait still wakes it. A backend whose storage other processes change (SQLite) also gives a
``poll`` interval: the watcher looks again after that long even without a
local write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from headwater._signal import Signal
from headwater.state.base import Entry, StateClosed

__all__ = ["Signal", "watch_changes"]


async def watch_changes(
    changes_after: Callable[[int], Awaitable[list[Entry]]],
    after: int,
    signal: Signal,
    *,
    closed: Callable[[], bool],
    poll: float | None = None,
) -> AsyncIterator[Entry]:
    """Yield ``changes_after(seen)`` as they come, forever (StateClosed once closed)."""
    seen = after
    while True:
        if closed():
            raise StateClosed("the state store was closed")
        waiter = signal.waiter()
        changes = await changes_after(seen)
        for change in changes:
            seen = change.revision
            yield change
        if changes:
            continue
        if poll is None:
            await waiter.wait()
        else:
            try:
                async with asyncio.timeout(poll):
                    await waiter.wait()
            except TimeoutError:
                pass
