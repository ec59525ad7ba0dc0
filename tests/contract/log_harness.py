"""Harnesses: how the contract suite opens (and re-opens) each event-log backend.

A test "restarts" by calling ``harness.reopen(log)``: the log is closed and a
new one opened on the same storage. The memory backend has nothing to reopen
and hands back the same log.
"""

from __future__ import annotations

from typing import Protocol

from headwater.log import EventLog, MemoryLog


class Harness(Protocol):
    name: str

    async def open(self) -> EventLog: ...

    async def reopen(self, log: EventLog) -> EventLog:
        """Close ``log`` and open the same storage again (a restart)."""
        ...

    async def aclose(self) -> None: ...


class MemoryHarness:
    name = "memory"

    def __init__(self) -> None:
        self._log = MemoryLog()

    async def open(self) -> EventLog:
        return self._log

    async def reopen(self, log: EventLog) -> EventLog:
        return self._log

    async def aclose(self) -> None:
        await self._log.close()
