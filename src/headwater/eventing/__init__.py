"""Eventing: Knative's data plane on the event log.

A :class:`Broker` stores what producers send (in-process ``accept`` or the
HTTP :class:`Ingress`) and runs one dispatcher per :class:`Trigger`; a
:class:`Channel` does the same for :class:`Subscription` s without filters.
Every destination is a :class:`Sink` (:class:`HttpSink` for HTTP receivers,
:class:`RecordingSink` in-process), delivered to under a
:class:`DeliverySpec`: timeout, retry with backoff, dead letter sink.
"""

from headwater.eventing._aiohttp import AiohttpTransport, new_session
from headwater.eventing._fanout import Saturated
from headwater.eventing.broker import DEFAULT_TTL, TTL_EXTENSION, Broker
from headwater.eventing.channel import Channel
from headwater.eventing.delivery import (
    Deliverer,
    DeliverySpec,
    DeliveryStats,
    LatencyHistogram,
    Outcome,
    backoff,
    dead_letter_event,
    effective_delivery,
    parse_retry_after,
    should_retry,
)
from headwater.eventing.dispatcher import DEFAULT_MAX_INFLIGHT, Dispatcher, Ordering
from headwater.eventing.filters import (
    MATCH_ALL,
    EventFilter,
    FilterError,
    compile_filters,
    compile_trigger_filter,
)
from headwater.eventing.http import HttpSink
from headwater.eventing.ingress import Ingress, IngressServer
from headwater.eventing.sink import DeliveryError, RecordingSink, Sink
from headwater.eventing.subscription import Subscription
from headwater.eventing.transport import DeliveryTransport, TransportError
from headwater.eventing.trigger import Trigger

__all__ = [
    "DEFAULT_MAX_INFLIGHT",
    "DEFAULT_TTL",
    "MATCH_ALL",
    "TTL_EXTENSION",
    "AiohttpTransport",
    "Broker",
    "Channel",
    "Deliverer",
    "DeliveryError",
    "DeliverySpec",
    "DeliveryStats",
    "DeliveryTransport",
    "Dispatcher",
    "EventFilter",
    "FilterError",
    "HttpSink",
    "Ingress",
    "IngressServer",
    "LatencyHistogram",
    "Ordering",
    "Outcome",
    "RecordingSink",
    "Saturated",
    "Sink",
    "Subscription",
    "TransportError",
    "Trigger",
    "backoff",
    "compile_filters",
    "compile_trigger_filter",
    "dead_letter_event",
    "effective_delivery",
    "new_session",
    "parse_retry_after",
    "should_retry",
]
