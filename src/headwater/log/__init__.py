"""Headwater's event log: durable, replayable streams of CloudEvents.

Three backends implement one interface (:class:`EventLog`, :class:`Reader`)
and pass one contract suite: :class:`MemoryLog` (tests, ephemeral channels),
:class:`SqliteLog` (the embedded default) and :class:`JetStreamLog` (NATS
JetStream, for scale-out). Offsets, positions and the off-by-one rule are
described in :mod:`headwater.log.base`.
"""

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
from headwater.log.jetstream import JetStreamLog
from headwater.log.memory import MemoryLog
from headwater.log.sqlite import SqliteLog

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_EVENT_SIZE",
    "EARLIEST",
    "LATEST",
    "ConsumerInfo",
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
]
