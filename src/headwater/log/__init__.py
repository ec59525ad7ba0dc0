"""Headwater's event log: durable, replayable streams of CloudEvents.

Three backends implement one interface (:class:`EventLog`, :class:`Reader`)
and pass one contract suite: :class:`MemoryLog` (tests, ephemeral channels),
:class:`SqliteLog` (the embedded default) and :class:`JetStreamLog` (NATS
JetStream, for scale-out). Offsets, positions and the off-by-one rule are
described in :mod:`headwater.log.base`.

:class:`JetStreamLog` is imported on first use (``headwater.log.JetStreamLog``
or ``from headwater.log import JetStreamLog``): a node on SQLite never loads
the NATS client.
"""

from typing import TYPE_CHECKING, Any

from headwater.log._codec import EncodedEvents, attributes_head, bytes_record
from headwater.log._codec import encode as encode_record
from headwater.log.base import (
    DEFAULT_BATCH,
    DEFAULT_MAX_EVENT_SIZE,
    EARLIEST,
    LATEST,
    ConsumerInfo,
    Entry,
    EventLog,
    EventTooLarge,
    InvalidAck,
    LogClosed,
    LogCorrupted,
    LogError,
    LogFull,
    LogUnavailable,
    NotAHeadwaterLog,
    Reader,
    Start,
    StartKind,
    StreamConfig,
    StreamInfo,
    StreamNotFound,
)
from headwater.log.memory import MemoryLog
from headwater.log.sqlite import SqliteLog

if TYPE_CHECKING:
    from headwater.log.jetstream import JetStreamLog

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_EVENT_SIZE",
    "EARLIEST",
    "LATEST",
    "ConsumerInfo",
    "EncodedEvents",
    "Entry",
    "EventLog",
    "EventTooLarge",
    "InvalidAck",
    "JetStreamLog",
    "LogClosed",
    "LogCorrupted",
    "LogError",
    "LogFull",
    "LogUnavailable",
    "MemoryLog",
    "NotAHeadwaterLog",
    "Reader",
    "SqliteLog",
    "Start",
    "StartKind",
    "StreamConfig",
    "StreamInfo",
    "StreamNotFound",
    "attributes_head",
    "bytes_record",
    "encode_record",
]


def __getattr__(name: str) -> Any:
    # PEP 562: the NATS backend (and the nats client under it) loads when named.
    if name == "JetStreamLog":
        from headwater.log.jetstream import JetStreamLog

        return JetStreamLog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
