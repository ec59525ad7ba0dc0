"""The state store's interface: buckets of keyed values with revisions, like JetStream KV.

How this works: a :class:`StateStore` holds named *buckets*; a :class:`Bucket`
maps keys to values (bytes). Every write to a bucket (``put``, ``update``,
``delete``) gets the bucket's next *revision*: 1-based, strictly increasing
within the bucket and never reused, so a revision both orders the changes and
names one version of a key. ``update`` is a compare-and-set on the key's
revision (``0``: the key must not exist) and raises :class:`RevisionMismatch`
when someone else wrote first; the admin API answers 409 with it. A delete
leaves a tombstone, a revision without a value, so that watchers see it.

``watch(prefix)`` yields every change with a higher revision than the watcher
has seen, in revision order: the changes made through this store object at
once, those made by another process (on the same file, or another node of a
cluster) within the backend's poll interval. A key that changed twice before
the watcher looked is seen once, at its latest value, as a JetStream KV
bucket with a history of one keeps it. ``watch(prefix, after=0)`` starts with
everything the bucket holds; ``after=bucket.revision()`` taken before reading
the keys makes "read, then follow" lose nothing.

The shapes follow JetStream KV (nats-py's ``KeyValue``: ``get``/``put``/
``create``/``update(last=)``/``delete``/``keys``/``watch``), and so do the
rules for names and sizes, so that a KV bucket on NATS can stand behind the
same Protocol: keys are letters, digits and ``-/_=.`` (not starting or ending
with ``.``), bucket names letters, digits, ``-`` and ``_``, values at most
:data:`MAX_VALUE_SIZE` bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, Protocol

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_VALUE_SIZE",
    "Bucket",
    "Entry",
    "InvalidKey",
    "NotAStateStore",
    "Operation",
    "RevisionMismatch",
    "StateClosed",
    "StateCorrupted",
    "StateError",
    "StateStore",
    "StateUnavailable",
    "ValueTooLarge",
    "check_bucket",
    "check_key",
    "check_prefix",
    "check_value",
]

MAX_VALUE_SIZE: Final = 1024 * 1024
"""1 MiB, the largest value: NATS's default maximum payload, so that whatever a
memory or SQLite store accepts, a JetStream KV bucket accepts too. A resource
manifest is a few kilobytes."""

MAX_KEY_LENGTH: Final = 255
"""Characters in a key at most (a NATS subject stays well under its limits)."""

_KEY: Final = re.compile(r"[-/_=.a-zA-Z0-9]+\Z")
_BUCKET: Final = re.compile(r"[-_a-zA-Z0-9]{1,64}\Z")

Operation = Literal["put", "delete"]


# -- errors ------------------------------------------------------------------


class StateError(Exception):
    """Base of every error the state store raises."""


class RevisionMismatch(StateError):
    """``update`` (or a conditional ``delete``) found another revision than expected.

    ``actual`` is the key's current revision (0: it does not exist). Nothing
    was written; read the key again and retry on the new revision.
    """

    def __init__(self, bucket: str, key: str, expected: int, actual: int) -> None:
        self.bucket = bucket
        self.key = key
        self.expected = expected
        self.actual = actual
        if expected == 0:
            text = f"{key!r} exists already (revision {actual})"
        elif actual == 0:
            text = f"{key!r} does not exist (expected revision {expected})"
        else:
            text = f"{key!r} is at revision {actual}, not {expected}: it was changed meanwhile"
        super().__init__(text)


class StateUnavailable(StateError):
    """The store cannot be opened, read or written (the file, the disk, the server).

    Nothing from the failed call was written.
    """


class StateClosed(StateError):
    """The store was closed by this process."""


class NotAStateStore(StateError):
    """The file exists but is not a Headwater state store (or one from a newer Headwater)."""


class StateCorrupted(StateError):
    """The store's storage is damaged; restore it from a backup or start a new one."""


class InvalidKey(StateError, ValueError):
    """A key, prefix or bucket name outside the characters JetStream KV allows."""


class ValueTooLarge(StateError, ValueError):
    """A value over :data:`MAX_VALUE_SIZE` bytes; nothing was written."""


def check_key(key: str) -> str:
    if type(key) is not str or len(key) > MAX_KEY_LENGTH or not _KEY.match(key):
        raise InvalidKey(
            f"key {key!r} must be 1..{MAX_KEY_LENGTH} letters, digits or '-/_=.' characters"
        )
    if key.startswith(".") or key.endswith("."):
        raise InvalidKey(f"key {key!r} must not start or end with '.'")
    return key


def check_prefix(prefix: str) -> str:
    if type(prefix) is not str or (prefix and not _KEY.match(prefix)):
        raise InvalidKey(f"prefix {prefix!r} must be letters, digits or '-/_=.' characters")
    return prefix


def check_bucket(name: str) -> str:
    if type(name) is not str or not _BUCKET.match(name):
        raise InvalidKey(f"bucket name {name!r} must be 1..64 letters, digits, '-' or '_'")
    return name


def check_value(value: bytes) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"a value is bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) > MAX_VALUE_SIZE:
        raise ValueTooLarge(f"a value is {len(value)} bytes, over the limit of {MAX_VALUE_SIZE}")
    return value


def check_revision(revision: int) -> int:
    if type(revision) is not int or revision < 0:
        raise ValueError(f"a revision is an integer >= 0, not {revision!r}")
    return revision


# -- values --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One version of a key: its value, revision and when it was written.

    A watcher also sees deletes: ``operation == "delete"`` and an empty value.
    """

    bucket: str
    key: str
    value: bytes
    revision: int
    updated: datetime
    """When it was written (UTC)."""
    operation: Operation = "put"

    @property
    def deleted(self) -> bool:
        return self.operation == "delete"


# -- the interface ----------------------------------------------------------------


class Bucket(Protocol):
    """Keys to values, with revisions (see the module docstring)."""

    @property
    def name(self) -> str: ...

    async def get(self, key: str) -> Entry | None:
        """The key's latest value, or None when it does not exist (or was deleted)."""
        ...

    async def put(self, key: str, value: bytes) -> int:
        """Write unconditionally; durable on return. Returns the new revision."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Write only if the key does not exist (``update(key, value, 0)``)."""
        ...

    async def update(self, key: str, value: bytes, expected_revision: int) -> int:
        """Write only if the key is at ``expected_revision`` (0: absent), else raise
        :class:`RevisionMismatch`. Returns the new revision."""
        ...

    async def delete(self, key: str, expected_revision: int | None = None) -> int | None:
        """Delete the key (a tombstone revision), or None when there was nothing to delete.

        With ``expected_revision``, only if the key is at it (else
        :class:`RevisionMismatch`)."""
        ...

    async def write_many(self, changes: Mapping[str, bytes | None]) -> None:
        """Unconditional puts (and deletes, for None) of several keys in one durable
        write: all or none; each change takes its own revision, in the mapping's
        order (a delete of a missing key writes nothing). For what is written
        behind in bulk (presence after a reconnect storm), not for compare-and-set.
        """
        ...

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys that exist, starting with ``prefix``, sorted."""
        ...

    async def revision(self) -> int:
        """The bucket's latest revision (0 when nothing was ever written)."""
        ...

    def watch(self, prefix: str = "", *, after: int | None = None) -> AsyncIterator[Entry]:
        """Changes of keys starting with ``prefix``, in revision order, until closed.

        ``after`` None: only changes from now on; else every change with a higher
        revision than ``after`` first. Close it with ``contextlib.aclosing``.
        """
        ...


class StateStore(Protocol):
    """Named buckets: memory, SQLite in the data directory, or (later) JetStream KV."""

    async def bucket(self, name: str) -> Bucket:
        """The bucket of that name, created empty if it did not exist."""
        ...

    async def close(self) -> None:
        """Release the store; later calls raise :class:`StateClosed`. Idempotent."""
        ...
