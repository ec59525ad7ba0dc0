"""Delivery: timeout, retry with backoff, dead letter; one pipeline for every sink.

How this works: the policy is pure data and pure functions: a frozen
:class:`DeliverySpec` (Knative's DeliverySpec, with durations already in
seconds), :func:`should_retry` (the data-plane table of retryable status
codes), :func:`backoff` (linear or exponential, stretched by a capped
``Retry-After``) and :func:`dead_letter_event` (the ``knativeerror*``
extensions). :class:`Deliverer` is the only part that waits: for one event it
attempts the sink, retries while the policy allows, then gives the event up:
the spec's recorder keeps it (Headwater's dead-letter store) and the dead
letter sink, if there is one, gets it too. An event kept by either is
*dead-lettered*; only one that nothing kept is *dropped* (a spec without a
recorder and without a working dead letter sink). A reply is handed to
``on_reply`` inside the attempt, so that failing to store or forward it fails
the attempt and the whole delivery is retried (control-plane.md "Event
Delivery").

Every failed attempt is visible as it happens: ``stats.last_error`` with its
time and attempt number, not only once the event is given up on. What is
logged about given-up events goes through a :class:`~headwater.logs.Throttle`
keyed by the deliverer's name (a Trigger): a failing subscriber writes one
line a minute with a count, not one per event.

An event whose ``expiresat`` has passed (:mod:`headwater.eventing.expiry`) is
not attempted, nor retried: it ends as ``expired``, counted, like a drop that
was asked for.

Cancellation never loses an event: a cancelled delivery reports no outcome,
so the dispatcher's cursor does not move past it and it is redelivered.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import email.utils
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from headwater import tracing
from headwater.cloudevents import CloudEvent
from headwater.durations import parse_duration
from headwater.eventing.expiry import expired
from headwater.eventing.sink import DeliveryError, Sink
from headwater.logs import Throttle
from headwater.tracing.flows import DeliveryTrace, log_fields, trace_id, with_context
from headwater.tracing.spans import Span, Tracer

__all__ = [
    "DEFAULT_RETRY_AFTER_MAX",
    "BackoffPolicy",
    "DeadLetterRecorder",
    "Deliverer",
    "DeliverySpec",
    "DeliveryStats",
    "LatencyHistogram",
    "Outcome",
    "backoff",
    "dead_letter_event",
    "effective_delivery",
    "parse_retry_after",
    "should_retry",
]

log = logging.getLogger(__name__)
_throttled = Throttle(log)

_given_up = Throttle(log)
"""Lines about given-up events: one per deliverer and kind of outcome per minute."""

_raised = Throttle(log)
"""Tracebacks of in-process sinks that raised: one per sink per minute."""

BackoffPolicy = Literal["linear", "exponential"]

# Knative's defaults when a DeliverySpec leaves a field unset.
DEFAULT_BACKOFF_DELAY: Final = 0.2  # seconds; Knative examples and kncloudevents use PT0.2S
# An attempt that hangs must not hold the cursor forever; Knative leaves this
# to the HTTP client, whose default is no limit. A minute is generous for a
# webhook and short enough that a wedged subscriber shows up in the counters.
DEFAULT_TIMEOUT: Final = 60.0
# A destination's Retry-After is honoured up to this many seconds, so that a
# misconfigured "Retry-After: 86400" cannot park a Trigger for a day.
DEFAULT_RETRY_AFTER_MAX: Final = 60.0
# The longest single wait between attempts: exponential backoff doubles, and
# 2**30 * 0.2 s would overflow any sensible schedule.
MAX_BACKOFF: Final = 3600.0
# knativeerrordata holds at most this many bytes of the response body.
ERROR_DATA_LIMIT: Final = 1024

# -- the policy ---------------------------------------------------------------------


class DeadLetterRecorder(Protocol):
    """Keeps a record of every event a :class:`Deliverer` gives up on.

    Called once per given-up event with the last error, before the event goes
    to the dead letter sink or is dropped, whether or not the spec has a dead
    letter sink. The delivery ends only after the record returned; if it
    raises, the delivery raises too, reports no outcome, and the event stays
    unacknowledged (delivered again later), so nothing is lost between the
    two.
    """

    async def __call__(
        self, deliverer: Deliverer, event: CloudEvent, error: DeliveryError
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class DeliverySpec:
    """Knative DeliverySpec, resolved: durations in seconds, the dead letter sink a Sink.

    ``retry`` is the number of retries after the first attempt (control-plane.md
    DeliverySpec: "the minimum number of retries the sender should attempt").
    ``timeout`` bounds each attempt (0 disables it). ``dead_letter_uri`` is
    only for display (``describe``). ``recorder``, when set, is told about
    every event given up on (see :class:`DeadLetterRecorder`).
    """

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay: float = DEFAULT_BACKOFF_DELAY
    timeout: float = DEFAULT_TIMEOUT
    retry_after_max: float = DEFAULT_RETRY_AFTER_MAX
    dead_letter_sink: Sink | None = field(default=None, compare=False)
    dead_letter_uri: str | None = None
    recorder: DeadLetterRecorder | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retry < 0:
            raise ValueError(f"retry must be >= 0, not {self.retry}")
        if self.backoff_policy not in ("linear", "exponential"):
            raise ValueError(
                f"backoffPolicy must be linear or exponential, not {self.backoff_policy!r}"
            )
        for name in ("backoff_delay", "timeout", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @classmethod
    def from_knative(
        cls,
        spec: Mapping[str, Any],
        resolve_sink: Callable[[Mapping[str, Any]], tuple[Sink, str]] | None = None,
    ) -> DeliverySpec:
        """Build from Knative's camelCase mapping (``retry``, ``backoffDelay: PT0.5S``, ...).

        ``resolve_sink`` turns a ``deadLetterSink`` destination into a sink and
        its URI for display; without it a ``deadLetterSink`` is an error.
        """
        kwargs: dict[str, Any] = {}
        if spec.get("retry") is not None:
            kwargs["retry"] = int(spec["retry"])
        if spec.get("backoffPolicy") is not None:
            kwargs["backoff_policy"] = spec["backoffPolicy"]
        for key, name in (
            ("backoffDelay", "backoff_delay"),
            ("timeout", "timeout"),
            ("retryAfterMax", "retry_after_max"),
        ):
            if spec.get(key) is not None:
                kwargs[name] = parse_duration(spec[key])
        destination = spec.get("deadLetterSink")
        if destination is not None:
            if resolve_sink is None:
                raise ValueError("deadLetterSink given but no way to resolve destinations")
            kwargs["dead_letter_sink"], kwargs["dead_letter_uri"] = resolve_sink(destination)
        return cls(**kwargs)


def effective_delivery(own: DeliverySpec | None, default: DeliverySpec | None) -> DeliverySpec:
    """A Trigger's (Subscription's) spec, or else its Broker's (Channel's), as a whole.

    control-plane.md Broker ``delivery``: "If a Trigger specifies **any**
    delivery options, this field MUST be ignored."
    """
    if own is not None:
        return own
    return default if default is not None else DeliverySpec()


def should_retry(status: int | None) -> bool:
    """Whether a failed attempt with this HTTP status (None: no response) is retried.

    data-plane.md "Event Acknowledgement and Delivery Retry": retry on
    ``404``, ``408``, ``409``, ``429`` and ``5xx``; not on other ``4xx``, nor
    on the reserved ``1xx`` / ``3xx``. A transport error (no response) is
    retried: the event may never have arrived.
    """
    if status is None:
        return True
    if status >= 500:
        return True
    return status in (404, 408, 409, 429)


def backoff(spec: DeliverySpec, attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    Knative's event delivery docs: linear waits ``backoffDelay * attempt``,
    exponential ``backoffDelay * 2**attempt``. A destination's ``Retry-After``
    stretches the wait (never shortens it), capped at ``retry_after_max``.
    """
    if attempt < 1:
        raise ValueError("attempt counts retries from 1")
    delay = spec.backoff_delay
    if spec.backoff_policy == "exponential":
        wait = delay * 2.0 ** min(attempt, 30)
    else:
        wait = delay * attempt
    if retry_after is not None and retry_after > 0:
        wait = max(wait, min(retry_after, spec.retry_after_max))
    return min(wait, MAX_BACKOFF)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` (delta-seconds or HTTP-date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def dead_letter_event(event: CloudEvent, destination: str, error: DeliveryError) -> CloudEvent:
    """The original event with Knative's ``knativeerror*`` extensions; ``data`` untouched.

    ``knativeerrordest`` is the destination that failed, ``knativeerrorcode``
    the last HTTP status (absent when there was no response) and
    ``knativeerrordata`` the response body, base64, at most 1024 bytes.
    """
    # None removes what an earlier dead-lettering may have left on the event.
    body = error.body[:ERROR_DATA_LIMIT]
    return event.evolve(
        {
            "knativeerrordest": destination,
            "knativeerrorcode": str(error.status) if error.status is not None else None,
            "knativeerrordata": base64.b64encode(body).decode() if body else None,
        }
    )


# -- counters -----------------------------------------------------------------------

# Latency bucket upper bounds in seconds (Prometheus' defaults, extended down
# to 1 ms: a loopback delivery takes well under 5 ms).
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class LatencyHistogram:
    """Cumulative-free bucket counts of delivery latency, as a Prometheus histogram reads them."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {
            "buckets": dict(zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True)),
            "count": self.count,
            "sum": self.sum,
        }


@dataclass(slots=True, eq=False)
class DeliveryStats:
    """Per Trigger / Subscription counters, read by the runtime for ``describe`` and metrics.

    ``delivered``: events the subscriber accepted. ``failed_attempts``: attempts
    that failed (each retry that failed counts). ``retried``: retries made.
    ``dead_lettered``: events given up on and kept, as a dead letter in
    Headwater's store (what ``headwater deadletters list`` and the dashboard
    show) and/or by the dead letter sink; ``sent_to_dead_letter_sink``: those
    the dead letter sink accepted. ``dropped``: events given up on that
    nothing kept. ``filtered``: events the filter rejected. ``replies``:
    reply events forwarded. ``expired``: events not delivered because their
    ``expiresat`` had passed. ``lag``: events in the log not yet acknowledged
    by this cursor. ``last_error`` is the latest failed attempt's error, with
    its time (``last_error_time``, seconds since the epoch) and its number
    among the attempts of its event (``last_error_attempt``, 1 for the first).
    The counters are since the process started.
    """

    delivered: int = 0
    failed_attempts: int = 0
    retried: int = 0
    dead_lettered: int = 0
    sent_to_dead_letter_sink: int = 0
    dropped: int = 0
    filtered: int = 0
    replies: int = 0
    expired: int = 0
    lag: int = 0
    in_flight: int = 0
    last_error: str | None = None
    last_error_time: float | None = None
    last_error_attempt: int | None = None
    last_error_trace_id: str | None = None
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def failed(self, error: str, attempt: int | None = None, trace_id: str | None = None) -> None:
        """Record a failure as it happens: the error, now, which attempt it was and
        the trace of the event (when it has one)."""
        self.last_error = error
        self.last_error_time = time.time()
        self.last_error_attempt = attempt
        self.last_error_trace_id = trace_id

    def snapshot(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "failedAttempts": self.failed_attempts,
            "retried": self.retried,
            "deadLettered": self.dead_lettered,
            "sentToDeadLetterSink": self.sent_to_dead_letter_sink,
            "dropped": self.dropped,
            "filtered": self.filtered,
            "replies": self.replies,
            "expired": self.expired,
            "lag": self.lag,
            "inFlight": self.in_flight,
            "lastError": self.last_error,
            "lastErrorTime": (
                datetime.fromtimestamp(self.last_error_time, UTC).isoformat(timespec="seconds")
                if self.last_error_time is not None
                else None
            ),
            "lastErrorAttempt": self.last_error_attempt,
            "lastErrorTraceId": self.last_error_trace_id,
            "latencySeconds": self.latency.snapshot(),
        }


# -- the loop -----------------------------------------------------------------------


class Outcome(enum.Enum):
    """How a delivery ended; each lets the cursor move past the event.

    ``DEAD_LETTERED``: given up on and kept (the dead-letter store, the dead
    letter sink, or both); ``DROPPED``: given up on and kept nowhere.
    """

    DELIVERED = "delivered"
    DEAD_LETTERED = "dead-lettered"
    DROPPED = "dropped"
    EXPIRED = "expired"


ReplyHandler = Callable[[CloudEvent, CloudEvent], Awaitable[None]]
"""``on_reply(original, reply)``: store or forward a reply; raising fails the attempt."""


class Deliverer:
    """Delivers one event at a time to one sink under a DeliverySpec.

    ``destination`` names the sink in logs and in ``knativeerrordest``;
    ``name`` what delivers (``Trigger default/too-hot``) in logs.
    ``sleep`` and ``clock`` are injectable so that tests need not wait.
    """

    def __init__(
        self,
        sink: Sink,
        spec: DeliverySpec,
        *,
        destination: str,
        name: str | None = None,
        stats: DeliveryStats | None = None,
        on_reply: ReplyHandler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sink = sink
        self.spec = spec
        self.destination = destination
        self.name = name or destination
        self.stats = stats if stats is not None else DeliveryStats()
        self._on_reply = on_reply
        self._sleep = sleep
        self._clock = clock

    async def deliver(
        self, event: CloudEvent, trace: DeliveryTrace | None = None, *, traced: bool = False
    ) -> Outcome:
        """Deliver ``event``; returns once it was delivered, dead-lettered or dropped.

        ``trace`` is the event's trace through this deliverer when tracing is on;
        ``traced``: the caller (a dispatcher) already made it, or found there was
        nothing to record unless an attempt fails (the trace is then started at
        the first failure, for a dead letter's spans). Made here otherwise.
        """
        stats = self.stats
        started = self._clock()
        tracer = tracing.tracer
        if trace is None and tracer is not None and not traced:
            trace = DeliveryTrace.start_for(tracer, event, self.name, self.destination)
        error, trace = await self._attempts(
            self.sink, event, self._on_reply, count=True, trace=trace, started=started
        )
        if error is _EXPIRED:
            stats.expired += 1
            _throttled.info(
                ("expired", self.destination),
                "not delivering event id=%s to %s: its expiresat has passed",
                event.id,
                self.destination,
                extra=log_fields(event, trace),
            )
            if trace is not None:
                trace.end(Outcome.EXPIRED.value)
            return Outcome.EXPIRED
        if error is None:
            stats.delivered += 1
            stats.latency.observe(self._clock() - started)
            if trace is not None:
                trace.end(Outcome.DELIVERED.value)
            return Outcome.DELIVERED
        dead_span = trace.dead_letter(event) if trace is not None else None
        try:
            return await self._give_up(event, error, trace, dead_span)
        finally:
            if dead_span is not None:
                dead_span.end()

    async def _give_up(
        self,
        event: CloudEvent,
        error: DeliveryError,
        trace: DeliveryTrace | None,
        dead_span: Span | None,
    ) -> Outcome:
        """Keep a given-up event (the recorder, the dead letter sink) or drop it."""
        stats = self.stats
        recorded = False
        if self.spec.recorder is not None:
            await self.spec.recorder(self, event, error)
            recorded = True
        attempts = _attempts_text(error, self.spec)
        dls = self.spec.dead_letter_sink
        dls_error: DeliveryError | None = None
        if dls is not None:
            dead = dead_letter_event(event, self.destination, error)
            if dead_span is not None:
                dead = with_context(dead, dead_span.context)
                dead_span.attributes["headwater.dead_letter_sink"] = self.spec.dead_letter_uri or ""
            # "If delivery of the dead-letter event fails with a retryable error, the
            # delivery to the deadLetterSink SHOULD be retried up to retry times".
            dls_error, _ = await self._attempts(dls, dead, None, count=False)
            if dls_error is None:
                stats.sent_to_dead_letter_sink += 1
            else:
                stats.failed(f"dead letter sink {self.spec.dead_letter_uri or ''}: {dls_error}")
                if dead_span is not None:
                    dead_span.fail(f"dead letter sink: {dls_error}")
        where = self._kept_in(recorded, dls is not None and dls_error is None)
        fields = log_fields(event, trace)
        if where is None:
            # No dead letter sink (or a failing one) and no store: "the event is
            # dropped" (control-plane.md), and never silently.
            stats.dropped += 1
            because = f"the dead letter sink failed too: {dls_error}" if dls else "nothing kept it"
            _given_up.error(
                (self.name, "dropped"),
                "%s: dropped event id=%s source=%s after %s to %s failed: %s (%s)",
                self.name,
                event.id,
                event.source,
                attempts,
                self.destination,
                error,
                because,
                extra=fields,
            )
            if trace is not None:
                trace.end(Outcome.DROPPED.value, str(error))
            return Outcome.DROPPED
        stats.dead_lettered += 1
        level = logging.ERROR if dls_error is not None else logging.WARNING
        _given_up.log(
            level,
            (self.name, "dead-lettered"),
            "%s: gave up on event id=%s source=%s after %s to %s failed: %s; %s",
            self.name,
            event.id,
            event.source,
            attempts,
            self.destination,
            error,
            where + (f" (the dead letter sink failed: {dls_error})" if dls_error else ""),
            extra=fields,
        )
        if trace is not None:
            trace.end(Outcome.DEAD_LETTERED.value, str(error))
        return Outcome.DEAD_LETTERED

    def _kept_in(self, recorded: bool, sent: bool) -> str | None:
        """Where a given-up event is kept, as log text (None: nowhere)."""
        if recorded and sent:
            return f"kept as a dead letter and sent to {self.spec.dead_letter_uri or 'the DLS'}"
        if recorded:
            return "kept as a dead letter (headwater deadletters list)"
        if sent:
            return f"sent to the dead letter sink {self.spec.dead_letter_uri or ''}".rstrip()
        return None

    async def _attempts(
        self,
        sink: Sink,
        event: CloudEvent,
        on_reply: ReplyHandler | None,
        *,
        count: bool,
        trace: DeliveryTrace | None = None,
        started: float | None = None,
    ) -> tuple[DeliveryError | None, DeliveryTrace | None]:
        """Attempt, retrying while allowed; None on success, else the last error.

        With ``count`` (the subscriber, not the dead letter sink), an expired
        event is not attempted: the answer is then ``_EXPIRED``. With tracing on
        and no ``trace``, a failed attempt (of the delivery that started at
        ``started`` on this deliverer's clock) starts one, so that the failures
        are known if the event ends as a dead letter.
        """
        spec = self.spec
        attempt = 0
        span: Span | None = None
        while True:
            if count and expired(event):
                return _EXPIRED, trace
            if trace is None:
                error = await self._attempt(sink, event, on_reply)
            else:
                sent, span = trace.attempt(event)
                error = await self._attempt(sink, sent, on_reply, trace, span, event)
                if error is None:
                    trace.attempt_ok(span)
            if error is None:
                return None, trace
            if trace is None and started is not None and tracing.tracer is not None:
                trace = self._late_trace(tracing.tracer, event, started, attempt + 1)
            if count:
                self.stats.failed_attempts += 1
                # Seen as it happens, not only once the event is given up on.
                self.stats.failed(
                    f"{self.destination}: {error}",
                    attempt + 1,
                    trace.context.trace_id
                    if trace is not None and trace.context is not None
                    else trace_id(event),
                )
            if not error.retryable or attempt >= spec.retry:
                if trace is not None:
                    trace.attempt_failed(span, error.status, str(error), None)
                return error, trace
            attempt += 1
            if count:
                self.stats.retried += 1
            delay = backoff(spec, attempt, error.retry_after)
            if trace is not None:
                trace.attempt_failed(span, error.status, str(error), delay)
            await self._sleep(delay)

    def _late_trace(
        self, tracer: Tracer, event: CloudEvent, started: float, attempts: int
    ) -> DeliveryTrace:
        """The trace of a delivery that had none until its attempt ``attempts`` failed."""
        elapsed = self._clock() - started
        trace = DeliveryTrace(
            tracer, event, self.name, self.destination, time.time_ns() - int(elapsed * 1e9)
        )
        trace.attempts = attempts
        return trace

    async def _attempt(
        self,
        sink: Sink,
        event: CloudEvent,
        on_reply: ReplyHandler | None,
        trace: DeliveryTrace | None = None,
        span: Span | None = None,
        original: CloudEvent | None = None,
    ) -> DeliveryError | None:
        """One attempt; ``event`` as it is sent (``original``: as it is stored)."""
        try:
            async with asyncio.timeout(self.spec.timeout or None):
                reply = await sink.deliver(event)
        except DeliveryError as exc:
            return exc
        except TimeoutError:
            return DeliveryError(None, True, reason=f"timed out after {self.spec.timeout:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug in an in-process sink: keep it visible, treat it like a transport
            # error (data-plane.md: an unknown outcome "SHOULD be treated as a
            # retriable error").
            _raised.log(
                logging.ERROR,
                self.destination,
                "sink %s raised while delivering id=%s",
                self.destination,
                event.id,
                extra=log_fields(event, trace),
                exc_info=True,
            )
            return DeliveryError(None, True, reason=f"{type(exc).__name__}: {exc}")
        if reply is not None and on_reply is not None:
            reply_span: Span | None = None
            if trace is not None:
                reply, reply_span = trace.reply(span, reply)
            try:
                await on_reply(original or event, reply)
            except DeliveryError as exc:
                return _failed(reply_span, exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # control-plane.md: "If the storage of the reply event in the
                # Broker fails, the entire event delivery MUST be failed and ...
                # retried."
                return _failed(
                    reply_span, DeliveryError(None, True, reason=f"reply not stored: {exc}")
                )
            finally:
                if reply_span is not None:
                    reply_span.end()
            self.stats.replies += 1
        return None


_EXPIRED: Final = DeliveryError(None, False, reason="expired")
"""What ``_attempts`` answers for an event whose ``expiresat`` passed (compared by identity)."""


def _failed(span: Span | None, error: DeliveryError) -> DeliveryError:
    if span is not None:
        span.fail(str(error))
    return error


def _attempts_text(error: DeliveryError, spec: DeliverySpec) -> str:
    if not error.retryable:
        return "a non-retryable failure"
    return f"{spec.retry + 1} attempt(s)"
