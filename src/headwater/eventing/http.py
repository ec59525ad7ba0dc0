"""The HTTP destination: deliver CloudEvents to any HTTP receiver (data-plane.md).

How this works: each delivery is one POST in binary content mode
(``format: json`` selects structured mode) with ``Prefer: reply``; the
response is turned into a reply event, nothing, or a :class:`DeliveryError`
carrying the status, whether it is retryable, the body (for
``knativeerrordata``) and ``Retry-After``. The POSTs are made by one of:

- :class:`~headwater.eventing._http1.Http1Client`, pooled keep-alive
  connections with httptools' parser, at a fifth of aiohttp's CPU per
  request: ``headwater up --no-http-worker``;
- an :class:`~headwater.eventing.http_worker.HttpWorker`, which runs such a
  client in a process of its own: ``headwater up``;
- an aiohttp ``ClientSession`` (:func:`post`), shared by the sinks of a
  process or owned by a sink created without a client: the library's default.

All three follow the same rules (``tests/integration/eventing/test_http_sink.py``
runs over each). Timeouts, retries and dead letters are the business of
:mod:`headwater.eventing.delivery`, not of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from headwater.cloudevents import CloudEvent, InvalidEvent, from_http, is_cloudevent, to_http
from headwater.eventing._http1 import (
    DEFAULT_POOL_SIZE,
    KEEPALIVE_TIMEOUT,
    MAX_RESPONSE_BYTES,
    Http1Client,
    HttpError,
)
from headwater.eventing.delivery import parse_retry_after, should_retry
from headwater.eventing.http_worker import HttpWorker, WorkerGone
from headwater.eventing.sink import DeliveryError
from headwater.tracing.flows import trace_fields

__all__ = ["DEFAULT_POOL_SIZE", "KEEPALIVE_TIMEOUT", "HttpSink", "new_session"]

Format = Literal["binary", "json"]


def new_session(pool_size: int = DEFAULT_POOL_SIZE) -> aiohttp.ClientSession:
    """A ClientSession tuned for delivery: pooled keep-alive connections, no cookies."""
    connector = aiohttp.TCPConnector(
        limit=pool_size,
        limit_per_host=0,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        cookie_jar=aiohttp.DummyCookieJar(),
        # Timeouts are applied per attempt by the Deliverer (DeliverySpec.timeout).
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
    )


class HttpSink:
    """POSTs each event to ``url``; a 2xx with a CloudEvent in it (not 202) is a reply.

    ``format`` is Knative's DeliverySpec ``format``: ``binary`` (default) or
    ``json`` (structured). ``headers`` are added to every request.
    """

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | HttpWorker | Http1Client | None = None,
        format: Format = "binary",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if format not in ("binary", "json"):
            raise ValueError(f"format must be 'binary' or 'json', not {format!r}")
        self.url = url
        self._mode: Literal["binary", "structured"] = (
            "binary" if format == "binary" else "structured"
        )
        self._session = session
        self._owns_session = session is None
        self._extra_headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"HttpSink({self.url!r})"

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session if this sink created it (a shared one is its owner's)."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        session = self._session
        if session is None:
            session = self._session = new_session()
        headers, body = to_http(event, self._mode)
        # data-plane.md "Derived (Reply) Events": Brokers and Channels "MUST
        # indicate support for replies using the Prefer: reply header".
        headers["prefer"] = "reply"
        # W3C Trace Context: the event's context (the delivery attempt's when
        # Headwater traced it) continues in the receiver's trace.
        headers.update(trace_fields(event))
        if self._extra_headers:
            headers.update(self._extra_headers)
        try:
            if isinstance(session, aiohttp.ClientSession):
                return _outcome(*await post(session, self.url, headers, body))
            status, reason, pairs, payload = await session.post(
                self.url, headers, body, MAX_RESPONSE_BYTES
            )
            return _outcome(status, reason, CIMultiDict(pairs), payload)
        except (WorkerGone, HttpError) as exc:
            raise DeliveryError(None, True, reason=str(exc)) from exc
        except (aiohttp.ClientError, OSError) as exc:
            # No usable response (refused, reset, DNS, malformed HTTP): the
            # event may not have arrived, so the attempt is retryable.
            raise DeliveryError(None, True, reason=f"{type(exc).__name__}: {exc}") from exc


async def post(
    session: aiohttp.ClientSession, url: str, headers: Mapping[str, str], body: bytes
) -> tuple[int, str, CIMultiDictProxy[str], bytes]:
    """One delivery's POST, in process: (status, reason, headers, body).

    Redirects are not followed and no Content-Type is added; the response body
    is read up to a little over :data:`MAX_RESPONSE_BYTES`. aiohttp's errors
    propagate. :class:`~headwater.eventing._http1.Http1Client` keeps to the same
    rules (``tests/integration/eventing/test_http_sink.py`` runs over each client).
    """
    async with session.post(
        url,
        data=body,
        headers=headers,
        # An event without datacontenttype must not gain one in transit.
        skip_auto_headers=("Content-Type",),
        allow_redirects=False,
    ) as response:
        payload = await _read_bounded(response.content, MAX_RESPONSE_BYTES)
        return response.status, response.reason or "", response.headers, payload


def _outcome(
    status: int, reason: str, headers: CIMultiDictProxy[str] | CIMultiDict[str], payload: bytes
) -> CloudEvent | None:
    """The reply event (or None) for a 2xx response; raises DeliveryError for others."""
    if 200 <= status < 300:
        if status == 202 or (not payload and "ce-specversion" not in headers):
            # "Responses with a 202 response code MUST NOT be processed
            # as reply events".
            return None
        return _reply(status, headers, payload)
    raise DeliveryError(
        status,
        should_retry(status),
        payload,
        retry_after=parse_retry_after(headers.get("Retry-After")),
        reason=reason,
    )


async def _read_bounded(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The body, stopping once more than ``limit`` bytes arrived (the caller checks the size)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.readany()
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _reply(status: int, headers: Mapping[str, str], payload: bytes) -> CloudEvent | None:
    if not is_cloudevent(headers):
        return None
    if len(payload) > MAX_RESPONSE_BYTES:
        raise DeliveryError(status, False, payload[:1024], reason="reply event too large")
    try:
        reply = from_http(headers.items(), payload)
    except InvalidEvent as exc:
        # The subscriber said it handled the event but its reply cannot be
        # used; not retryable (it would answer the same), so it is dead-lettered.
        raise DeliveryError(status, False, payload, reason=f"invalid reply event: {exc}") from exc
    if isinstance(reply, list):
        raise DeliveryError(status, False, payload, reason="a reply must be one event, not a batch")
    return reply
