"""The HTTP destination: deliver CloudEvents to any HTTP receiver (data-plane.md).

How this works: each delivery is one POST in binary content mode
(``format: json`` selects structured mode) with ``Prefer: reply``, made by
the sink's :class:`~headwater.eventing.transport.DeliveryTransport` (the
runtime's, or an aiohttp session of the sink's own; why there are three:
:mod:`headwater.eventing.transport`). The response is turned into a reply
event, nothing, or a :class:`DeliveryError` carrying the status, whether it
is retryable, the body (for ``knativeerrordata``) and ``Retry-After``.
Timeouts, retries and dead letters are the business of
:mod:`headwater.eventing.delivery`, not of this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from multidict import CIMultiDict

from headwater.cloudevents import CloudEvent, InvalidEvent, from_http, is_cloudevent, to_http
from headwater.eventing._aiohttp import AiohttpTransport, new_session
from headwater.eventing.delivery import parse_retry_after, should_retry
from headwater.eventing.sink import DeliveryError
from headwater.eventing.transport import MAX_RESPONSE_BYTES, DeliveryTransport, TransportError

__all__ = ["HttpSink"]

Format = Literal["binary", "json"]


class HttpSink:
    """POSTs each event to ``url``; a 2xx with a CloudEvent in it (not 202) is a reply.

    ``format`` is Knative's DeliverySpec ``format``: ``binary`` (default) or
    ``json`` (structured). ``headers`` are added to every request.
    """

    def __init__(
        self,
        url: str,
        *,
        transport: DeliveryTransport | None = None,
        format: Format = "binary",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if format not in ("binary", "json"):
            raise ValueError(f"format must be 'binary' or 'json', not {format!r}")
        self.url = url
        self._mode: Literal["binary", "structured"] = (
            "binary" if format == "binary" else "structured"
        )
        self._transport = transport
        self._owns_transport = transport is None
        self._extra_headers = dict(headers or {})

    def __repr__(self) -> str:
        return f"HttpSink({self.url!r})"

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the transport if this sink made it (a shared one is its owner's)."""
        if self._owns_transport and self._transport is not None:
            await self._transport.close()
            self._transport = None

    async def deliver(self, event: CloudEvent) -> CloudEvent | None:
        transport = self._transport
        if transport is None:
            transport = self._transport = AiohttpTransport(new_session(), owned=True)
        headers, body = to_http(event, self._mode)
        # data-plane.md "Derived (Reply) Events": Brokers and Channels "MUST
        # indicate support for replies using the Prefer: reply header".
        headers["prefer"] = "reply"
        if self._extra_headers:
            headers.update(self._extra_headers)
        try:
            status, reason, pairs, payload = await transport.post(
                self.url, headers, body, MAX_RESPONSE_BYTES
            )
        except OSError as exc:  # TransportError among them
            # No usable response: the event may not have arrived, so the
            # attempt is retryable.
            why = str(exc) if isinstance(exc, TransportError) else f"{type(exc).__name__}: {exc}"
            raise DeliveryError(None, True, reason=why) from exc
        return _outcome(status, reason, CIMultiDict(pairs), payload)


def _outcome(
    status: int, reason: str, headers: CIMultiDict[str], payload: bytes
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
