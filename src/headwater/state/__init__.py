"""Headwater's state store: what a node keeps besides events (applied resources, ...).

Small buckets of keyed values with revisions, shaped like NATS JetStream KV
(see :mod:`headwater.state.base`). Three backends pass one contract suite
(``tests/contract/test_state_contract.py``): :class:`MemoryStore` (tests, and
a node that keeps nothing), :class:`SqliteStore` (``state.db`` in the data
directory) and :class:`JetStreamStore` (JetStream KV buckets that every node
of a mesh shares, loaded when named, like the log's JetStream backend). This
package imports nothing above it.
"""

from typing import TYPE_CHECKING, Any

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
from headwater.state.memory import MemoryStore
from headwater.state.sqlite import SqliteStore

if TYPE_CHECKING:
    from headwater.state.jetstream import JetStreamStore

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


def __getattr__(name: str) -> Any:
    # PEP 562: the JetStream KV backend (and the nats client under it) loads when named.
    if name == "JetStreamStore":
        from headwater.state.jetstream import JetStreamStore

        return JetStreamStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
