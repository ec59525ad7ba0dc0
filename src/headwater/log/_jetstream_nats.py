"""What the JetStream log and its readers share: NATS names, errors, pull requests.

How this works: a Headwater name becomes a NATS token with :func:`nats_token`
(unsafe characters replaced, a short hash of the real name added, so that
two names never meet); a NATS error becomes Headwater's own with
:func:`translate`; a consumer's JetStream description keeps its Headwater
name and where it started (:func:`describe`), from which :func:`consumer_position`
reads its low-water mark.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any, Final

import nats.errors
import nats.js.errors
import orjson

from headwater.log.base import LogError, LogUnavailable, StreamNotFound

__all__ = [
    "FETCH_CHUNK",
    "MIN_FETCH_WAIT",
    "NATS_ERRORS",
    "PULL_SLACK",
    "PULL_SUBJECT",
    "consumer_position",
    "describe",
    "described",
    "nats_token",
    "stream_sequence",
    "translate",
]

FETCH_CHUNK: Final = 5.0
"""Longest single waiting pull request; ``next_batch(timeout=None)`` repeats them."""

MIN_FETCH_WAIT: Final = 0.05
"""Shortest waiting pull request (shorter ones would expire in transit)."""

PULL_SLACK: Final = 1.0
"""Seconds a reader waits beyond a pull request's own expiry for the server's answer."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# JetStream's pull request (jetstream/consumers.md): a JSON body with "batch"
# and either "no_wait" or "expires" (nanoseconds); the server answers on the
# reply subject with the messages, then a status if it ended short of the
# batch: 404 no messages, 408 request expired, 409 e.g. max ack pending.
PULL_SUBJECT: Final = "$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

ERR_STREAM_NOT_FOUND: Final = 10059

_ACK_V1_TOKENS: Final = 9
_ACK_V2_TOKENS: Final = 12

NATS_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError)


def nats_token(name: str) -> str:
    """``name`` as a NATS subject token / stream name, unique per name."""
    safe = _UNSAFE.sub("_", name)
    if safe != name:
        safe += "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return safe


def stream_sequence(reply: str) -> int:
    """The stream sequence of a message a JetStream consumer delivered, read from its
    ack subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
    seq>.<time>.<pending>``, or the form with a domain and an account hash after
    ``ACK`` (nats.go's ``jsAckPrefix`` parsing reads the same two). nats-py's
    ``Msg.metadata`` builds dataclasses and a datetime from every token: about ten
    times the cost, per delivered event. ValueError if ``reply`` is neither."""
    tokens = reply.split(".")
    count = len(tokens)
    if count >= _ACK_V2_TOKENS - 1 and tokens[1] == "ACK":
        return int(tokens[7])
    if count == _ACK_V1_TOKENS and tokens[1] == "ACK":
        return int(tokens[5])
    raise ValueError(f"not a JetStream ack subject: {reply[:120]!r}")


def translate(exc: BaseException, stream: str | None = None) -> LogError:
    """A NATS error as Headwater's own (most specific first)."""
    if isinstance(exc, LogError):
        return exc
    if stream is not None and (
        isinstance(exc, nats.js.errors.NotFoundError | nats.js.errors.NoStreamResponseError)
        or (isinstance(exc, nats.js.errors.APIError) and exc.err_code == ERR_STREAM_NOT_FOUND)
    ):
        return StreamNotFound(stream)
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return LogUnavailable("the NATS connection is closed")
    return LogUnavailable(f"NATS JetStream: {type(exc).__name__}: {exc}")


def describe(consumer: str, base: int) -> str:
    """A consumer's description: its Headwater name and where it started."""
    return orjson.dumps({"consumer": consumer, "base": base}).decode()


def described(info: Any) -> tuple[str, int]:
    """The Headwater name and start of a consumer, from its description."""
    try:
        described = orjson.loads(info.config.description or "")
        return str(described["consumer"]), int(described["base"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return info.name, 0


def consumer_position(info: Any) -> tuple[str, int]:
    """A consumer's name and low-water-mark position from its JetStream info.

    The ack floor is JetStream's low-water mark, except that it stays 0 until
    the first ack: before that, the position is where the consumer started
    (kept in its description) or, with nothing outstanding, all it was handed.
    """
    name, base = described(info)
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    if not info.num_ack_pending:
        return name, info.delivered.stream_seq if info.delivered else floor
    return name, floor if floor > 0 else base
