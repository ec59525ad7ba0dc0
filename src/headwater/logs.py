"""Log lines that cannot flood: repeats of one kind of line are summarised.

How this works: a :class:`Throttle` wraps a :class:`logging.Logger`. Each
call names a *key* (what repeats: ``("peer-abort", listener)``, a Trigger's
name, ...). The first line of a key is written at once; further lines of the
same key within ``interval`` seconds are counted, not written, and the next
line after the interval says how many were left out
(``... (and 406 more like it in the last 60 s)``). Every call, written or
not, counts in :attr:`Throttle.counts`, which ``/metrics`` can expose, so
nothing is hidden: it is summarised.

A peer's misbehaviour (an aborted upload, a malformed request, a slow client)
is a WARNING through a throttle, never a traceback: tracebacks are for
Headwater's own bugs. :meth:`Throttle.filter` does the same for a library's
logger (OpenTelemetry's exporter, which logs every failed export).

Structured logs (``headwater up --log-format json``): :func:`configure`
installs :class:`JsonFormatter`, one JSON object per line with stable field
names (:data:`FIELDS`): ``time``, ``level``, ``logger``, ``message``, and
where they apply ``event_id``, ``event_source``, ``event_type``,
``trace_id``, ``span_id`` (a line about an event carries them: call sites
pass ``extra=`` with them), ``subscriber``, ``suppressed`` (the count a
throttled line summarises) and ``exception`` (a traceback).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

import orjson

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_KEYS",
    "FIELDS",
    "JsonFormatter",
    "LogFormat",
    "Throttle",
    "configure",
]

LogFormat = Literal["text", "json"]

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

FIELDS: Final = (
    "event_id",
    "event_source",
    "event_type",
    "trace_id",
    "span_id",
    "subscriber",
    "suppressed",
)
"""The optional fields of a JSON log line, in the order written, each the name of
a ``LogRecord`` attribute that ``extra=`` set. They are part of Headwater's
interface (log pipelines select on them): add, never rename."""

DEFAULT_INTERVAL: Final = 60.0
"""Seconds between two lines of one key: one line a minute per kind of trouble
is enough to see it in a console, and little enough never to flood one."""

DEFAULT_MAX_KEYS: Final = 4096
"""Keys remembered at most. Keys come from configuration (Trigger names) or a
fixed set of kinds, but a key built from a peer's address must not grow memory
without bound: past this, the oldest key is forgotten (its next line is
written at once, which is the safe side)."""


@dataclass(slots=True)
class _Window:
    last_written: float
    suppressed: int = 0


class Throttle:
    """At most one log line per key per ``interval``, with a count of the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: dict[Hashable, _Window] = {}
        #: Calls per key, written or not (for metrics and tests).
        self.counts: dict[Hashable, int] = {}

    def log(
        self,
        level: int,
        key: Hashable,
        msg: str,
        *args: object,
        extra: Mapping[str, object] | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval.

        ``extra`` goes to the record (structured fields: ``event_id``,
        ``trace_id``, ...); ``exc_info`` adds the exception being handled.
        Returns whether a line was written.
        """
        self._count(key)
        if not self.logger.isEnabledFor(level):
            return False
        admitted = self._admit(key)
        if admitted is None:
            return False
        suppressed, since = admitted
        if suppressed:
            msg = f"{msg} (and {suppressed} more like it in the last %.0f s)"
            args = (*args, since)
            extra = {**(extra or {}), "suppressed": suppressed}
        self.logger.log(level, msg, *args, extra=extra, exc_info=exc_info)
        return True

    def _count(self, key: Hashable) -> None:
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if len(counts) > self.max_keys:
            counts.pop(next(iter(counts)))

    def _admit(self, key: Hashable) -> tuple[int, float] | None:
        """None when ``key`` was written within the interval (now counted as left
        out); else the lines left out since the last one written, and its age."""
        now = self._clock()
        windows = self._windows
        window = windows.get(key)
        if window is None:
            if len(windows) >= self.max_keys:
                windows.pop(next(iter(windows)))
            windows[key] = _Window(now)
            return 0, 0.0
        if now - window.last_written < self.interval:
            window.suppressed += 1
            return None
        admitted = window.suppressed, now - window.last_written
        window.last_written = now
        window.suppressed = 0
        return admitted

    def warning(
        self, key: Hashable, msg: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> bool:
        return self.log(logging.WARNING, key, msg, *args, extra=extra)

    def error(
        self, key: Hashable, msg: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> bool:
        return self.log(logging.ERROR, key, msg, *args, extra=extra)

    def info(
        self, key: Hashable, msg: str, *args: object, extra: Mapping[str, object] | None = None
    ) -> bool:
        return self.log(logging.INFO, key, msg, *args, extra=extra)

    def filter(self) -> logging.Filter:
        """A filter for another library's logger: its lines are throttled by their
        message template (one per template per interval; the next says how many
        were left out)."""
        return _ThrottleFilter(self)

    def total(self, key: Hashable) -> int:
        """Calls made with ``key`` so far (written and summarised)."""
        return self.counts.get(key, 0)


class _ThrottleFilter(logging.Filter):
    def __init__(self, throttle: Throttle) -> None:
        super().__init__()
        self.throttle = throttle

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        self.throttle._count(key)
        admitted = self.throttle._admit(key)
        if admitted is None:
            return False
        suppressed, since = admitted
        if suppressed:
            record.msg = f"{record.msg} (and {suppressed} more like it in the last %.0f s)"
            args = record.args if isinstance(record.args, tuple) else ()
            record.args = (*args, since)
            record.suppressed = suppressed
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, then the
    :data:`FIELDS` a record has, then ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = record.__dict__
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str = "info", format: LogFormat = "text") -> None:
    """Set up the root logger for ``headwater up``: ``text`` lines or ``json`` lines
    on stderr, at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
