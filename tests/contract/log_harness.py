"""Harnesses: how the contract suite opens (and re-opens) each event-log backend.

A test "restarts" by calling ``harness.reopen(log)``: the log is closed and a
new one opened on the same storage. The memory backend has nothing to reopen
and hands back the same log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from headwater.log import EventLog, MemoryLog
from headwater.log.jetstream import JetStreamLog
from headwater.log.sqlite import Durability, SqliteLog


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


class _StoredHarness:
    """A backend with storage outside the log object: reopen = close and open anew."""

    name = ""

    def __init__(self) -> None:
        self._logs: list[EventLog] = []

    async def _new_log(self) -> EventLog:
        raise NotImplementedError

    async def open(self) -> EventLog:
        log = await self._new_log()
        self._logs.append(log)
        return log

    async def reopen(self, log: EventLog) -> EventLog:
        await log.close()
        return await self.open()

    async def aclose(self) -> None:
        for log in self._logs:
            await log.close()


class SqliteHarness(_StoredHarness):
    name = "sqlite"

    def __init__(self, directory: Path, durability: Durability = "normal") -> None:
        super().__init__()
        self._path = directory / "log.db"
        self._durability = durability

    async def _new_log(self) -> EventLog:
        return await SqliteLog.open(self._path, durability=self._durability, poll_interval=0.05)


class JetStreamHarness(_StoredHarness):
    name = "jetstream"

    def __init__(self, url: str, namespace: str) -> None:
        super().__init__()
        self._url = url
        self._namespace = namespace

    async def _new_log(self) -> EventLog:
        return JetStreamLog(self._url, namespace=self._namespace, request_timeout=5)
