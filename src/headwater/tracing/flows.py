"""An event's trace: its context in and out, and the spans of its ingest and deliveries.

How this works: an event's trace context lives in the event itself, in the
CloudEvents distributed tracing extension (``traceparent``, ``tracestate``),
so it is in the durable log with the event and every reader of the log (a
Trigger after a restart, another node of a mesh) continues the same trace.

**Ingest** (:func:`ingest`): the context that came with the message (an MQTT 5
``traceparent`` User Property, the W3C "Trace Context: MQTT" convention; the
HTTP ``traceparent`` header; else the event's own extension) is the parent of
an ingest span, whose recording decision is the head sampling decision for
the event (:meth:`~headwater.tracing.spans.Tracer.decide`). An event that
brings a valid ``traceparent`` extension keeps it untouched: distributed-
tracing.md, "the Distributed Tracing Extension ... MUST carry the trace
information of the starting trace of the transmission". A sampled one
without gets the ingest span's context ("Middleware between the source and
the sink of the event could eventually add a Distributed Tracing Extension
if the source didn't include any"); one whose extension is invalid is
treated as one without (W3C: "the implementation should restart the
trace"). Either way the event is accepted: a malformed value is ignored,
never refused. A sampled event's ingest span has a child for its durable
append, which ends when the append does (PUBACK / 202 time).

**What is not sampled carries what it came with, and nothing of Headwater's.**
An incoming context the head does not sample is stored and sent on exactly
as it came (W3C Trace Context 3.4: "A vendor receiving a traceparent request
header MUST send it to outgoing requests. It MAY mutate the value"; keeping
it also keeps ``tracestate``: "If the value of the traceparent field wasn't
changed before propagation, tracestate MUST NOT be modified as well"). An
event that came with no context and is not sampled gets none: no trace-id,
no extension stored, nothing written on delivery. OpenTelemetry would make
it a non-recording span whose context still propagates with the ``sampled``
flag unset, and the Recommendation's processing model has a vendor create a
new trace-id for a request without one; Headwater does not, deliberately:
that context would record nothing anywhere (3.2.2.5.1: unset, "the caller
did not record trace data out-of-band"), and carrying it cost every event,
sampled or not, a sixth of its whole path (an id drawn, the extension
stored, read back, checked per Trigger and written out twice), which is
what tracing at 1% cost over tracing off. What is given up: a downstream
``ParentBased`` sampler does not see Headwater's "no" (it decides for
itself, as for any request without a context), and log lines about such an
event carry no trace-id (the event id identifies it).

**Delivery** (:class:`DeliveryTrace`, one per Trigger or Subscription and
event): under the event's context, a span named after the Trigger records
the filter's decision and, for a match, the delivery: a child span per
attempt (status code or error), each failed attempt also as an event on the
Trigger's span, then the reply or the dead-lettering as children. Knative's
data plane lets a sender update the context per attempt ("the traceparent
and tracestate distributed tracing attributes ... MAY be modified in this way
for each delivery attempt of the same event"), so the event goes out with the
attempt span's context in its extension, which the sinks also write as their
protocol's field (HTTP ``traceparent`` header, MQTT 5 User Property), and a
downstream Knative service or device continues the same trace under it. An
event that was not sampled goes out as it is stored: with its incoming
context unchanged (sampled flag 0: the downstream knows it is not recorded),
or with none. A Trigger takes no head decision of its own: an event without
a context is one its head did not sample (or one stored before tracing was
on), and a second chance at each Trigger would record Trigger spans of traces
whose ingest was not.

**Dead letters are always recorded** (``TracingConfig.dead_letters``, on by
default), whatever the head decided. For an event sampled at the head
nothing changes (its spans are recorded anyway). For one that was not, no
span of it was recorded while it travelled: the head decision is taken at
ingest and its ingest, append and attempt spans are gone. When a Trigger gives
it up, Headwater records, in the event's own trace (as a child of the context
stored with the event; a new trace with the Trigger's span as its root when
the event has none):

* the Trigger's span, from the moment the dispatcher handed it the event to
  the end of the dead-lettering, with every failed attempt as a span event
  (its time, number, HTTP status or error: what was kept while the event was
  delivered, at no cost unless an attempt failed), and
* the dead-letter span under it, with the attempts at the dead letter sink
  as its children (these happen after the decision, so they are recorded
  fully).

The ingest and append spans and the spans of the failed attempts are not
recorded (their time has passed), and the event had gone out with its
unsampled context, or none: the subscriber's side of those attempts is in
the trace only if the subscriber records unsampled requests of a context
that came with the event.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar, Token
from typing import Final, NamedTuple, Protocol

from headwater.cloudevents import NO_DATA, CloudEvent
from headwater.tracing.context import (
    SAMPLED,
    TRACEPARENT,
    TRACESTATE,
    TraceContext,
    extract,
    is_canonical,
    parse_traceparent,
    parse_tracestate,
)
from headwater.tracing.spans import AttributeValue, Kind, Span, Tracer

__all__ = [
    "DeliveryTrace",
    "Hop",
    "Ingest",
    "Publish",
    "Published",
    "context_of",
    "decided",
    "event_context",
    "hop",
    "hop_batch",
    "ingest",
    "ingest_mqtt",
    "log_fields",
    "trace_fields",
    "trace_id",
    "untraced",
    "with_context",
    "without_context",
]


def event_context(event: CloudEvent) -> TraceContext | None:
    """The valid context in the event's distributed tracing extension, or None."""
    context = parse_traceparent(event.get(TRACEPARENT))
    if context is None:
        return None
    state = event.get(TRACESTATE)
    if state is None:
        return context
    combined = parse_tracestate((state,)) if type(state) is str else None
    if not combined:
        return TraceContext(context.trace_id, context.span_id, context.flags)
    return TraceContext(context.trace_id, context.span_id, context.flags, combined)


def trace_id(event: CloudEvent) -> str | None:
    """The trace the event belongs to: its extension's trace-id (None: none, or invalid)."""
    context = event_context(event) if TRACEPARENT in event else None
    return context.trace_id if context is not None else None


def context_of(pairs: Sequence[tuple[str, str]]) -> TraceContext | None:
    """The context in MQTT 5 User Properties or HTTP header pairs (names compared
    case-insensitively: "Vendors MUST expect the header name in any case")."""
    parents: list[str] = []
    states: list[str] = []
    for name, value in pairs:
        if len(name) == 11 and name.lower() == TRACEPARENT:
            parents.append(value)
        elif len(name) == 10 and name.lower() == TRACESTATE:
            states.append(value)
    if not parents:
        return None
    return extract(parents, states)


def trace_fields(event: CloudEvent) -> list[tuple[str, str]]:
    """The ``traceparent`` (and ``tracestate``) a hop carrying ``event`` writes in its
    protocol's own fields: the event's context (distributed-tracing.md: "Given a
    single hop event transmission ..., the Distributed Tracing Extension, if used,
    MUST carry the same trace information contained in protocol specific tracing
    headers"). None for an event without a valid one."""
    value = event.get(TRACEPARENT)
    if value is None:
        return []
    if type(value) is str and is_canonical(value) and TRACESTATE not in event:
        return [(TRACEPARENT, value)]  # the common case: as stored, no need to rewrite it
    context = event_context(event)
    return context.fields() if context is not None else []


def with_context(event: CloudEvent, context: TraceContext) -> CloudEvent:
    """The event with ``context`` in its distributed tracing extension (the
    ``tracestate`` removed when the context has none)."""
    if not context.tracestate and TRACESTATE not in event:
        # Both values are valid CloudEvents Strings (printable ASCII) by construction.
        return event._stamped(TRACEPARENT, context.traceparent)
    attributes = dict(event.attributes)
    attributes[TRACEPARENT] = context.traceparent
    if context.tracestate:
        attributes[TRACESTATE] = context.tracestate
    else:
        attributes.pop(TRACESTATE, None)
    # Both values are valid CloudEvents Strings (printable ASCII) by construction.
    return CloudEvent._trusted(attributes, event.data if event.has_data else NO_DATA)


def without_context(event: CloudEvent) -> CloudEvent:
    """The event without a distributed tracing extension."""
    if TRACEPARENT not in event and TRACESTATE not in event:
        return event
    attributes = {
        name: value
        for name, value in event.attributes.items()
        if name not in (TRACEPARENT, TRACESTATE)
    }
    return CloudEvent._trusted(attributes, event.data if event.has_data else NO_DATA)


# -- ingest ---------------------------------------------------------------------------


class Ingest:
    """The ingest spans of one batch (MQTT publishes of one read, or one HTTP request).

    Made by :func:`ingest` just before the durable append; :meth:`end` after it.
    """

    __slots__ = ("append_start", "spans", "stream")

    def __init__(self, spans: list[tuple[int, Span]], stream: str) -> None:
        self.spans = spans
        self.stream = stream
        self.append_start = time.time_ns()

    def end(self, failure: object = None, failures: Sequence[object] | None = None) -> None:
        """The append ended; ``failure`` is what went wrong for all (None: nothing),
        ``failures[i]`` what went wrong for event ``i``, if anything."""
        now = time.time_ns()
        for index, span in self.spans:
            append = span.child(
                f"append {self.stream}" if self.stream else "append",
                start=self.append_start,
                attributes={"headwater.stream": self.stream} if self.stream else None,
            )
            if failures is not None:
                failure = failures[index]
            if failure is not None:
                append.fail(str(failure))
                span.fail(f"not stored: {failure}")
            append.end(now)
            span.end(now)


def ingest(
    tracer: Tracer,
    events: Sequence[CloudEvent],
    incoming: Sequence[TraceContext | None],
    *,
    name: str,
    kind: Kind,
    start: int,
    attributes: dict[str, AttributeValue],
    stream: str = "",
) -> tuple[list[CloudEvent], Ingest | None]:
    """The events as they are to be stored, and their ingest spans (None: none sampled).

    ``incoming[i]`` is the context that came with event ``i`` over its protocol
    (None: none, or not valid); ``start`` when the message arrived (ns).
    """
    out: list[CloudEvent] = []
    spans: list[tuple[int, Span]] = []
    new_root = tracer.new_root
    for index, event in enumerate(events):
        hop = incoming[index]
        if hop is None and TRACEPARENT not in event and TRACESTATE not in event:
            # The common case (a device that sends no context): a new trace if the
            # head samples it, else nothing at all (see the module docstring).
            value = new_root()
            if value is None:
                out.append(event)
                continue
            event = event._stamped(TRACEPARENT, value)  # a valid String by construction
            out.append(event)
            context = TraceContext(value[3:35], value[36:52], SAMPLED)
            parent = None
        else:
            own = event_context(event) if TRACEPARENT in event else None
            parent = hop if hop is not None else own
            if parent is None:
                # An invalid context in the event: "the implementation should
                # restart the trace" (W3C), so it is dropped, and the event is
                # one that came without any.
                event = without_context(event)
                value = new_root()
                if value is None:
                    out.append(event)
                    continue
                context = TraceContext(value[3:35], value[36:52], SAMPLED)
            elif not tracer.sampled(parent):
                # Not recorded: the incoming context is propagated as it came
                # (W3C: "A vendor receiving a traceparent request header MUST send
                # it to outgoing requests"), with no span id of Headwater's in it.
                out.append(event if own is not None else with_context(event, parent))
                continue
            else:
                context = tracer.decide(parent)
            if own is None:
                event = with_context(event, context)  # the event as it is stored
            out.append(event)
        span_attributes = dict(attributes)
        span_attributes["cloudevents.event_id"] = event.id
        span_attributes["cloudevents.event_type"] = event.type
        spans.append(
            (
                index,
                tracer.span(
                    name,
                    context,
                    parent,
                    kind=kind,
                    remote=parent is not None,
                    start=start,
                    attributes=span_attributes,
                ),
            )
        )
    return out, (Ingest(spans, stream) if spans else None)


class Published(Protocol):
    """What :func:`ingest_mqtt` reads of an MQTT publish (the broker's ``Message``)."""

    @property
    def topic(self) -> str: ...
    @property
    def qos(self) -> int: ...
    @property
    def user_properties(self) -> tuple[tuple[str, str], ...]: ...


class Publish(NamedTuple):
    """A :class:`Published` made of its three fields (a client library's message)."""

    topic: str
    qos: int
    user_properties: tuple[tuple[str, str], ...]


def ingest_mqtt(
    tracer: Tracer,
    events: Sequence[CloudEvent],
    messages: Sequence[Published],
    *,
    client_id: str,
    received: float,
) -> tuple[list[CloudEvent], Ingest | None]:
    """:func:`ingest` for the events of MQTT publishes (``received``: epoch seconds),
    their incoming context from the MQTT 5 ``traceparent`` User Property."""
    incoming = [
        context_of(message.user_properties) if message.user_properties else None
        for message in messages
    ]
    out, spans = ingest(
        tracer,
        events,
        incoming,
        name="mqtt publish",
        kind=Kind.CONSUMER,
        start=int(received * 1e9),
        attributes={"messaging.system": "mqtt", "messaging.client.id": client_id},
    )
    if spans is not None:
        for index, span in spans.spans:
            span.attributes["messaging.destination.name"] = messages[index].topic
    return out, spans


_DECIDED: ContextVar[bool] = ContextVar("headwater_head_decided", default=False)


class decided:
    """Inside the block, what the task appends went through an ingest (MQTT, HTTP)
    that took the head decision already: :func:`untraced` takes no second one
    for the events it left without a context (they were not sampled). Set around
    the append by the ingress paths; inherited by the tasks they start."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token: Token[bool] = _DECIDED.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _DECIDED.reset(self._token)


def untraced(
    tracer: Tracer, events: Sequence[CloudEvent], stream: str
) -> tuple[Sequence[CloudEvent], Ingest | None]:
    """``events`` with a new trace for those that have no ``traceparent`` at all
    (an in-process source's), and the spans of those sampled; ``events`` as they
    are when they came through an ingest (:class:`decided`)."""
    if _DECIDED.get():
        return events, None
    missing = [index for index, event in enumerate(events) if TRACEPARENT not in event]
    if not missing:
        return events, None
    started, ingest_of = ingest(
        tracer,
        [events[index] for index in missing],
        [None] * len(missing),
        name=f"accept {stream}",
        kind=Kind.INTERNAL,
        start=time.time_ns(),
        attributes={"headwater.stream": stream},
        stream=stream,
    )
    out = list(events)
    for index, event in zip(missing, started, strict=True):
        out[index] = event
    return out, ingest_of


# -- hops of stored events (the uplink) ------------------------------------------------

# The last character of a traceparent whose flags have the sampled bit clear.
_UNSAMPLED: Final = frozenset("02468ace")


def stored_unsampled(tracer: Tracer, event: CloudEvent) -> bool:
    """Whether the event's stored context is valid and says "not sampled" (and the
    parent decides): then nothing about it is recorded and it goes out as it is.
    The check of an event most events get when tracing is on at a low ratio."""
    value = event.get(TRACEPARENT)
    return (
        type(value) is str
        and value[-1:] in _UNSAMPLED
        and tracer.config.parent_based
        and is_canonical(value)
    )


class Hop:
    """The spans of one request carrying stored events to another tier (an uplink's
    batch): a CLIENT span in the trace of each sampled event, which goes out
    carrying that span's context, so that the receiving tier's ingest continues
    under it. Unsampled events go out as they are."""

    __slots__ = ("spans",)

    def __init__(self, spans: list[Span]) -> None:
        self.spans = spans

    def end(self, status: int | None, error: str | None) -> None:
        for span in self.spans:
            if status is not None:
                span.attributes["http.response.status_code"] = status
            if error is not None:
                span.fail(error)
            span.end()


def hop(
    tracer: Tracer, events: Sequence[CloudEvent], name: str, attributes: dict[str, AttributeValue]
) -> tuple[list[CloudEvent] | None, Hop | None]:
    """The events as the request sends them (None: all unchanged) and its spans."""
    out: list[CloudEvent] | None = None
    spans: list[Span] = []
    for index, event in enumerate(events):
        if stored_unsampled(tracer, event):
            continue  # the common case at a low ratio: nothing to do
        parent = event_context(event)
        if parent is None or not tracer.sampled(parent):
            continue
        span = tracer.span(
            name,
            tracer.decide(parent),
            parent,
            kind=Kind.CLIENT,
            remote=True,
            attributes={**attributes, "cloudevents.event_id": event.id},
        )
        spans.append(span)
        if out is None:
            out = list(events)
        out[index] = with_context(event, span.context)
    return out, (Hop(spans) if spans else None)


class Encoder(Protocol):
    """What :func:`hop_batch` needs of the receiver: its URL, and the JSON form of an event."""

    @property
    def url(self) -> str: ...
    def encode(self, event: CloudEvent) -> bytes | None: ...


def hop_batch(
    tracer: Tracer,
    events: list[CloudEvent],
    encoded: list[bytes | None],
    remote: Encoder,
    name: str,
) -> tuple[list[CloudEvent], list[bytes | None], Hop | None]:
    """:func:`hop` for a request of pre-encoded events: a sampled event, sent under
    the request's span, is encoded again (the others keep their JSON form)."""
    attributes: dict[str, AttributeValue] = {
        "url.full": remote.url,
        "headwater.batch.events": len(events),
    }
    sent, traced = hop(tracer, events, name, attributes)
    if sent is None:
        return events, encoded, traced
    again = [
        remote.encode(new) if new is not old else data
        for new, old, data in zip(sent, events, encoded, strict=True)
    ]
    return sent, again, traced


# -- delivery -------------------------------------------------------------------------


class DeliveryTrace:
    """The tracing of one Trigger's (Subscription's) delivery of one event.

    ``span`` is the Trigger's span when the event is sampled, else None;
    failed attempts of an unsampled event are kept (time, attributes) in case
    it ends as a dead letter (see the module docstring). ``attempts`` counts
    the attempts made; ``context`` is the context the event goes out with (the
    Trigger span's when recorded; None: the event has none). An event without
    a context, or whose stored context is valid and not sampled (99 in 100 at
    1%), has no trace (:meth:`start_for`) unless an attempt fails.
    """

    __slots__ = (
        "attempts",
        "context",
        "destination",
        "event",
        "failures",
        "name",
        "span",
        "start",
        "tracer",
    )

    @classmethod
    def start_for(
        cls, tracer: Tracer, event: CloudEvent, name: str, destination: str
    ) -> DeliveryTrace | None:
        """The trace of a delivery of ``event``; None when there is nothing to do
        unless it fails: it has no context (its head did not sample it) or a
        valid one that is not sampled, so it goes out as it is (a failed attempt
        then starts one, see ``Deliverer``)."""
        if TRACEPARENT not in event or stored_unsampled(tracer, event):
            return None
        parent = event_context(event)
        if parent is None or not tracer.sampled(parent):
            return None
        return cls(tracer, event, name, destination)

    def __init__(
        self,
        tracer: Tracer,
        event: CloudEvent,
        name: str,
        destination: str,
        start: int | None = None,
    ) -> None:
        self.tracer = tracer
        self.event = event
        self.name = name
        self.destination = destination
        self.start = time.time_ns() if start is None else start
        self.attempts = 0
        self.failures: list[tuple[int, dict[str, AttributeValue]]] | None = None
        self.span: Span | None = None
        parent = event_context(event)
        # An event without a context was not sampled at its head (or came before
        # tracing was on): nothing is recorded unless it ends as a dead letter,
        # and no Trigger takes a head decision of its own (a second chance would
        # record Trigger spans of traces whose ingest was not).
        self.context: TraceContext | None = parent
        if parent is not None and tracer.sampled(parent):
            self.span = self._span(parent, tracer.decide(parent))

    def _span(self, parent: TraceContext | None, context: TraceContext) -> Span:
        event = self.event
        span = self.tracer.span(
            self.name,
            context,
            parent,
            remote=parent is not None,
            start=self.start,
            attributes={
                "headwater.subscriber": self.destination,
                "cloudevents.event_id": event.id,
                "cloudevents.event_type": event.type,
            },
        )
        self.context = span.context
        return span

    def filtered(self, matched: bool) -> None:
        """The filter's decision; a rejected event's trace ends here."""
        span = self.span
        if span is not None:
            span.attributes["headwater.filter.matched"] = matched
            if not matched:
                span.end()

    def attempt(self, event: CloudEvent) -> tuple[CloudEvent, Span | None]:
        """The event as the next attempt sends it, and the attempt's span."""
        self.attempts += 1
        span = self.span
        if span is None:
            return event, None
        attempt = span.child(
            "deliver", kind=Kind.CLIENT, attributes={"headwater.attempt": self.attempts}
        )
        return with_context(event, attempt.context), attempt

    @staticmethod
    def attempt_ok(attempt: Span | None) -> None:
        if attempt is not None:
            attempt.end()

    def attempt_failed(
        self, attempt: Span | None, status: int | None, error: str, retry_in: float | None
    ) -> None:
        """The last attempt failed; ``retry_in`` seconds until the next (None: no more)."""
        attributes: dict[str, AttributeValue] = {"headwater.attempt": self.attempts}
        if status is not None:
            attributes["http.response.status_code"] = status
        attributes["error.message"] = error
        if retry_in is not None:
            attributes["headwater.retry_in_s"] = retry_in
        if attempt is not None:
            if status is not None:
                attempt.attributes["http.response.status_code"] = status
            attempt.fail(error)
            attempt.end()
        span = self.span
        if span is not None:
            span.event("attempt failed", attributes)
        elif self.tracer.config.dead_letters:
            if self.failures is None:
                self.failures = []
            self.failures.append((time.time_ns(), attributes))

    def reply(self, attempt: Span | None, reply: CloudEvent) -> tuple[CloudEvent, Span | None]:
        """The reply as it is to be stored (with a context when it has none) and its span."""
        own = TRACEPARENT in reply and event_context(reply) is not None
        if attempt is None:
            # Not recorded: the reply continues the event's context, or has none
            # when the event had none (the same head decision).
            context = self.context
            if own or context is None:
                return reply, None
            return with_context(reply, context), None
        span = attempt.child(
            "reply",
            attributes={"cloudevents.event_id": reply.id, "cloudevents.event_type": reply.type},
        )
        return (reply if own else with_context(reply, span.context)), span

    def dead_letter(self, event: CloudEvent) -> Span | None:
        """The dead-letter span (recorded even when the head said no, if so configured)."""
        span = self.span
        if span is None:
            if not self.tracer.config.dead_letters:
                return None
            parent = event_context(event)
            span = self.span = self._span(parent, self.tracer.decide(parent))
            span.attributes["headwater.filter.matched"] = True
            span.attributes["headwater.sampled_at_head"] = False
            for at, attributes in self.failures or ():
                span.event("attempt failed", attributes, at)
        return span.child("dead-letter")

    def end(self, outcome: str, error: str | None = None) -> None:
        span = self.span
        if span is not None:
            span.attributes["headwater.outcome"] = outcome
            span.attributes["headwater.attempts"] = self.attempts
            if error is not None:
                span.fail(error)
            span.end()

    def log_fields(self) -> dict[str, object]:
        """The ids a log line about this delivery carries (none without a context)."""
        context = self.context
        if context is None:
            return {}
        return {"trace_id": context.trace_id, "span_id": context.span_id}


def log_fields(event: CloudEvent, trace: DeliveryTrace | None = None) -> dict[str, object]:
    """What a log line about ``event`` carries: its id, source and type, and its trace
    (structured logs, :data:`headwater.logs.FIELDS`)."""
    fields: dict[str, object] = {
        "event_id": event.id,
        "event_source": event.source,
        "event_type": event.type,
    }
    if trace is not None:
        fields.update(trace.log_fields())
    elif TRACEPARENT in event:
        context = event_context(event)
        if context is not None:
            fields["trace_id"] = context.trace_id
            fields["span_id"] = context.span_id
    return fields
