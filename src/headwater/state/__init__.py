"""Headwater's state store: what a node keeps besides events (applied resources, ...).

Small buckets of keyed values with revisions, shaped like NATS JetStream KV
(see :mod:`headwater.state.base`). Three backends pass one contract suite
(``tests/contract/test_state_contract.py``): :class:`MemoryStore` (tests, and
a node that keeps nothing), :class:`SqliteStore` (``state.db`` in the data
directory) and :class:`JetStreamStore` (JetStream KV buckets that every node
of a mesh shares). This package imports nothing above it.
"""

from headwater.state.base import (
    MAX_KEY_LENGTH,
    MAX_VALUE_SIZE,
    Bucket,
    Entry,
    InvalidKey,
    NotAStateStore,
    Operation,
    RevisionMismatch,
    StateClosed,
    StateCorrupted,
    StateError,
    StateStore,
    StateUnavailable,
    ValueTooLarge,
)
from headwater.state.jetstream import JetStreamStore
from headwater.state.memory import MemoryStore
from headwater.state.sqlite import SqliteStore

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_VALUE_SIZE",
    "Bucket",
    "Entry",
    "InvalidKey",
    "JetStreamStore",
    "MemoryStore",
    "NotAStateStore",
    "Operation",
    "RevisionMismatch",
    "SqliteStore",
    "StateClosed",
    "StateCorrupted",
    "StateError",
    "StateStore",
    "StateUnavailable",
    "ValueTooLarge",
]
