"""What an uplink does with an answer, how long it waits, and which events keep order.

How this works: pure data and functions, as Knative's ``retries.go`` keeps its
retry policy (STYLE.md "Eventing"); the uplink and the downlink only wait.

- :func:`verdict` sorts an HTTP answer into accepted, retry (forever) and
  refused. A link to another tier is expected to fail for hours: refused,
  reset, DNS, timeouts, ``5xx`` and ``429`` are the weather, not a verdict on
  the events, so they are retried until they succeed. So are ``401``/``403``
  (credentials get fixed), ``404`` (the cloud Broker may not exist *yet*) and
  anything else a receiver may answer while it is misconfigured. Only ``400``
  and ``413`` refuse *the content*: the event (or, for a batch, one of its
  events) will never be accepted as it is.
- :func:`new_backoff` is Headwater's capped exponential backoff
  (:mod:`headwater.backoff`) with full jitter, so that edges cut off together
  do not come back in lockstep; :func:`next_wait` stretches a wait to a
  receiver's ``Retry-After``.
- :func:`partition_key` is what keeps order: Knative's ``partitionkey``
  extension (partitioning.md), or the event's ``source`` and ``subject`` (a
  device) when it has none.
- :func:`capabilities` reads a receiver's answer to ``OPTIONS``: whether it
  takes the batched content mode (``Accept-Post``, the solicitation the HTTP
  binding asks for before batching) and gzip request bodies
  (``Accept-Encoding`` in a response, RFC 7694 section 3).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final

from headwater.backoff import Backoff
from headwater.cloudevents import BATCH_CONTENT_TYPE, CloudEvent

__all__ = [
    "Capabilities",
    "Verdict",
    "capabilities",
    "new_backoff",
    "next_wait",
    "partition_key",
    "verdict",
]

DEFAULT_BACKOFF_INITIAL: Final = 0.5
"""Seconds before the first retry: long enough not to hammer a receiver that is
restarting, short enough that a blip costs half a second."""

DEFAULT_BACKOFF_MAX: Final = 10.0
"""The longest wait between two attempts: a link that comes back after an outage
of hours is used again within this much (the catch-up starts no later). Kafka's
producer waits at most 1 s between reconnections; a tenth of that rate still
keeps a thousand edges to about a hundred attempts a second on a cloud that is
down, spread by the jitter."""

DEAD_PEER_TIMEOUT: Final = 10.0
"""Seconds after which a connection whose peer stopped acknowledging is closed
by the kernel (see :func:`headwater.eventing._http1._detect_dead_peer`): a
request caught by a cut fails within this, instead of waiting on TCP
retransmissions long after the link is back."""


class Verdict(enum.Enum):
    ACCEPTED = "accepted"
    RETRY = "retry"
    REFUSED = "refused"


def verdict(status: int | None) -> Verdict:
    """What an answer (None: no answer at all) means for the events sent."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.ACCEPTED
    if status in (400, 413):
        # data-plane.md: a 400 is "Unparsable event" and 413 "Request too
        # large": neither gets better by sending the same bytes again.
        return Verdict.REFUSED
    return Verdict.RETRY


def new_backoff(bounds: tuple[float, float] | None = None) -> Backoff:
    """A :class:`~headwater.backoff.Backoff` with full jitter, between ``bounds``
    (initial, maximum; the defaults above when None)."""
    initial, maximum = bounds or (DEFAULT_BACKOFF_INITIAL, DEFAULT_BACKOFF_MAX)
    return Backoff(initial, maximum, jitter=True)


def next_wait(backoff: Backoff, retry_after: float | None = None) -> float:
    """The wait before the next attempt; a receiver's ``Retry-After`` (capped at the
    backoff's maximum) lengthens it, never shortens it."""
    wait = backoff.next()
    if retry_after is not None and retry_after > 0:
        wait = max(wait, min(retry_after, backoff.maximum))
    return wait


def partition_key(event: CloudEvent) -> Hashable:
    """The key whose events keep their order: ``partitionkey``, else source and subject."""
    key: Hashable = event.get("partitionkey")
    if key is not None:
        return key
    return (event.source, event.subject)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a receiver said it accepts (see :func:`capabilities`)."""

    batch: bool = False
    gzip: bool = False


def capabilities(status: int, headers: Iterable[tuple[str, str]]) -> Capabilities:
    """A receiver's answer to ``OPTIONS``; an error answer means "plain POSTs only".

    data-plane.md "HTTP Verbs": "Senders which receive an error when probing
    with HTTP OPTIONS SHOULD proceed using the HTTP POST mechanism."
    """
    if not 200 <= status < 300:
        return Capabilities()
    batch = gzip = False
    for name, value in headers:
        lower = name.lower()
        if lower == "accept-post":
            types = {part.split(";")[0].strip().lower() for part in value.split(",")}
            batch = batch or BATCH_CONTENT_TYPE in types
        elif lower == "accept-encoding":
            codings = _codings(value)
            gzip = gzip or codings.get("gzip", codings.get("*", 0.0)) > 0
    return Capabilities(batch=batch, gzip=gzip)


def _codings(value: str) -> dict[str, float]:
    """``Accept-Encoding`` as coding -> quality (RFC 9110 12.5.3; ``q=0`` means "not")."""
    out: dict[str, float] = {}
    for part in value.split(","):
        coding, _, params = part.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = 1.0
        name, _, raw = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(raw)
            except ValueError:
                quality = 0.0
        out[coding] = quality
    return out
