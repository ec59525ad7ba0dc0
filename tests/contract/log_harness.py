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


class SqliteHarness:
    name = "sqlite"

    def __init__(self, directory: Path, durability: Durability = "normal") -> None:
        self._path = directory / "log.db"
        self._durability = durability
        self._logs: list[SqliteLog] = []

    async def open(self) -> EventLog:
        log = await SqliteLog.open(self._path, durability=self._durability, poll_interval=0.05)
        self._logs.append(log)
        return log

    async def reopen(self, log: EventLog) -> EventLog:
        await log.close()
        return await self.open()

    async def aclose(self) -> None:
        for log in self._logs:
            await log.close()


class JetStreamHarness:
    name = "jetstream"

    def __init__(self, url: str, namespace: str) -> None:
        self._url = url
        self._namespace = namespace
        self._logs: list[JetStreamLog] = []

    async def open(self) -> EventLog:
        log = JetStreamLog(self._url, namespace=self._namespace, request_timeout=5)
        self._logs.append(log)
        return log

    async def reopen(self, log: EventLog) -> EventLog:
        await log.close()
        return await self.open()

    async def aclose(self) -> None:
        for log in self._logs:
            await log.close()
