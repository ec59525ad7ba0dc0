"""Where the broker keeps sessions and retained messages between runs, behind a small interface.

How this works: the broker loads everything once at start (:meth:`SessionStore.load`)
and then hands the store what changed since the last time
(:class:`StoreChanges`: sessions written or deleted, retained messages written
or deleted), on an autosave interval and at shutdown, like Mosquitto's
``autosave_interval``. A crash loses at most the changes since the previous
save. :class:`SqliteSessionStore` keeps them in one SQLite file in the data
directory (WAL mode, one transaction per save, written from a worker thread);
a store shared by several broker processes (a key-value bucket of a cluster)
can take its place, since the broker needs nothing else from it.

Each session is one row holding a JSON document (:meth:`Session.to_json`),
each retained message one row keyed by its topic.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from headwater.mqtt.session import (
    DEFAULT_MAX_QUEUED_MESSAGES,
    Message,
    OverflowPolicy,
    Session,
)

__all__ = [
    "SessionStore",
    "SharedSessionStore",
    "SqliteSessionStore",
    "StoreChanges",
    "StoredState",
    "dump",
]


def dump(doc: object) -> bytes:
    """Serialise a session or message document for a :class:`StoreChanges`."""
    return orjson.dumps(doc)


@dataclass(slots=True)
class StoreChanges:
    """What changed since the last save (documents pre-serialised by :func:`dump`)."""

    sessions: list[tuple[str, bytes]] = field(default_factory=list)
    deleted_sessions: list[str] = field(default_factory=list)
    retained: list[tuple[str, bytes]] = field(default_factory=list)
    deleted_retained: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.sessions or self.deleted_sessions or self.retained or self.deleted_retained
        )


@dataclass(slots=True)
class StoredState:
    sessions: list[Session]
    retained: list[Message]


class SessionStore(Protocol):
    """Sessions and retained messages that outlive the process."""

    async def load(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED_MESSAGES,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> StoredState:
        """Everything stored, once, at start."""

    async def save(self, changes: StoreChanges) -> None:
        """Apply one batch of changes atomically."""

    async def close(self) -> None: ...


@runtime_checkable
class SharedSessionStore(SessionStore, Protocol):
    """A store shared by several broker processes (headwater.cluster.mqtt.sessions): it
    loads no sessions at start, and hands them over one at a time instead."""

    async def claim(
        self, client_id: str, clean_start: bool, owner: str, will: dict[str, Any] | None
    ) -> Session | None:
        """At CONNECT, before the session is attached: the session to resume (from
        wherever it was), or None; ``will`` is kept in case this process dies."""

    def new_session(self, client_id: str) -> Session:
        """The Session object for a new session."""

    def hand_off(
        self, session: Session, will: dict[str, Any] | None, will_at: float | None
    ) -> bool:
        """A persistent session's connection ended: True if the store keeps it (and its
        delayed will) from now on, not this process."""

    def dropped(self, session: Session) -> None:
        """A session ended (clean start, expiry 0, a new owner)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (client_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, doc BLOB NOT NULL);
"""


class SqliteSessionStore:
    """Sessions and retained messages in ``<data_dir>/mqtt.sqlite3``."""

    FILENAME = "mqtt.sqlite3"

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        # check_same_thread=False: saves run in a worker thread, one at a time
        # (the broker serialises them).
        self._db = sqlite3.connect(path / self.FILENAME, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    async def load(
        self,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED_MESSAGES,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> StoredState:
        return StoredState(self.load_sessions(max_queued, overflow), self.load_retained())

    def load_sessions(
        self,
        max_queued: int = DEFAULT_MAX_QUEUED_MESSAGES,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
    ) -> list[Session]:
        rows = self._db.execute("SELECT client_id, doc FROM sessions").fetchall()
        return [
            Session.from_json(cid, orjson.loads(doc), max_queued=max_queued, overflow=overflow)
            for cid, doc in rows
        ]

    def load_retained(self) -> list[Message]:
        rows = self._db.execute("SELECT doc FROM retained").fetchall()
        return [Message.from_json(orjson.loads(doc)) for (doc,) in rows]

    async def save(self, changes: StoreChanges) -> None:
        if changes:
            await asyncio.to_thread(self.save_now, changes)

    def save_now(self, changes: StoreChanges) -> None:
        """:meth:`save` on this thread (at shutdown, or from a test)."""
        with self._db:
            db = self._db
            db.executemany(
                "INSERT OR REPLACE INTO sessions (client_id, doc) VALUES (?, ?)", changes.sessions
            )
            db.executemany(
                "DELETE FROM sessions WHERE client_id = ?",
                ((cid,) for cid in changes.deleted_sessions),
            )
            db.executemany(
                "INSERT OR REPLACE INTO retained (topic, doc) VALUES (?, ?)", changes.retained
            )
            db.executemany(
                "DELETE FROM retained WHERE topic = ?", ((t,) for t in changes.deleted_retained)
            )

    async def close(self) -> None:
        self._db.close()
