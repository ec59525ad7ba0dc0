"""Acknowledgements handed to a reader in bulk: what a consumer that finishes
entries out of order (a dispatcher, an uplink) does with each one it finished.

How this works: :meth:`AckBatcher.add` only queues the offset and wakes
:meth:`AckBatcher.run`, which hands everything queued to the reader, then
sleeps :data:`ACK_INTERVAL` before looking again. Each hand-over can cost the
log a write of its own (SQLite commits positions in a transaction when no
append is pending), so holding an ack back 10 ms is cheap: after a crash it
only means up to 10 ms more of entries are processed again. :meth:`flush`
hands over what is left (call it when the consumer stops).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from headwater.log.base import LogError, Reader

__all__ = ["ACK_INTERVAL", "AckBatcher"]

log = logging.getLogger(__name__)

ACK_INTERVAL: Final = 0.01
"""Acknowledgements go to the log in bulk, at most this often (seconds)."""


class AckBatcher:
    """Offsets finished by a consumer named ``name``, on their way to its reader
    (at most every ``interval`` seconds)."""

    __slots__ = ("_acks", "_due", "interval", "name")

    def __init__(self, name: str, interval: float = ACK_INTERVAL) -> None:
        self.name = name
        self.interval = interval
        self._acks: list[int] = []
        self._due = asyncio.Event()

    def add(self, offset: int) -> None:
        """Queue an acknowledgement; :meth:`run` hands it to the reader shortly."""
        self._acks.append(offset)
        self._due.set()

    def clear(self) -> None:
        """Forget what is queued (a restarted consumer gets it redelivered anyway)."""
        self._acks.clear()

    async def run(self, reader: Reader) -> None:
        """Hand acknowledgements over as they come, until cancelled."""
        while True:
            await self._due.wait()
            self._due.clear()
            await self.flush(reader)
            await asyncio.sleep(self.interval)

    async def flush(self, reader: Reader) -> None:
        acks, self._acks = self._acks, []
        for offset in acks:
            try:
                await reader.ack(offset)
            except LogError as exc:
                # The entry was handled; failing to record that only means it
                # may be handled again after a restart (at least once).
                log.warning("%s: could not acknowledge offset %d: %s", self.name, offset, exc)
